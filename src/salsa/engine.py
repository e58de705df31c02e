"""The lifecycle every stage shares, so that each stage module keeps only its algorithm.

    with Stage(config, overwrite=overwrite) as stage:   # validate everything, then own the output directory
        if stage.reused:                               # finished before with this config
            return ...
        ...                                            # the algorithm, writing into stage.out
        stage.finish({...})                            # the completion marker, written last

1. Validate: every field's rule, the stage's cross-field rules, and every input it reads (paths, data files
   parsed up to the rows, reward models), before any model loads (`salsa.inputs`). The output directory may
   not be an input, nor hold one, nor sit inside one.
2. Decide from what the output directory holds (`decide`):

       missing, or an empty directory          fresh
       salsa_stage.json of this stage:
         the same fingerprint, finished          reuse
         the same fingerprint, unfinished        resume (from the stage's checkpoints, if it keeps them)
         another fingerprint                     refused, naming the keys that differ (--overwrite: start over)
       anything else                             refused: salsa replaces only what salsa wrote

3. Own the directory: create it, lock it (`.salsa.lock` names the holder's pid; a second process gets an
   error), write `salsa_stage.json` (stage, fingerprint, config) and `config.yaml`, and clear salsa's own
   temporary debris of an interrupted run.
4. A stage that fails in a directory it started afresh (new, empty, or its own output cleared by --overwrite,
   so that everything in it is this run's) keeps what a rerun resumes from, a checkpoint or a finished part
   (an SFT model, a pipeline stage), and otherwise removes everything it wrote, the directory too if it made
   it; its error says which (`cleanup`). Where the directory held anything before, nothing is removed.
5. Turn the operating system's refusals (disk full, permissions, read-only) into one-line errors naming the path.

Only the main process touches the directory; the others receive its decision.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.markup import escape

from salsa import runtime
from salsa.checkpoint import STATE_FILE
from salsa.config_loading import fingerprint, result_values, save_config
from salsa.errors import SalsaError, os_error_message
from salsa.inputs import validate
from salsa.io import COMPLETE_MARKER, TEMPORARY, atomic_write_json, read_json, remove_debris
from salsa.progress import console
from salsa.version import __version__

OWNER_MARKER = "salsa_stage.json"
LOCK_FILE = ".salsa.lock"


def owner(folder: Path) -> dict | None:
    """What salsa recorded about the directory it wrote (its stage and fingerprint), or None."""
    for marker in (OWNER_MARKER, COMPLETE_MARKER):
        if (folder / marker).is_file():
            recorded = read_json(folder / marker)
            if isinstance(recorded, dict) and "stage" in recorded:
                return recorded
    return None


def differing_keys(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(recorded) | set(current))
    return [f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in keys if recorded.get(k) != current.get(k)]


def decide(out: Path, stage: str, print_: str, values: dict[str, Any], overwrite: bool) -> str:
    """fresh | reuse | resume | restart (overwrite of salsa's own output), or a SalsaError saying why not."""
    if not out.exists():
        return "fresh"
    if not out.is_dir():
        raise SalsaError(f"{out} is a file, not a directory; choose another output directory")
    recorded = owner(out)
    if recorded is None:
        foreign = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
        if foreign:
            raise SalsaError(
                f"{out} holds files salsa did not write (e.g. {foreign[0]}); salsa only replaces its own output: "
                "choose another output directory"
            )
        return "fresh"
    if recorded["stage"] != stage:
        raise SalsaError(
            f"{out} holds the output of `salsa {recorded['stage']}`; choose another output directory for {stage}"
        )
    if overwrite:
        return "restart"
    if recorded.get("fingerprint") != print_:
        changes = differing_keys(recorded.get("config", {}), values) or ["the config fingerprint"]
        raise SalsaError(
            f"{out} was made with another config ({'; '.join(changes)}); rerun with the same config, pass "
            "--overwrite to start over, or choose another output directory"
        )
    return "reuse" if (out / COMPLETE_MARKER).is_file() else "resume"


def resume_points(folder: Path) -> list[Path]:
    """What a rerun of an unfinished stage resumes from: its checkpoints and the finished parts below it (an SFT
    model of several, a stage of a pipeline)."""
    return [*folder.glob(f"**/checkpoints/step-*/{STATE_FILE}"), *folder.glob(f"*/**/{COMPLETE_MARKER}")]


class DirectoryLock:
    """An exclusive lock on a directory held for a stage's lifetime; the kernel drops it if the process dies."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise SalsaError(
                    f"{self.path.parent} is in use by another salsa process (pid {holder}); wait for it to end "
                    "or choose another output directory"
                ) from None
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break  # otherwise the holder removed the file between our open and lock: take the new one
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.unlink(self.path)
            os.close(self.fd)
            self.fd = None


class Stage:
    """One run of a stage into its output directory; see the module docstring for the lifecycle."""

    def __init__(
        self,
        config: Any,
        out: str | Path | None = None,
        *,
        overwrite: bool = False,
        ignore: tuple[str, ...] = (),
        inputs: dict[str, Any] | None = None,
    ):
        self.config, self.name = config, type(config).STAGE
        self.out = Path(out if out is not None else config.output_dir)
        self.overwrite, self.ignore = overwrite, ignore
        self.inputs = inputs
        self.fingerprint = fingerprint(config, ignore)
        self.decision = ""
        self._lock: DirectoryLock | None = None
        self._created: list[Path] = []  # the directories this run made for its output, innermost first

    @property
    def reused(self) -> bool:
        return self.decision == "reuse"

    @property
    def resumed(self) -> bool:
        return self.decision == "resume"

    def __enter__(self) -> Stage:
        if self.inputs is None:
            self.inputs = validate(self.config, self.out)
        outcome: tuple[str, str] = ("", "")
        if runtime.is_main_process():
            try:
                outcome = ("ok", self._claim())
            except SalsaError as e:
                outcome = ("error", str(e))
            except OSError as e:
                outcome = ("error", os_error_message(e) or f"{self.out}: {e}")
        outcome = runtime.broadcast(outcome)
        if outcome[0] == "error":
            raise SalsaError(outcome[1])
        self.decision = outcome[1]
        if self.decision == "reuse":
            console.print(f"[green]{self.name}[/]: {escape(str(self.out))} is complete with this config; reusing it")
        elif self.decision == "resume":
            console.print(f"[yellow]{self.name}[/]: resuming the unfinished run in {escape(str(self.out))}")
        runtime.barrier()
        return self

    def _claim(self) -> str:
        values = result_values(self.config, self.ignore)
        decision = decide(self.out, self.name, self.fingerprint, values, self.overwrite)
        self._created = [p for p in (self.out, *self.out.parents) if not p.exists()]
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = DirectoryLock(self.out)
        self._lock.acquire()
        if decision == "restart":
            for entry in self.out.iterdir():
                if entry.name != LOCK_FILE:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        remove_debris(self.out)
        for stale in self.out.parent.glob(f".{self.out.name}.*"):
            if TEMPORARY.fullmatch(stale.name) and stale.is_dir():
                shutil.rmtree(stale)  # left by an older salsa that built whole directories beside their target
        if decision != "reuse":
            record = {"stage": self.name, "fingerprint": self.fingerprint, "config": values, "salsa": __version__}
            atomic_write_json(self.out / OWNER_MARKER, record)
            save_config(self.config, self.out / "config.yaml", section=self.name)
        return decision

    def finish(self, info: dict[str, Any] | None = None) -> None:
        """Write the completion marker (main process; the last file of the stage)."""
        if runtime.is_main_process():
            atomic_write_json(
                self.out / COMPLETE_MARKER, {"stage": self.name, "fingerprint": self.fingerprint, **(info or {})}
            )
        runtime.barrier()

    def __exit__(self, kind, error, traceback) -> bool:
        note = None
        try:
            if error is not None and self.decision in ("fresh", "restart") and runtime.is_main_process():
                note = self.cleanup()
        except OSError as e:  # the stage's own error is the one to report
            note = f"could not clean up: {os_error_message(e) or e}"
        finally:
            if self._lock is not None:
                self._lock.release()
        if isinstance(error, Exception) and not isinstance(error, SalsaError):
            message = os_error_message(error, where=self.out)
            if message:
                raise SalsaError(message + (f"; {note}" if note else "")) from None
        if isinstance(error, SalsaError) and note:
            error.args = (f"{error}; {note}",)  # the same error (its kind kept), saying what became of the directory
        return False

    def cleanup(self) -> str | None:
        """After a failure in a directory this run started afresh (everything in it is this run's): keep what a
        rerun resumes from, else remove everything this run wrote. Returns what it did, for the error message
        (None when the stage had written nothing of its own: the directory is as it was found)."""
        written = [p for p in self.out.iterdir() if p.name != LOCK_FILE] if self.out.is_dir() else []
        untouched = {p.name for p in written} <= {OWNER_MARKER, "config.yaml"}
        if not untouched and resume_points(self.out):
            return f"{self.out} keeps what the same command resumes from"
        for entry in written:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        if self._created:
            self._lock.release()
            self._lock = None
            for folder in self._created:  # the output directory, then the parents made for it, while empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
        if untouched:
            return None
        return f"removed the unfinished {self.out}" if self._created else f"removed what it wrote in {self.out}"


def run_stage(config: Any, work: Callable[[Stage], None], overwrite: bool = False) -> Path:
    """Run `work(stage)` in the stage's output directory unless it finished before with this config; returns it."""
    with Stage(config, overwrite=overwrite) as stage:
        if not stage.reused:
            work(stage)
    return stage.out
