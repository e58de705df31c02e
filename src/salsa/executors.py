"""Where a grid's jobs run: one after another in this process (`local`), or as tasks on a Ray cluster (`ray`).

A Ray task only wraps the job command (`salsa job run RUN_DIR JOB_ID`, in a subprocess with its own thread count)
and returns small values: the job's id and its outputs' digests; everything else goes through the run directory,
which every node must see at the same path (checked before the grid starts). A job whose process dies (a lost
worker or node, a SIGKILL) is retried once and resumes from its checkpoint; a job that fails with an error (a
digest mismatch, say) is not retried. Either way the other jobs finish, and the failed ones are listed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from rich.markup import escape

from salsa.errors import SalsaError
from salsa.grid import Job, committed, run_job
from salsa.progress import console

EXECUTORS = ("local", "ray")
RAY_EXTRA = "--executor ray needs Ray: pip install 'salsa-rlhf[ray]'"


class JobLost(Exception):
    """A job's process died without finishing (killed by a signal): Ray retries it once."""


class LocalExecutor:
    """The jobs one after another in this process (and its torchrun peers, under several processes)."""

    def run(self, root: Path, jobs: list[Job], show_progress: bool) -> list[str]:
        failed = []
        for number, job in enumerate(jobs, 1):
            console.rule(f"[bold]job {escape(job.id)}[/] ({number} of {len(jobs)})")
            try:
                run_job(root, job.id, show_progress)
            except SalsaError as e:
                console.print(f"[red]job {escape(job.id)} failed:[/] {escape(str(e))}")
                failed.append(f"{job.id}: {e}")
        return failed


def _job_command(root: str, job_id: str, threads: int) -> dict:
    """The body of a Ray task: the job command in a subprocess, at `threads` threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "salsa.cli", "job", "run", root, job_id, "--quiet"]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode < 0:
        raise JobLost(f"job {job_id}: its process was killed (signal {-done.returncode})")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["exit code " + str(done.returncode)])[-1]
        return {"job": job_id, "error": last.removeprefix("error: ")}
    return {"job": job_id, "outputs": committed(Path(root), job_id)["outputs"]}


def _read_probe(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


class RayExecutor:
    """Each job a Ray task: one GPU when the cluster has GPUs, else `cpus_per_job` CPUs (and as many threads)."""

    def __init__(self, address: str | None, cpus_per_job: int):
        try:
            import ray  # an optional extra (salsa[ray])
        except ImportError:
            raise SalsaError(RAY_EXTRA) from None
        self.ray, self.address, self.cpus = ray, address, cpus_per_job

    def run(self, root: Path, jobs: list[Job], show_progress: bool) -> list[str]:
        ray = self.ray
        # Without an address, a Ray instance of our own: never whatever cluster RAY_ADDRESS happens to point at.
        # The jobs see salsa's settings (its cache, a test's fault setting) and Hugging Face's offline switches.
        passed = {k: v for k, v in os.environ.items() if k.startswith(("SALSA_", "HF_", "TRANSFORMERS_"))}
        ray.init(address=self.address or "local", include_dashboard=False, log_to_driver=False,
                 configure_logging=False, runtime_env={"env_vars": passed})  # fmt: skip
        try:
            self._check_storage(root)
            gpus = ray.cluster_resources().get("GPU", 0) > 0
            resources = {"num_gpus": 1, "num_cpus": self.cpus} if gpus else {"num_cpus": self.cpus}
            task = ray.remote(max_retries=1, retry_exceptions=[JobLost], **resources)(_job_command)
            pending = {task.remote(str(root), job.id, self.cpus): job.id for job in jobs}
            return self._wait(pending, len(jobs))
        finally:
            ray.shutdown()

    def _check_storage(self, root: Path) -> None:
        """Every alive node reads a file the driver wrote into the run directory, or the grid does not start."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # the optional extra

        token = uuid.uuid4().hex
        probe = root / f".salsa-probe-{token}"
        probe.write_text(token)
        try:
            nodes = [n for n in self.ray.nodes() if n["Alive"]]
            read = self.ray.remote(num_cpus=0)(_read_probe)
            seen = self.ray.get([
                read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                    str(probe))
                for n in nodes
            ])  # fmt: skip
        finally:
            probe.unlink(missing_ok=True)
        blind = [n["NodeManagerAddress"] for n, text in zip(nodes, seen, strict=True) if text != token]
        if blind:
            raise SalsaError(
                f"{root} is not visible from Ray node(s) {', '.join(blind)}: put the run directory on storage every "
                "node mounts at the same path (a shared filesystem)"
            )

    def _wait(self, pending: dict, total: int) -> list[str]:
        ray, failed, done = self.ray, [], 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job_id = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
                error = result.get("error")
            except Exception as e:  # the retry spent: a lost worker or node, the task's own JobLost
                error = str(getattr(e, "cause", None) or e).strip().splitlines()[-1]
            done += 1
            if error:
                failed.append(f"{job_id}: {error}")
            state = f"[red]failed[/]: {escape(error)}" if error else "[green]committed[/]"
            console.print(f"job {escape(job_id)} {state}  ({done} done, {len(pending)} running or queued, of {total})")
        return failed


def make_executor(name: str, address: str | None, cpus_per_job: int) -> LocalExecutor | RayExecutor:
    """The executor `--executor NAME` names; checked before any work (a missing Ray extra is an error at once)."""
    if name not in EXECUTORS:
        raise SalsaError(f"--executor {name!r}: expected one of {', '.join(EXECUTORS)}")
    if name == "local":
        if address is not None:
            raise SalsaError("--ray-address is for --executor ray")
        return LocalExecutor()
    return RayExecutor(address, cpus_per_job)
