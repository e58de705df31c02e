"""The trackers a stage reports to (`report_to`, TRL's names), each imported only when named.

Every tracker receives the scalars of metrics.jsonl (as `stage/key`) and the tables (RL's completions); TensorBoard
shows a table as Markdown text. Each works without a server or a login, and each follows its own environment
variables where the user set them (see docs/tracking.md):
  tensorboard  <stage dir>/tensorboard;
  wandb        WANDB_MODE as set; unset, online when wandb finds a login, else offline (`wandb sync` uploads it);
  mlflow       MLFLOW_TRACKING_URI as set; unset, a local file store ./mlruns;
  trackio      its local store (TRACKIO_DIR, default ~/.cache/huggingface/trackio), or a Space the user set.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
PROJECT = "salsa"  # the wandb project, mlflow experiment and trackio project unless the user names one


def known_tracker(name: str) -> str | None:
    """A `report_to` entry's problem: not a tracker, or one whose package is missing (found without importing it)."""
    if name == "none":
        return None
    if name not in TRACKERS:
        return f"must name trackers among {', '.join(TRACKERS)} (or none)"
    if importlib.util.find_spec(name) is None:
        return f"names {name}, which is not installed: pip install 'salsa-rlhf[trackers]'"
    return None


def open_trackers(names: list[str], folder: Path, config: dict[str, Any], resume_step: int) -> list:
    """A started run of each tracker in `names` ('none' names none) for the stage writing to `folder`."""
    kinds = {"tensorboard": TensorBoard, "wandb": Wandb, "mlflow": MLflow, "trackio": Trackio}
    run_name = "/".join(Path(folder).resolve().parts[-2:])  # e.g. sft/sft-0, rl/seed-0
    return [kinds[name](folder, run_name, config, resume_step) for name in dict.fromkeys(names) if name != "none"]


def _columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


class TensorBoard:
    def __init__(self, folder: Path, run_name: str, config: dict, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter  # torch: the CLI reads report_to without it

        # purge_step hides the events the interrupted run wrote after its checkpoint.
        self._writer = SummaryWriter(str(Path(folder) / "tensorboard"), purge_step=resume_step + 1)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self._writer.add_scalar(key, value, step)

    def table(self, key: str, rows: list[dict], step: int) -> None:
        columns = _columns(rows)
        cell = lambda v: "" if v is None else str(v).replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
        lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
        self._writer.add_text(key, "\n".join(lines), step)

    def close(self) -> None:
        self._writer.close()


class Wandb:
    def __init__(self, folder: Path, run_name: str, config: dict, resume_step: int):
        import wandb  # each tracker but TensorBoard is an optional extra (salsa[trackers])

        self._wandb = wandb
        # WANDB_MODE passed on: wandb reads its environment once per process.
        mode = os.environ.get("WANDB_MODE") or None
        offline_by_choice = mode is None and not wandb.login(prompt=False, verify=False)
        if mode is None:
            mode = "offline" if offline_by_choice else "online"
        project = os.environ.get("WANDB_PROJECT", PROJECT)
        self._run = wandb.init(project=project, name=run_name, config=config, mode=mode, reinit="create_new")
        if offline_by_choice:
            # The CLI imports this module at start-up; rich's progress bars load only when wandb reports.
            from rich.markup import escape

            from salsa.progress import console

            console.print(
                f"wandb: no login found, so the run is logged offline in {escape(str(self._run.dir))}; "
                "`wandb sync` uploads it"
            )

    def scalars(self, values: dict[str, float], step: int) -> None:
        self._run.log(values, step=step)

    def table(self, key: str, rows: list[dict], step: int) -> None:
        columns = _columns(rows)
        table = self._wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])
        self._run.log({key: table}, step=step)

    def close(self) -> None:
        self._run.finish()


class MLflow:
    def __init__(self, folder: Path, run_name: str, config: dict, resume_step: int):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        store = None  # mlflow reads MLFLOW_TRACKING_URI
        if "MLFLOW_TRACKING_URI" not in os.environ:
            # mlflow's own default (a SQLite database) needs the full mlflow package; the file store needs only
            # mlflow-skinny, and MLflow asks that it be allowed by name.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            store = Path("mlruns").resolve().as_uri()
        # A client of its own: mlflow's global tracking URI and active run stay the user's.
        self._client = MlflowClient(store)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT)
        experiment = self._client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(name)
        self._run_id = self._client.create_run(experiment_id, run_name=run_name).info.run_id
        self._client.log_batch(self._run_id, params=[Param(key, str(value)) for key, value in config.items()])

    def scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(self._run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def table(self, key: str, rows: list[dict], step: int) -> None:
        import pandas as pd

        # Object columns: pandas 3's string columns draw a deprecation warning from inside mlflow.
        frame = pd.DataFrame(rows, columns=_columns(rows), dtype=object)
        self._client.log_table(self._run_id, frame, artifact_file=f"{key}/step_{step:06d}.json")

    def close(self) -> None:
        self._client.set_terminated(self._run_id)


class Trackio:
    def __init__(self, folder: Path, run_name: str, config: dict, resume_step: int):
        import trackio

        self._trackio = trackio
        self._run = trackio.init(project=PROJECT, name=run_name, config=config)

    def scalars(self, values: dict[str, float], step: int) -> None:
        self._run.log(values, step=step)

    def table(self, key: str, rows: list[dict], step: int) -> None:
        columns = _columns(rows)
        table = self._trackio.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])
        self._run.log({key: table}, step=step)

    def close(self) -> None:
        self._run.finish()
