"""Trackers (`report_to`): each receives what metrics.jsonl and completions.jsonl hold, and none is imported unnamed."""

import dataclasses
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from salsa.config import RLConfig
from salsa.config_loading import load_stage_config, validate_values
from salsa.errors import ConfigError
from salsa.io import read_jsonl
from salsa.rl.ppo import train_rl
from salsa.tasks.reviews import prompts as review_prompts


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in review_prompts("train")[:4]))
    return str(path)


def _letter_reward(prompts, responses):
    return torch.tensor([float(r.count("e")) for r in responses])


def _config(tmp_path, model_dir, prompts_file, **overrides) -> RLConfig:
    """Two tiny RLOO steps that log the completions at both, with the gold judge of the reviews task."""
    base = RLConfig(
        algorithm="rloo", init=str(model_dir), reference="sft", prompts=prompts_file, task="reviews",
        output_dir=str(tmp_path / "rl"), steps=2, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=4,
        reward_normalisation="none", save_steps=0, log_completions_steps=1,
    )  # fmt: skip
    return dataclasses.replace(base, **overrides)


def _expected(out: Path) -> tuple[dict[int, dict], dict[int, list[dict]]]:
    """The scalars of metrics.jsonl as trackers receive them ({step: {rl/key: value}}) and the completions by step."""
    scalars = {
        r["step"]: {f"rl/{k}": v for k, v in r.items() if k != "step" and type(v) in (int, float)}
        for r in read_jsonl(out / "metrics.jsonl")
    }
    tables: dict[int, list[dict]] = {}
    for row in read_jsonl(out / "completions.jsonl"):
        tables.setdefault(row.pop("step"), []).append(row)
    return scalars, tables


def _wandb_records(path: Path) -> list[bytes]:
    """The records of a wandb run file (a LevelDB log: 32 KiB blocks of chunks, each with a 7-byte header)."""
    data, block, position, records, partial = path.read_bytes(), 32768, 7, [], b""  # 7: the file's own header
    while position + 7 <= len(data):
        room = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position : position + 7]) if room >= 7 else (0, 0, 0)
        if kind == 0:  # the zero padding at the end of a block
            position += room
            continue
        partial += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            records.append(partial)
            partial = b""
    return records


def _wandb_logged(tmp_path: Path) -> tuple[dict[int, dict], dict[int, list[dict]]]:
    from wandb.proto import wandb_internal_pb2

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    scalars, tables = {}, {}
    for data in _wandb_records(next(run_dir.glob("run-*.wandb"))):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") != "history":
            continue
        items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        step = record.history.step.num
        scalars[step] = {k: v for k, v in items.items() if k.startswith("rl/") and not k.startswith("rl/completions")}
        if "rl/completions/path" in items:
            table = json.loads((run_dir / "files" / items["rl/completions/path"]).read_text())
            tables[step] = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    return scalars, tables


def _mlflow_logged(tmp_path: Path) -> tuple[dict[int, dict], dict[int, list[dict]]]:
    from mlflow import MlflowClient

    client = MlflowClient((tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("salsa").experiment_id])
    scalars: dict[int, dict] = {}
    for key in run.data.metrics:
        for point in client.get_metric_history(run.info.run_id, key):
            scalars.setdefault(point.step, {})[key] = point.value
    tables = {}
    for table in sorted((Path(run.info.artifact_uri.removeprefix("file://")) / "rl/completions").glob("*.json")):
        data = json.loads(table.read_text())
        step = int(table.stem.removeprefix("step_"))
        tables[step] = [dict(zip(data["columns"], row, strict=True)) for row in data["data"]]
    return scalars, tables


def _trackio_logged(tmp_path: Path, run_name: str) -> tuple[dict[int, dict], dict[int, list[dict]]]:
    from trackio.sqlite_storage import SQLiteStorage

    scalars: dict[int, dict] = {}
    tables = {}
    for log in SQLiteStorage.get_logs("salsa", run_name):
        if "rl/completions" in log:
            tables[log["step"]] = log["rl/completions"]["_value"]
        scalars.setdefault(log["step"], {}).update({k: v for k, v in log.items() if k.startswith("rl/") and
                                                     k != "rl/completions"})  # fmt: skip
    return scalars, tables


def _tensorboard_logged(out: Path) -> tuple[dict[int, dict], dict[int, list[dict]]]:
    """TensorBoard's scalars (float32), and its Markdown tables read back into rows of text."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars: dict[int, dict] = {}
    for tag in events.Tags()["scalars"]:
        for event in events.Scalars(tag):
            scalars.setdefault(event.step, {})[tag] = event.value
    tables = {}
    for event in events.Tensors("rl/completions/text_summary"):
        header, _, *lines = event.tensor_proto.string_val[0].decode().split("\n")
        cells = [[c.replace("\\|", "|").replace("<br>", "\n") for c in re.split(r"(?<!\\) \| ", line[2:-2])]
                 for line in [header, *lines]]  # fmt: skip
        tables[event.step] = [dict(zip(cells[0], row, strict=True)) for row in cells[1:]]
    return scalars, tables


def _offline(monkeypatch, tmp_path: Path) -> None:
    """wandb with no login and no WANDB_MODE (so salsa picks offline), everything it writes in tmp_path; mlflow with
    no tracking URI (so salsa picks ./mlruns); trackio's local store in tmp_path."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.setenv(name, "")  # restored, or removed again, after the test
        monkeypatch.delenv(name)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "TRACKIO_DIR"):
        monkeypatch.setenv(name, str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb", "mlflow", "trackio"])
def test_each_tracker_receives_the_metrics_and_the_completions(tracker, tmp_path, monkeypatch, tiny_model_dir,
                                                               prompts_file):  # fmt: skip
    _offline(monkeypatch, tmp_path)
    config = _config(tmp_path, tiny_model_dir, prompts_file, report_to=[tracker])
    out = train_rl(config, show_progress=False, reward_fn=_letter_reward).parent
    scalars, tables = _expected(out)
    assert sorted(tables) == [1, 2] and len(tables[1]) == 4  # 2 prompts x 2 samples at each step
    assert {"prompt", "response", "reward", "gold"} == set(tables[1][0])
    if tracker == "tensorboard":
        logged, logged_tables = _tensorboard_logged(out)
        tables = {step: [{k: str(v) for k, v in row.items()} for row in rows] for step, rows in tables.items()}
    elif tracker == "wandb":
        logged, logged_tables = _wandb_logged(tmp_path)
    elif tracker == "mlflow":
        logged, logged_tables = _mlflow_logged(tmp_path)
    else:
        logged, logged_tables = _trackio_logged(tmp_path, "/".join(out.resolve().parts[-2:]))
    assert logged == {step: pytest.approx(values, rel=1e-6) for step, values in scalars.items()}
    assert "rl/reward" in logged[1] and "rl/kl_ref" in logged[1]
    assert logged_tables == tables


def test_a_resumed_run_drops_the_completions_logged_after_its_checkpoint(tmp_path, tiny_model_dir, prompts_file,
                                                                         interrupt):  # fmt: skip
    config = _config(tmp_path, tiny_model_dir, prompts_file, steps=4, save_steps=2)
    restore = interrupt("salsa.rl.ppo.rl_update", at_call=4)  # in step 4: step 3's completions are logged
    with pytest.raises(KeyboardInterrupt):
        train_rl(config, show_progress=False, reward_fn=_letter_reward)
    assert [r["step"] for r in read_jsonl(tmp_path / "rl" / "completions.jsonl")] == [1] * 4 + [2] * 4 + [3] * 4
    restore()
    train_rl(config, show_progress=False, reward_fn=_letter_reward)  # resumes from step 2
    steps = [r["step"] for r in read_jsonl(tmp_path / "rl" / "completions.jsonl")]
    assert steps == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4  # step 3 once


def _pairs_file(tmp_path: Path) -> str:
    path = tmp_path / "prefs.jsonl"
    rows = [{"prompt": p["prompt"], "chosen": "Lovely place.", "rejected": "No."} for p in review_prompts("train")[:4]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo"])
def test_sft_reward_and_dpo_report_to_what_they_name(stage, tmp_path, monkeypatch, tiny_sft_config, tiny_model_dir):
    from salsa.config import DPOConfig, RewardConfig
    from salsa.reward import train_reward
    from salsa.rl.dpo import train_dpo
    from salsa.sft import train_sft

    _offline(monkeypatch, tmp_path)
    if stage == "sft":
        out = train_sft(dataclasses.replace(tiny_sft_config, max_steps=2, report_to=["mlflow"]), show_progress=False)[0]
    elif stage == "reward":
        config = RewardConfig(backbone="causal", model=str(tiny_model_dir), data=_pairs_file(tmp_path), eval_data=None,
                              output_dir=str(tmp_path / "rm"), num_epochs=1, batch_size=2, restarts=0,
                              report_to=["mlflow"])  # fmt: skip
        out = train_reward(config, False).parent
    else:
        config = DPOConfig(init=str(tiny_model_dir), data=_pairs_file(tmp_path), output_dir=str(tmp_path / "dpo"),
                           steps=2, batch_size=2, report_to=["mlflow"])  # fmt: skip
        out = train_dpo(config, False).parent
    logged, _ = _mlflow_logged(tmp_path)
    assert logged == {r["step"]: pytest.approx({f"{stage}/{k}": v for k, v in r.items() if k != "step"}, rel=1e-6)
                      for r in read_jsonl(out / "metrics.jsonl")}  # fmt: skip
    assert not (out / "tensorboard").exists()


def test_tensorboard_alone_by_default_and_no_tracker_with_none(tmp_path, tiny_model_dir, prompts_file):
    # A fresh interpreter: the modules a run imports are its own, not those other tests imported.
    script = f"""
import sys, torch
from salsa.config import RLConfig
from salsa.rl.ppo import train_rl
from pathlib import Path
reward = lambda prompts, responses: torch.tensor([float(len(r)) for r in responses])
common = dict(algorithm="rloo", init={str(tiny_model_dir)!r}, prompts={prompts_file!r}, task=None, steps=1,
              prompts_per_step=2, samples_per_prompt=2, max_new_tokens=4, reward_normalisation="none", save_steps=0)
trackers = ("tensorboard", "wandb", "mlflow", "trackio")
train_rl(RLConfig(output_dir={str(tmp_path / "none")!r}, report_to=["none"], **common), False, reward)
print(sorted(m for m in trackers if m in sys.modules))
train_rl(RLConfig(output_dir={str(tmp_path / "default")!r}, **common), False, reward)
print(sorted(m for m in trackers if m in sys.modules))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-2:] == ["[]", "['tensorboard']"]
    assert not (tmp_path / "none" / "tensorboard").exists() and (tmp_path / "none" / "metrics.jsonl").is_file()
    assert list((tmp_path / "default" / "tensorboard").glob("events*"))


def test_report_to_names_known_installed_trackers(monkeypatch):
    def config(value: str) -> RLConfig:
        return load_stage_config(RLConfig, "rl", overrides=[f"report_to={value}"])

    assert config("wandb,mlflow").report_to == ["wandb", "mlflow"]
    validate_values(config("none"))
    with pytest.raises(ConfigError, match=r"rl.report_to must name trackers among tensorboard, wandb, mlflow, trackio"):
        validate_values(config("tensorboard,comet"))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"names wandb, which is not installed: pip install 'salsa-rlhf\[trackers\]'"):
        validate_values(config("wandb"))


def test_a_users_own_wandb_mode_and_mlflow_store_are_kept(tmp_path, monkeypatch):
    from salsa.trackers import open_trackers

    _offline(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "store").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    for tracker in open_trackers(["wandb", "mlflow"], tmp_path / "run", {"seed": 0}, resume_step=0):
        tracker.scalars({"rl/reward": 1.0}, step=1)
        tracker.close()
    assert not (tmp_path / "wandb").exists()  # disabled, where salsa's own choice would be offline
    assert not (tmp_path / "mlruns").exists() and list((tmp_path / "store").glob("*/*/metrics/rl/reward"))
