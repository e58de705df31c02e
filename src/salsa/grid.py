"""A study as a grid of jobs: the base stages (data, reward model, SFT models, soup) run once, then every RL run
with its evaluation samples is one job, runnable on its own on any machine that sees the run directory:

    salsa job run RUN_DIR JOB_ID

    RUN/jobs/<id>/rl.yaml, eval.yaml   its configs (paths absolute; eval.yaml: the whole grid's, as last planned)
    RUN/jobs/<id>/job.json             its spec: the SHA-256 of every input it reads, and the spec's own digest
    RUN/jobs/<id>/attempt-<n>.json     one per attempt: host, pid, when, and the RL step it started from
    RUN/jobs/<id>/samples.jsonl        its evaluation samples
    RUN/jobs/<id>/committed.json       the completion record: the attempt that committed and its outputs' digests
    RUN/rl/<id>/                       the RL run itself (its checkpoints, while it runs)

The run directory is the source of truth. An attempt commits by creating committed.json atomically (a hard link of
a finished temporary file: it exists whole or not at all, and a second commit fails); an attempt that finds it
returns at once, one that finds a checkpoint resumes from it. A job refuses inputs whose digest differs from its
spec, naming them. Job ids: `base` (the base models' evaluation: the SFT policy, the landscape, the soup's health)
and each RL run's name under rl/ (`salsa/seed-0`, `ppo/kl-0.05/seed-3`).

The evaluation's summary is computed from the union of the committed jobs' samples (`committed_rows`); units that
need the outputs of several jobs (a sweep merging two RL policies) are drawn by the eval stage itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salsa.config import EvalConfig, RLConfig
from salsa.config_loading import fingerprint, load_stage_config, save_config, validate_values
from salsa.errors import ConfigError, DataError
from salsa.inputs import check_inputs
from salsa.io import (
    atomic_file,
    atomic_write_text,
    digest_key,
    load_digest_cache,
    read_json,
    read_jsonl,
    save_digest_cache,
    sha256_file,
)
from salsa.tasks import current_gold_version

JOBS = "jobs"
BASE_JOB = "base"
RUN_ROOT = "{RUN}"  # the run directory, in the inputs a spec names
# The files of a model directory that decide what it computes (not salsa's records, which hold paths and times).
MODEL_FILES = ("*.safetensors", "*.json", "*.jinja", "*.txt", "*.model")
RECORDS = ("salsa_stage.json", "salsa_complete.json", "soup.json")


@dataclass(frozen=True)
class Job:
    """One job of the grid: `rl` is its RL run's config (None for the base job)."""

    id: str
    rl: RLConfig | None = None
    policy: str = ""
    seed_index: int = 0

    @property
    def final(self) -> str | None:
        return str(Path(self.rl.output_dir) / "final") if self.rl else None


def plan_jobs(rl_runs: dict[str, RLConfig], policies: dict[str, list[str]]) -> list[Job]:
    """The base job, then one job per RL run (`rl_runs`: "rl/<id>" -> config), with the policy and seed it is in
    the evaluation (`policies`: name -> final model directories)."""
    where = {str(Path(p)): (name, s) for name, paths in policies.items() for s, p in enumerate(paths)}
    jobs = [Job(BASE_JOB)]
    for name, config in rl_runs.items():
        policy, seed_index = where[str(Path(config.output_dir) / "final")]
        jobs.append(Job(name.removeprefix("rl/"), config, policy, seed_index))
    return jobs


def select(jobs: list[Job], only: str | None = None, shard: str | None = None) -> list[Job]:
    """The jobs `--only ID[,ID...]` names, or shard i of n (`--shard i/n`, i from 0 to n - 1: job k of the plan is
    in shard k mod n, so the shards are disjoint, cover the grid and mix its arms), or all."""
    if only is not None and shard is not None:
        raise ConfigError("--only and --shard: give one of them")
    if only is not None:
        wanted = [part.strip() for part in only.split(",") if part.strip()]
        ids = [job.id for job in jobs]
        unknown = [w for w in wanted if w not in ids]
        if unknown or not wanted:
            raise ConfigError(f"--only {only!r}: no job {', '.join(unknown) or '(none named)'}; jobs: {', '.join(ids)}")
        return [job for job in jobs if job.id in wanted]
    if shard is not None:
        index, sep, count = shard.partition("/")
        if not (sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
            raise ConfigError(f"--shard {shard!r}: expected i/n with 0 <= i < n (i counts from 0), e.g. --shard 0/4")
        return [job for k, job in enumerate(jobs) if k % int(count) == int(index)]
    return list(jobs)


# ---------------------------------------------------------------- digests


def digest(path: str | Path) -> str:
    """SHA-256 of an input: a file's bytes, or a model directory's files that decide what it computes (weights,
    model and tokenizer configs; not salsa's records, which hold paths and times)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(
        {f for pattern in MODEL_FILES for f in path.glob(pattern) if f.is_file() and f.name not in RECORDS}
    )  # fmt: skip
    cache, changed, whole = load_digest_cache(), False, hashlib.sha256()
    for file in files:
        key = digest_key(file)
        if key not in cache:
            cache[key], changed = sha256_file(file), True
        whole.update(f"{file.name}\0{cache[key]}\n".encode())
    if changed:
        save_digest_cache(cache)
    return whole.hexdigest()


def input_paths(*configs: Any) -> list[str]:
    """Every local path the configs name as an input (model directories, data files), in field order."""
    paths = []
    for config in configs:
        for f in dataclasses.fields(config):
            if not f.metadata.get("input"):
                continue
            values = getattr(config, f.name)
            values = values if isinstance(values, list) else [values]
            paths += [str(v) for v in values if isinstance(v, str) and Path(v).exists()]
    return list(dict.fromkeys(paths))


def _relative(path: str, root: Path) -> str:
    resolved = Path(path).resolve()
    return RUN_ROOT + "/" + str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)


def _absolute(name: str, root: Path) -> Path:
    return root / name.removeprefix(RUN_ROOT + "/") if name.startswith(RUN_ROOT) else Path(name)


# ---------------------------------------------------------------- specs


def job_dir(root: Path, job_id: str) -> Path:
    return root / JOBS / job_id


def write_spec(root: Path, job: Job, evaluation: EvalConfig, inputs: list[str]) -> bool:
    """Write the job's spec (its configs and the digest of every input); returns whether it changed. A job whose
    spec changed loses its commit and its RL run (salsa's own output): its inputs or config are not those it ran
    on. The spec names only the job's own RL policy among the evaluation's, so that adding seeds or arms to the grid
    leaves the jobs that ran as they were; its eval.yaml is the whole grid's (what `salsa study archive` records)."""
    folder = job_dir(root, job.id)
    if job.rl is not None:
        inputs = [*inputs, *input_paths(job.rl)]
    made_by_jobs = (root / "rl").resolve(), (root / JOBS).resolve()
    inputs = [p for p in dict.fromkeys(inputs) if not any(Path(p).resolve().is_relative_to(d) for d in made_by_jobs)]
    names = {_relative(p, root): digest(p) for p in inputs}
    head = {"id": job.id, "policy": job.policy, "seed_index": job.seed_index, "inputs": names,
            "rl": fingerprint(job.rl) if job.rl else None}  # fmt: skip
    body = {**head, "eval": _job_eval_fingerprint(evaluation), "policies": _own_policies(root, job, evaluation)}
    body["spec"] = _spec_digest(body)
    old = read_json(folder / "job.json") if (folder / "job.json").is_file() else None
    changed = old is not None and old.get("spec") != body["spec"] and not _same_first_form(root, job, head, body, old)
    if changed:
        _forget(root, job, folder)
    if job.rl is not None:
        save_config(job.rl, folder / "rl.yaml", section="rl")
    save_config(evaluation, folder / "eval.yaml", section="eval")  # the whole grid's, also when the job is the same
    if old is None or old.get("spec") != body["spec"]:
        atomic_write_text(folder / "job.json", json.dumps(body, indent=2) + "\n")
    return changed


def _spec_digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _job_eval_fingerprint(evaluation: EvalConfig) -> str:
    """The evaluation's settings that a job's samples depend on: all but the grid's policies (the job's own are in
    its spec by name) and the comparisons (only the eval stage's summary reads them)."""
    return fingerprint(evaluation, ignore=("policies", "comparisons"))


def _same_first_form(root: Path, job: Job, head: dict, body: dict, old: dict) -> bool:
    """Whether a spec of the first form (the whole evaluation fingerprinted, every RL policy of the grid included)
    is the job `body` describes: it matches the evaluation the job's folder recorded then, and that evaluation's
    settings and the job's own policies are today's. Only the spec's form is new."""
    try:
        then = load_stage_config(EvalConfig, "eval", job_dir(root, job.id) / "eval.yaml")
    except (ConfigError, DataError, OSError):
        return False
    return (
        old.get("spec") == _spec_digest({**head, "eval": fingerprint(then)})
        and _job_eval_fingerprint(then) == body["eval"]
        and _own_policies(root, job, then) == body["policies"]
    )


def _own_policies(root: Path, job: Job, evaluation: EvalConfig) -> dict[str, list[str]]:
    """The evaluation's policies as the job sees them: every model that is not an RL policy of the grid, and the
    job's own RL policy; paths inside the run directory named relative to it."""
    others = rl_finals(evaluation, root) - ({str(Path(job.final).resolve())} if job.final else set())
    policies = {name: [_relative(p, root) for p in paths if str(Path(p).resolve()) not in others]
                for name, paths in evaluation.policies.items()}  # fmt: skip
    return {name: paths for name, paths in policies.items() if paths}


def _forget(root: Path, job: Job, folder: Path) -> None:
    """Remove what a job wrote under an older spec (only salsa's own files)."""
    from salsa.engine import owner  # torch: the grid plans without it

    for name in ("committed.json", "samples.jsonl"):
        (folder / name).unlink(missing_ok=True)
    for attempt in folder.glob("attempt-*.json"):
        attempt.unlink()
    rl_dir = Path(job.rl.output_dir) if job.rl else None
    if rl_dir is not None and rl_dir.is_dir() and (owner(rl_dir) or {}).get("stage") == "rl":
        shutil.rmtree(rl_dir)


def committed(root: Path, job_id: str) -> dict | None:
    record = job_dir(root, job_id) / "committed.json"
    return read_json(record) if record.is_file() else None


def _check_inputs(root: Path, spec: dict, job_id: str) -> None:
    changed = []
    for name, recorded in spec["inputs"].items():
        path = _absolute(name, root)
        if not path.exists():
            changed.append(f"{path} (missing)")
        elif digest(path) != recorded:
            changed.append(str(path))
    if changed:
        raise DataError(
            f"job {job_id}: inputs differ from its spec ({root / JOBS / job_id / 'job.json'}): {', '.join(changed)}; "
            "rerun `salsa run` on this run directory to plan the job again on the current inputs"
        )


# ---------------------------------------------------------------- running a job


def load_job(root: Path, job_id: str) -> tuple[dict, Job, EvalConfig]:
    """A job's spec, the job and its evaluation config, read from the run directory."""
    folder = job_dir(root, job_id)
    if not (folder / "job.json").is_file():
        known = sorted(str(p.parent.relative_to(root / JOBS)) for p in (root / JOBS).rglob("job.json"))
        raise DataError(
            f"{root}: no job {job_id!r} (no {folder / 'job.json'}); jobs planned here: {', '.join(known) or 'none'}"
        )
    spec = read_json(folder / "job.json")
    rl_file = folder / "rl.yaml"
    rl = load_stage_config(RLConfig, "rl", rl_file, recorded=True) if rl_file.is_file() else None
    evaluation = load_stage_config(EvalConfig, "eval", folder / "eval.yaml")
    return spec, Job(job_id, rl, spec["policy"], spec["seed_index"]), evaluation


def run_job(run_dir: str | Path, job_id: str, show_progress: bool = True) -> dict:
    """Run one job of a planned grid to its commit; returns its completion record. A committed job returns at
    once; an unfinished RL run resumes from its newest checkpoint."""
    from salsa import runtime  # torch: only where a job runs

    root = Path(run_dir).resolve()
    spec, job, evaluation = load_job(root, job_id)
    done = committed(root, job_id)
    if done is not None:
        return done
    _check_inputs(root, spec, job_id)
    folder = job_dir(root, job_id)
    attempt = _begin_attempt(folder, job) if runtime.is_main_process() else 0
    attempt = runtime.broadcast(attempt)
    if attempt > 1:
        from salsa.checkpoint import FAULT_KILL_AT_STEP  # torch: only where a job runs

        os.environ.pop(FAULT_KILL_AT_STEP, None)  # the test's fault is the first attempt's only
    if job.rl is not None:
        from salsa.rl.ppo import train_rl  # torch: only where a job runs

        train_rl(job.rl, show_progress)
    rows = draw_job_units(root, job, evaluation, show_progress)
    if runtime.is_main_process():
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write_text(folder / "samples.jsonl", text)
        outputs = {"samples.jsonl": sha256_file(folder / "samples.jsonl")}
        if job.final:
            outputs["final"] = digest(job.final)
        record = {"job": job_id, "attempt": attempt, "spec": spec["spec"], "outputs": outputs,
                  "gold_judge_version": current_gold_version(evaluation.task), "host": socket.gethostname(),
                  "finished": time.time()}  # fmt: skip
        _commit(folder, record)
    runtime.barrier()
    return committed(root, job_id)


def _begin_attempt(folder: Path, job: Job) -> int:
    """Record a new attempt (the first free number, claimed atomically) and the RL step it starts from."""
    from salsa.checkpoint import latest_checkpoint  # torch: only where a job runs

    start = 0
    if job.rl is not None:
        latest = latest_checkpoint(Path(job.rl.output_dir) / "checkpoints")
        start = int(latest.name.removeprefix("step-")) if latest else 0
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "start_step": start}
    number = 1
    while True:
        try:
            fd = os.open(folder / f"attempt-{number}.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            number += 1
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"attempt": number, **record}, f, indent=2)
        return number


def _commit(folder: Path, record: dict) -> None:
    """Create committed.json whole and only once: a finished temporary file, hard-linked into place."""
    target = folder / "committed.json"
    with atomic_file(folder / ".committed.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise DataError(f"{target}: the job was committed by another attempt meanwhile") from None


def attempts(root: Path, job_id: str) -> list[dict]:
    folder = job_dir(root, job_id)
    found = sorted(folder.glob("attempt-*.json"), key=lambda p: int(p.stem.removeprefix("attempt-")))
    return [read_json(p) for p in found]


# ---------------------------------------------------------------- which units each job draws


def rl_finals(evaluation: EvalConfig, root: Path) -> set[str]:
    """The final policies of the RL runs under the run directory, among the evaluation's policies."""
    rl = (root / "rl").resolve()
    finals = {str(Path(p).resolve()) for paths in evaluation.policies.values() for p in paths}
    return {p for p in finals if Path(p).is_relative_to(rl)}


def _rl_reads(unit, finals: set[str]) -> set[str]:
    return {str(Path(m).resolve()) for m in unit.models} & finals


def cross_job_units(root: Path, evaluation: EvalConfig) -> list:
    """The units that read the RL policies of several jobs (a sweep merging two of them): the eval stage draws
    them, once every job is committed."""
    from salsa.evaluate import plan_units  # torch: the grid plans without it

    finals = rl_finals(evaluation, root)
    return [unit for unit in plan_units(evaluation) if len(_rl_reads(unit, finals)) > 1]


def job_units(root: Path, job: Job, evaluation: EvalConfig) -> list:
    """The evaluation units a job draws: an RL job its policy's, its snapshots' and the merges of its policy with
    base models; the base job every unit that reads no RL policy."""
    from salsa.evaluate import plan_units  # torch: the grid plans without it

    finals = rl_finals(evaluation, root)
    mine = {str(Path(job.final).resolve())} if job.final else set()
    return [unit for unit in plan_units(evaluation) if _rl_reads(unit, finals) == mine]


def draw_job_units(root: Path, job: Job, evaluation: EvalConfig, show_progress: bool) -> list[dict]:
    from salsa.evaluate import draw_units  # torch: only where a job runs

    validate_values(evaluation)
    inputs = check_inputs(evaluation, made_in=root / "rl")  # the RL policies are the jobs' (this one's: just made)
    return draw_units(evaluation, inputs, job_units(root, job, evaluation), show_progress)


def committed_rows(root: Path, jobs: list[Job]) -> list[dict]:
    """The samples of the committed jobs among `jobs`, each checked against its record; a unit drawn by two jobs
    is refused."""
    from salsa.evaluate import unit_key  # torch: the grid plans without it

    rows, seen = [], {}
    for job in jobs:
        record = committed(root, job.id)
        if record is None:
            continue
        file = job_dir(root, job.id) / "samples.jsonl"
        if not file.is_file() or sha256_file(file) != record["outputs"]["samples.jsonl"]:
            raise DataError(f"{file}: differs from the job's completion record; remove {file.parent} and rerun it")
        for row in read_jsonl(file):
            key = unit_key(row)
            if seen.setdefault(key, job.id) != job.id:
                raise DataError(f"jobs {seen[key]} and {job.id} both hold the samples of {key[:3]}; remove one")
            rows.append(row)
    return rows
