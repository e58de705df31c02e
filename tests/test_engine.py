"""The stage engine: whose directory it is, what happens to it, and what salsa reads back from it."""

import builtins
import dataclasses
import errno
import json
import os
import pickle
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import salsa.sft
from salsa import train_sft
from salsa.checkpoint import load_checkpoint
from salsa.config import EvalConfig, RewardConfig, SoupConfig
from salsa.engine import LOCK_FILE, OWNER_MARKER, Stage, decide
from salsa.errors import DataError, SalsaError, os_error_message
from salsa.io import COMPLETE_MARKER, remove_debris
from salsa.logs import NonFiniteError
from salsa.reward import train_reward
from salsa.soup import build_soup


def _tree(root):
    """Every path under `root` with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


def _owned(folder, stage="soup", fingerprint="abc", complete=False, config=None):
    folder.mkdir(parents=True)
    record = {"stage": stage, "fingerprint": fingerprint, "config": config or {}}
    (folder / OWNER_MARKER).write_text(json.dumps(record))
    if complete:
        (folder / COMPLETE_MARKER).write_text(json.dumps(record))
    return folder


def test_decide_by_what_the_directory_holds(tmp_path):
    assert decide(tmp_path / "missing", "soup", "abc", {}, False) == "fresh"
    (tmp_path / "empty").mkdir()
    assert decide(tmp_path / "empty", "soup", "abc", {}, False) == "fresh"
    assert decide(_owned(tmp_path / "done", complete=True), "soup", "abc", {}, False) == "reuse"
    assert decide(_owned(tmp_path / "half"), "soup", "abc", {}, False) == "resume"
    assert decide(_owned(tmp_path / "redo", complete=True), "soup", "xyz", {}, True) == "restart"
    changed = _owned(tmp_path / "changed", config={"learning_rate": 0.1, "seed": 0})
    with pytest.raises(SalsaError, match=r"another config \(learning_rate: 0.1 -> 0.2\); .*--overwrite"):
        decide(changed, "soup", "xyz", {"learning_rate": 0.2, "seed": 0}, False)
    with pytest.raises(SalsaError, match="holds the output of `salsa sft`"):
        decide(_owned(tmp_path / "sft", stage="sft", complete=True), "eval", "abc", {}, True)  # not even --overwrite
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    with pytest.raises(SalsaError, match=r"holds files salsa did not write \(e.g. notes.txt\)"):
        decide(tmp_path / "user", "soup", "abc", {}, True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SalsaError, match="is a file, not a directory"):
        decide(tmp_path / "file", "soup", "abc", {}, False)


def test_a_users_directory_and_files_are_never_replaced(tmp_path, tiny_model_dir):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    a_file = tmp_path / "soup.bin"
    a_file.write_text("data")
    before = _tree(tmp_path)
    for out in (mine, a_file):
        with pytest.raises(SalsaError):
            build_soup([tiny_model_dir, tiny_model_dir], out)
    assert _tree(tmp_path) == before


def test_the_output_may_not_be_or_hold_or_lie_inside_an_input(tmp_path, tiny_model_dir):
    config = EvalConfig(policies={"p": [str(tiny_model_dir)]}, output_dir=str(tiny_model_dir), prompts="none.jsonl",
                        ood_prompts=None, reward_model=None, sft_model=None, soup_model=None)  # fmt: skip
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    config = dataclasses.replace(config, prompts=str(prompts))
    with pytest.raises(SalsaError, match="the output directory .* is the input eval.policies"):
        Stage(config).__enter__()
    with pytest.raises(SalsaError, match="lies inside the input soup.models"):
        Stage(SoupConfig(models=[str(tiny_model_dir)] * 2, output_dir=str(tiny_model_dir / "soup"))).__enter__()
    assert not (tiny_model_dir / "soup").exists() and not (tiny_model_dir / OWNER_MARKER).exists()


def test_a_second_process_on_a_locked_directory_gets_an_error(tmp_path, tiny_model_dir):
    out = tmp_path / "soup"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, pathlib; from salsa.engine import DirectoryLock; "
         "p = pathlib.Path(sys.argv[1]); p.mkdir(); DirectoryLock(p).acquire(); print('held', flush=True); "
         "time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SalsaError, match=rf"in use by another salsa process \(pid {holder.pid}\)"):
            build_soup([tiny_model_dir, tiny_model_dir], out)
    finally:
        holder.kill()
        holder.wait()
    # The kernel drops the lock of a dead process: the directory is usable at once.
    build_soup([tiny_model_dir, tiny_model_dir], out)
    assert (out / COMPLETE_MARKER).is_file() and not (out / LOCK_FILE).exists()


def test_debris_of_an_interrupted_run_is_removed_and_nothing_else(tmp_path):
    run = _owned(tmp_path / "run")
    (run / ".model.abcd1234.tmp").mkdir()
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / ".step-0000002.x8k2lq0z.tmp").mkdir()
    (run / ".metrics.jsonl.q1w2e3r4.tmp").write_text("half")
    (run / "metrics.jsonl").write_text("{}")
    remove_debris(run)
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == ["checkpoints", "metrics.jsonl", OWNER_MARKER]


def test_a_stage_that_fails_before_writing_leaves_nothing(tmp_path, tiny_sft_config, monkeypatch):
    def no_model(*args, **kwargs):
        raise SalsaError("could not load the model 'x': gone")

    monkeypatch.setattr(salsa.sft, "trainable_model", no_model)
    with pytest.raises(SalsaError, match="gone"):
        train_sft(tiny_sft_config)
    out = tmp_path / "sft"
    assert not (out / OWNER_MARKER).exists() and not (out / "config.yaml").exists()
    assert not (out / "sft-0").exists() or not any((out / "sft-0").iterdir())


def _interrupt_sft(config, interrupt, at_call):
    restore = interrupt("salsa.sft.token_cross_entropy_sum", at_call)
    with pytest.raises(KeyboardInterrupt):
        train_sft(config)
    restore()


def test_a_changed_config_after_an_interruption_is_refused_naming_the_keys(tiny_sft_config, interrupt):
    config = dataclasses.replace(tiny_sft_config, save_steps=2)
    _interrupt_sft(config, interrupt, at_call=4)
    with pytest.raises(SalsaError, match=r"another config \(learning_rate: 0.003 -> 0.001\)"):
        train_sft(dataclasses.replace(config, learning_rate=1e-3))
    # A setting that does not change the result (checkpoint frequency) may change on resume.
    (path,) = train_sft(dataclasses.replace(config, save_steps=3))
    assert (path / COMPLETE_MARKER).is_file()
    (restarted,) = train_sft(dataclasses.replace(config, learning_rate=1e-3), overwrite=True)
    assert json.loads((restarted.parent / OWNER_MARKER).read_text())["config"]["learning_rate"] == 1e-3


def _boom(marker):
    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Boom())


def test_no_file_salsa_reads_back_on_resume_can_run_code(tmp_path, tiny_sft_config, interrupt):
    config = dataclasses.replace(tiny_sft_config, save_steps=2)
    _interrupt_sft(config, interrupt, at_call=4)
    checkpoint = tmp_path / "sft" / "sft-0" / "checkpoints" / "step-0000002"
    pristine = tmp_path / "pristine"
    shutil.copytree(checkpoint, pristine)
    marker = tmp_path / "executed"
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    for name in sorted(os.listdir(pristine)):  # every file of a checkpoint, one at a time
        shutil.rmtree(checkpoint)
        shutil.copytree(pristine, checkpoint)
        (checkpoint / name).write_bytes(_boom(marker))
        with pytest.raises(DataError, match=rf"{checkpoint}(/state.json)?: (unreadable checkpoint|corrupt JSON)"):
            load_checkpoint(checkpoint, optimizer)
        assert not marker.exists(), name
    # Pickles under the names other trainers use are never read: the run resumes and finishes.
    shutil.rmtree(checkpoint)
    shutil.copytree(pristine, checkpoint)
    for name in ("optimizer.bin", "random_states_0.pkl", "scheduler.bin", "state.pt", "training_args.bin"):
        (checkpoint / name).write_bytes(_boom(marker))
    (path,) = train_sft(config)
    assert (path / COMPLETE_MARKER).is_file() and not marker.exists()


def test_a_soup_with_a_nan_ingredient_is_refused_before_its_shard_lands(tmp_path, tokenizer):
    from salsa.models import load_causal_lm, save_tiny_model

    good = save_tiny_model(tmp_path / "good", tokenizer, seed=1)
    bad = save_tiny_model(tmp_path / "bad", tokenizer, seed=2)
    model = load_causal_lm(str(bad))
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[3, 5] = float("nan")
    model.save_pretrained(bad)
    with pytest.raises(SalsaError, match=r"bad: tensor 'model.layers.0.mlp.up_proj.weight' holds NaN"):
        build_soup([good, bad], tmp_path / "soup")
    assert not list((tmp_path / "soup").glob("*.safetensors"))
    assert not (tmp_path / "soup" / COMPLETE_MARKER).exists()


def test_os_refusals_become_one_line_naming_the_path(tmp_path, tiny_model_dir, monkeypatch):
    import salsa.weights.merge

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "soup" / "model.safetensors"))

    monkeypatch.setattr(salsa.weights.merge, "write_streaming", full_disk)
    with pytest.raises(SalsaError, match=r"soup/model.safetensors: no space left on the device; free some space"):
        build_soup([tiny_model_dir, tiny_model_dir], tmp_path / "soup")
    monkeypatch.undo()

    def read_only(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr("pathlib.Path.mkdir", read_only)
    with pytest.raises(SalsaError, match="ro: permission denied; choose a directory you can write to"):
        build_soup([tiny_model_dir, tiny_model_dir], tmp_path / "ro")


class _FullDisk:
    """A file opened for writing on a full disk: each write fails as write() does, naming no file."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_names_the_file_that_could_not_be_written(tmp_path, tiny_model_dir, tiny_sft_config, monkeypatch):
    from safetensors import SafetensorError

    import salsa.checkpoint
    import salsa.weights.stream

    real_open = builtins.open

    def full_disk_open(path, mode="r", *args, **kwargs):
        return _FullDisk() if "w" in mode else real_open(path, mode, *args, **kwargs)

    # A soup's shards are written piece by piece on a worker thread.
    monkeypatch.setattr(salsa.weights.stream, "open", full_disk_open, raising=False)
    out = tmp_path / "full" / "s"
    shard = re.escape(str(out / "model.safetensors"))
    with pytest.raises(SalsaError, match=rf"^{shard}: no space left on the device; free some space"):
        build_soup([tiny_model_dir, tiny_model_dir], out)
    monkeypatch.undo()

    # safetensors' own I/O error (an SFT checkpoint) carries the errno in its text only.
    def no_space(*args, **kwargs):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(salsa.checkpoint, "save_file", no_space)
    checkpoint = re.escape(str(Path(tiny_sft_config.output_dir) / "sft-0" / "checkpoints" / "step-0000002"))
    with pytest.raises(SalsaError, match=rf"^{checkpoint}: no space left on the device; free some space"):
        train_sft(dataclasses.replace(tiny_sft_config, save_steps=2))
    # A copy (shutil names both files) ran out of space where it writes.
    copying = OSError(errno.ENOSPC, "No space left on device", "a/tokenizer.json", None, "s/tokenizer.json")
    assert os_error_message(copying).startswith("s/tokenizer.json: no space left on the device")


def test_model_files_follow_the_umask(tiny_sft_config):
    old = os.umask(0o022)
    try:
        (path,) = train_sft(tiny_sft_config)
    finally:
        os.umask(old)
    assert stat.S_IMODE((path / "model.safetensors").stat().st_mode) == 0o644


def _nan_loss_at(call):
    """salsa.sft's loss, NaN at its `call`-th call (step `call` of a run without gradient accumulation)."""
    real, calls = salsa.sft.token_cross_entropy_sum, {"n": 0}

    def loss(logits, labels):
        calls["n"] += 1
        value = real(logits, labels)
        return value * float("nan") if calls["n"] == call else value

    return loss


def test_an_sft_step_with_a_non_finite_loss_stops_or_is_skipped(tiny_sft_config, monkeypatch):
    monkeypatch.setattr(salsa.sft, "token_cross_entropy_sum", _nan_loss_at(3))
    out = re.escape(tiny_sft_config.output_dir)
    with pytest.raises(
        SalsaError, match=rf"sft step 3: loss is not finite \(nan\); nothing was saved.*; removed the unfinished {out}$"
    ):
        train_sft(tiny_sft_config)
    assert not Path(tiny_sft_config.output_dir).exists()  # no checkpoint to resume from: nothing is kept
    monkeypatch.setattr(salsa.sft, "token_cross_entropy_sum", _nan_loss_at(3))
    (path,) = train_sft(dataclasses.replace(tiny_sft_config, on_nonfinite="skip"))
    weights = load_file(str(path / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 1, 1, 1]


def test_a_failed_stage_keeps_what_a_rerun_resumes_from(tiny_sft_config, monkeypatch):
    monkeypatch.setattr(salsa.sft, "token_cross_entropy_sum", _nan_loss_at(3))
    config = dataclasses.replace(tiny_sft_config, save_steps=2)
    out = re.escape(config.output_dir)
    with pytest.raises(SalsaError, match=rf"sft step 3: .*; {out} keeps what the same command resumes from$"):
        train_sft(config)
    assert (Path(config.output_dir) / "sft-0" / "checkpoints" / "step-0000002" / "state.json").is_file()


def test_a_failed_stage_removes_what_it_wrote(tmp_path, tiny_model_dir, monkeypatch):
    import salsa.reward

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "Good.", "rejected": "Bad."}) + "\n"
                             for i in range(4)))  # fmt: skip

    def flat(reward, pairs):
        raise NonFiniteError("reward: the normalisation statistics of the trained model are mean 0.0, std 0.0")

    monkeypatch.setattr(salsa.reward, "normalisation", flat)  # fails after training: metrics.jsonl is written
    out = tmp_path / "new" / "rm"
    config = RewardConfig(backbone="causal", model=str(tiny_model_dir), data=str(pairs), eval_data=None,
                          output_dir=str(out), num_epochs=1, batch_size=2, max_length=32)  # fmt: skip
    with pytest.raises(NonFiniteError, match=rf"std 0.0; removed the unfinished {re.escape(str(out))}$"):
        train_reward(config, show_progress=False)
    assert not (tmp_path / "new").exists()  # and the parent it made for it
    # A directory that was there (empty) stays, as it was.
    (tmp_path / "mine").mkdir()
    with pytest.raises(NonFiniteError, match=rf"removed what it wrote in {re.escape(str(tmp_path / 'mine'))}$"):
        train_reward(dataclasses.replace(config, output_dir=str(tmp_path / "mine")), show_progress=False)
    assert list((tmp_path / "mine").iterdir()) == []
