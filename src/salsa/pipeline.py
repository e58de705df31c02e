"""`salsa run`: the whole SALSA pipeline from one YAML file, cached and resumable.

    data -> reward -> sft (K seeds) -> soup [-> normalisation] -> jobs: base, rl/<arm>/seed-<s> (+ samples) -> eval
    -> report

Every stage writes into the run directory and ends with a completion marker. `pipeline.json` records
each finished stage's fingerprint: a hash of its resolved config and of the fingerprints of the stages it
reads. A rerun skips a stage whose fingerprint is unchanged and whose directory is complete, redoes one
whose config (or an upstream stage) changed, and resumes an interrupted one from its checkpoints (SFT
and RL save them every `save_steps`).

Every RL run with its evaluation samples is a job of a grid (`salsa.grid`), planned with the SHA-256 of the base
it reads and run by an executor (`salsa.executors`: here, one after another, or on a Ray cluster); a job commits
atomically, and a job whose spec changed (its config or the base) is redone. `only` / `shard` run part of the grid;
the eval stage waits for every job and summarises the union of their samples.

Every RL arm gets the same RL config (steps, prompts, batch, seeds); only the start and the KL anchor differ,
as `run.arms` says: by default ppo starts from and is anchored to sft-0 (sft-0:sft-0), salsa to the soup of all
SFT models (soup:soup); soup:sft and sft:soup separate the two changes. `sft` without an index is SFT model s mod K
for RL seed s (`sft:sft` is PPO from a typical ingredient, its seeds cycling through them). `run.kl_coefs` trains
every arm at several KL coefficients, for a gold-vs-KL frontier. Every run logs KL to sft-0, whatever it starts
from, so their curves share one axis. With `run.reward_normalisation: shared` the reward's mean and std are measured
once, over samples of the K SFT models (the `normalisation` stage, `salsa.rl.normalisation`), and every RL run
normalises by them: one KL coefficient is then one objective in every arm.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.markup import escape

from salsa import runtime
from salsa.config import (
    STAGES,
    DataConfig,
    DPOConfig,
    EvalConfig,
    NormalisationConfig,
    RewardConfig,
    RLConfig,
    RunConfig,
    SFTConfig,
    SoupConfig,
)
from salsa.config_loading import config_to_yaml, load_stage_config, validate_values
from salsa.config_loading import fingerprint as config_fingerprint
from salsa.engine import Stage
from salsa.errors import ConfigError, SalsaError
from salsa.executors import make_executor
from salsa.grid import (
    Job,
    committed,
    committed_rows,
    cross_job_units,
    input_paths,
    job_dir,
    plan_jobs,
    select,
    write_spec,
)
from salsa.inputs import check_inputs
from salsa.io import NORMALISATION_FILE, atomic_write_json, atomic_write_text, is_complete, read_json
from salsa.progress import console

# RL settings that `salsa run` sets per arm and seed.
PER_RUN = ("init", "reference", "reference_model", "reference_models", "kl_coef", "seed", "output_dir")  # seed: + s
STATE_FILE = "pipeline.json"
# What the run directory's own fingerprint leaves out: the grid's shape is handled job by job, the executor's
# resources change nothing a run computes.
RUN_IGNORED = ("seeds", "arms", "arm_seeds", "kl_coefs", "reward_normalisation", "cpus_per_job")


@dataclasses.dataclass
class RunPlan:
    """The resolved config of every stage, with paths wired into the run directory."""

    run: RunConfig
    data: DataConfig | None  # None: the user's own data, no `salsa data make`
    reward: RewardConfig
    sft: SFTConfig
    soup: SoupConfig
    rl_base: RLConfig  # the `rl:` section, shared by every method and seed
    rl: dict[str, RLConfig]  # "rl/<method>/seed-<s>" -> its config
    eval: EvalConfig
    normalisation: NormalisationConfig | None = None  # run.reward_normalisation shared: made from `rl:`, no section

    def to_yaml(self) -> str:
        """The resolved whole-run config; `salsa run` accepts it back.

        The `rl:` section holds what every RL run shares; what differs per run (start, anchor, seed, directory) is
        listed after it, as comments, since the run directory decides it.
        """
        sections = {
            "run": self.run, "data": self.data, "reward": self.reward, "sft": self.sft, "soup": self.soup,
        }  # fmt: skip
        text = "".join(config_to_yaml(c, name) for name, c in sections.items() if c is not None)
        first = next(iter(self.rl.values()))
        shared = {k: v for k, v in dataclasses.asdict(first).items() if k not in PER_RUN}
        shared["seed"] = self.rl_base.seed  # run s uses seed + s
        shared["kl_coef"] = self.rl_base.kl_coef  # run.kl_coefs, when set, replaces it per run
        for key in ("reward_normalisation", "normalisation_file"):  # run.reward_normalisation shared replaces them
            shared[key] = getattr(self.rl_base, key)
        text += yaml.safe_dump({"rl": shared}, sort_keys=False)
        for name, config in self.rl.items():
            runs = ", ".join(f"{k} {getattr(config, k)}" for k in PER_RUN if getattr(config, k) is not None)
            text += f"# {name}: {runs}\n"
        return text + config_to_yaml(self.eval, "eval")


def _default(cls: type, name: str) -> Any:
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def _wire(config: Any, **paths: Any) -> Any:
    """Set each path the user left at its default; a path the user chose is kept."""
    kept = {k: v for k, v in paths.items() if getattr(config, k) == _default(type(config), k)}
    return dataclasses.replace(config, **kept)


def plan_run(config_path: str | Path | None = None, overrides: list[str] | None = None) -> RunPlan:
    """Resolve every stage's config from one YAML file (sections per stage) and `--set section.key=value`."""
    overrides = list(overrides or [])
    for item in overrides:
        section = item.split("=", 1)[0].partition(".")[0]
        if "." not in item.split("=", 1)[0] or section not in STAGES:
            raise ConfigError(f"--set {item!r}: in `salsa run` every key needs its section, e.g. rl.steps=10")
    load = lambda cls, section: load_stage_config(cls, section, config_path, overrides)  # noqa: E731
    run = load(RunConfig, "run")
    validate_values(run)
    root = Path(run.output_dir)
    data = _wire(load(DataConfig, "data"), output_dir=str(root / "data"), task=run.task or "reviews")
    made = _task_files(Path(data.output_dir)) if run.task else _own_data_files()
    reward = _wire(load(RewardConfig, "reward"), **made["reward"], output_dir=str(root / "reward"))
    sft = _wire(load(SFTConfig, "sft"), **made["sft"], output_dir=str(root / "sft"))
    from salsa.sft import seeds_of  # the stages load transformers: planning a run (--dry-run) does not

    sft_dirs = [str(Path(sft.output_dir) / f"sft-{i}") for i in range(len(seeds_of(sft)))]
    if len(sft_dirs) < 2:
        raise ConfigError(f"sft: a soup needs K >= 2 models, got {len(sft_dirs)} (set sft.num_models)")
    soup = _wire(load(SoupConfig, "soup"), models=sft_dirs, output_dir=str(root / "soup"))
    rl_base = _wire(load(RLConfig, "rl"), **made["rl"])
    if not run.task:
        _require_own_data(reward, sft, rl_base, load(EvalConfig, "eval"))
    if load(DPOConfig, "dpo") != DPOConfig():
        raise ConfigError(
            "dpo: `salsa run` compares online RL arms and trains no DPO; run DPO on its own with `salsa dpo --config "
            "FILE`, which reads the dpo: section"
        )
    # RL trains on the run's reward model, unless rl.reward_model names another reward (gold, a function, ...).
    rl_reward = _wire(rl_base, reward_model=str(Path(reward.output_dir) / "model")).reward_model
    normalisation = _shared_normalisation(run, rl_base, rl_reward, sft_dirs)
    per_run = {} if normalisation is None else {
        "reward_normalisation": "fixed", "normalisation_file": str(Path(normalisation.output_dir) / NORMALISATION_FILE)
    }  # fmt: skip
    rl, policies = {}, {}
    for arm, spec in run.arms.items():
        for coef in run.kl_coefs or [rl_base.kl_coef]:
            policy = arm if run.kl_coefs is None else f"{arm}@kl{coef:g}"
            policies[policy] = []
            for s in range(run.arm_seeds.get(arm, run.seeds)):
                init, reference = (_anchor(part, sft_dirs, soup.output_dir, s) for part in spec.split(":"))
                name = f"rl/{arm}/seed-{s}" if run.kl_coefs is None else f"rl/{arm}/kl-{coef:g}/seed-{s}"
                rl[name] = dataclasses.replace(
                    rl_base, init=init[1], reference=reference[0], reference_model=reference[1],
                    reference_models=None, sft_model=sft_dirs[0], reward_model=rl_reward, kl_coef=coef,
                    output_dir=str(root / name), seed=rl_base.seed + s, **per_run,
                )  # fmt: skip
                policies[policy].append(str(root / name / "final"))
    policies["sft"] = [sft_dirs[0]]
    comparisons = _comparisons(run, list(policies)[:-1])
    evaluation = _wire(
        load(EvalConfig, "eval"), **made["eval"],
        policies=policies, comparisons=comparisons, reward_model=str(Path(reward.output_dir) / "model"),
        sft_model=sft_dirs[0], soup_model=soup.output_dir, landscape_models=sft_dirs[:2],
        output_dir=str(root / "eval"),
    )  # fmt: skip
    plan = RunPlan(run, data if run.task else None, reward, sft, soup, rl_base, rl, evaluation, normalisation)
    # Every value of every stage is checked now, not when its stage comes (an hour into the run); the inputs of
    # each stage are checked when it starts, once the stages before it have written them.
    for config in (data, reward, sft, soup, normalisation, *rl.values(), evaluation):
        if config is not None:
            validate_values(config)
    return plan


def _shared_normalisation(
    run: RunConfig, rl: RLConfig, reward_model: str | None, sft_dirs: list[str]
) -> NormalisationConfig | None:
    """With run.reward_normalisation shared, the stage that measures the reward's mean and std once for every RL
    run: as a run would measure it on its starting policy (rl.normalisation_samples, samples_per_prompt,
    max_new_tokens, temperature, seed), its samples dealt out to the K SFT models in turn."""
    if run.reward_normalisation == "per_run":
        return None
    if rl.reward_normalisation != "initial_policy":
        raise ConfigError(
            f"run.reward_normalisation is shared, one normalisation measured for every RL run, but "
            f"rl.reward_normalisation is {rl.reward_normalisation}: leave it at initial_policy, or set "
            "run.reward_normalisation per_run"
        )
    return NormalisationConfig(
        models=sft_dirs, reward_model=reward_model, task=rl.task, prompts=rl.prompts,
        samples=rl.normalisation_samples, samples_per_prompt=rl.samples_per_prompt,
        max_new_tokens=rl.max_new_tokens, temperature=rl.temperature, seed=rl.seed,
        output_dir=str(Path(run.output_dir) / "normalisation"),
    )  # fmt: skip


def _anchor(part: str, sft_dirs: list[str], soup_dir: str, seed: int) -> tuple[str, str | None]:
    """An arm's INIT or REFERENCE (sft-<i>, sft, soup, ema, none) for RL seed `seed` as (reference kind, model
    directory): sft is SFT model seed mod K, so that the seeds of an SFT arm start from every ingredient in turn and
    the arm stands for a typical ingredient, not one of them."""
    if part == "sft":
        return "sft", sft_dirs[seed % len(sft_dirs)]
    if part.startswith("sft-"):
        index = int(part.removeprefix("sft-"))
        if index >= len(sft_dirs):
            raise ConfigError(f"run.arms: {part} names SFT model {index}, but sft trains {len(sft_dirs)} models")
        return "sft", sft_dirs[index]
    return (part, soup_dir) if part == "soup" else (part, None)


def _comparisons(run: RunConfig, policies: list[str]) -> list[str]:
    """The first arm against the second (the headline) at every KL coefficient, then every policy against SFT."""
    pairs = []
    if len(run.arms) >= 2:
        first, second = list(run.arms)[:2]
        at = [""] if run.kl_coefs is None else [f"@kl{c:g}" for c in run.kl_coefs]
        pairs = [f"{first}{suffix}:{second}{suffix}" for suffix in at]
    return pairs + [f"{p}:sft" for p in policies]


def _task_files(data_dir: Path) -> dict[str, dict[str, str]]:
    """Where each stage reads what `salsa data make` writes."""
    return {
        "reward": {"data": str(data_dir / "prefs.jsonl"), "eval_data": str(data_dir / "prefs_dev.jsonl")},
        "sft": {"data": str(data_dir / "sft.jsonl")},
        "rl": {"prompts": str(data_dir / "prompts_train.jsonl")},
        "eval": {"prompts": str(data_dir / "prompts_eval.jsonl"), "ood_prompts": str(data_dir / "prompts_ood.jsonl")},
    }


def _own_data_files() -> dict[str, dict]:
    """Without a built-in task: no task data and no gold judge; the held-out sets are the user's, if any."""
    return {"reward": {"eval_data": None}, "sft": {}, "rl": {"task": None}, "eval": {"ood_prompts": None, "task": None}}


def _require_own_data(reward: RewardConfig, sft: SFTConfig, rl: RLConfig, evaluation: EvalConfig) -> None:
    needed = {"sft.data": (sft, "data"), "reward.data": (reward, "data"), "rl.prompts": (rl, "prompts"),
              "eval.prompts": (evaluation, "prompts")}  # fmt: skip
    missing = [name for name, (config, key) in needed.items() if getattr(config, key) == _default(type(config), key)]
    if missing:
        raise ConfigError(
            f"run.task is null (your own data), so set {', '.join(missing)}: files or hub:ORG/NAME[:CONFIG][:SPLIT]"
        )


def dry_run(plan: RunPlan) -> list[str]:
    """Check the whole run without training or downloading: every stage's values and every input that exists
    before the run starts (local files parsed to their rows, hub models and datasets by their names); returns one
    line per stage. An input an earlier stage writes (inside the run directory) is checked when that stage ran."""
    root = Path(plan.run.output_dir).resolve()
    stages = {"data": plan.data, "reward": plan.reward, "sft": plan.sft, "soup": plan.soup}
    stages["normalisation"] = plan.normalisation
    stages.update({**plan.rl, "eval": plan.eval})
    lines = []
    for name, config in stages.items():
        if config is None:
            continue
        check_inputs(config, made_in=root, download=True)
        model = getattr(config, "model", None) or getattr(config, "init", None) or ""
        lines.append(f"{name}: {config.output_dir}" + (f" (from {model})" if model else ""))
    return lines


def _hash(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class StageRunner:
    """Runs stages in order, skipping those already finished with the same fingerprint."""

    def __init__(self, state_file: Path):
        self.state_file = state_file
        self.state = read_json(self.state_file) if self.state_file.is_file() else {"stages": {}}
        self.fingerprints: dict[str, str] = {}

    def run(self, name: str, config: Any, work: Callable[[bool], Any], after: tuple[str, ...] = ()):
        """Run `work(overwrite)` unless stage `name` finished before with the same config and inputs.

        A stage whose config or upstream stages changed since this run directory last ran it is redone
        (`overwrite`: the stage replaces its own earlier output).
        """
        out = Path(config.output_dir)
        fingerprint = _hash(config_fingerprint(config), *(self.fingerprints[a] for a in after))
        self.fingerprints[name] = fingerprint
        recorded = self.state["stages"].get(name, {})
        if recorded.get("fingerprint") == fingerprint and is_complete(out):
            console.print(f"[green]{name}[/]: finished before, skipping ({escape(str(out))})")
            return
        changed = recorded.get("fingerprint") not in (None, fingerprint)
        if changed:
            console.print(f"[yellow]{name}[/]: its config or inputs changed; redoing it")
        console.rule(f"[bold]{name}")
        # Recorded before the work, so an interrupted stage resumes (same fingerprint) rather than restarts.
        self.state["stages"][name] = {"fingerprint": fingerprint}
        self._save()
        started = time.perf_counter()
        work(changed)
        self.state["stages"][name]["seconds"] = round(time.perf_counter() - started, 1)
        self._save()

    def _save(self) -> None:
        if runtime.is_main_process():
            atomic_write_json(self.state_file, self.state)

    @property
    def timings(self) -> dict[str, float]:
        stages = self.state["stages"].items()
        return {name: s["seconds"] for name, s in stages if name in self.fingerprints and "seconds" in s}


def _absolute(config: Any, root: Path) -> Any:
    """The config with its local paths absolute (a job may run on another node, from another directory): the
    output directory, every input that exists or that a stage will write in the run directory `root` (so that a job's
    spec is the same before the base stages ran as after: a second `salsa run --only` must not take its jobs for
    changed ones) and the evaluation's policies (RL runs that jobs will write)."""
    inside = f"{root}/"

    def resolved(value: Any, always: bool = False) -> Any:
        if isinstance(value, list):
            return [resolved(v, always) for v in value]
        if isinstance(value, dict):
            return {k: resolved(v, always) for k, v in value.items()}
        if isinstance(value, str) and (always or value.startswith(inside) or Path(value).exists()):
            return str(Path(value).resolve())
        return value

    changes = {
        f.name: resolved(getattr(config, f.name), f.name in ("output_dir", "policies"))
        for f in dataclasses.fields(config)
        if f.metadata.get("input") or f.name in ("output_dir", "policies")
    }
    return dataclasses.replace(config, **changes)


def plan_grid(plan: RunPlan) -> list[Job]:
    """The run's jobs (`salsa.grid`): the base job, then one per RL run; paths absolute."""
    root = Path(plan.run.output_dir)
    rl = {name: _absolute(config, root) for name, config in plan.rl.items()}
    return plan_jobs(rl, _absolute(plan.eval, root).policies)


def run_pipeline(
    config_path: str | Path | None = None,
    overrides: list[str] | None = None,
    show_progress: bool = True,
    executor: str = "local",
    ray_address: str | None = None,
    only: str | None = None,
    shard: str | None = None,
) -> Path | None:
    """Run (or finish) the whole pipeline; returns the report directory. With `only` or `shard`, the base stages and
    those jobs of the grid only (`salsa.grid.select`); the evaluation and the report wait for every job, so this
    returns None while some are not committed in this run directory."""
    # The stages load transformers: planning a run (--dry-run) does not.
    from salsa.evaluate import evaluate
    from salsa.report import write_report
    from salsa.reward import train_reward
    from salsa.rl.normalisation import shared_normalisation
    from salsa.sft import train_sft
    from salsa.soup import build_soup_from_config
    from salsa.task_data import make_task_data

    plan = plan_run(config_path, overrides)
    jobs = plan_grid(plan)
    selected = select(jobs, only, shard)  # before any work, like the executor: a mistake is reported at once
    runner = make_executor(executor, ray_address, plan.run.cpus_per_job)
    evaluation = _absolute(plan.eval, Path(plan.run.output_dir))
    if (only or shard) and cross_job_units(Path(plan.run.output_dir).resolve(), evaluation):
        raise ConfigError(
            "eval.sweeps merge the RL policies of several jobs, which no one job draws: run the whole grid in one run "
            "directory (without --only/--shard), or leave those sweeps out"
        )
    # The run directory is a stage of its own: salsa's, locked while a run works in it. What changes between
    # runs (seeds, arms) is handled stage by stage below.
    with Stage(plan.run, ignore=RUN_IGNORED, inputs={}) as run:
        root = run.out.resolve()
        resolved = plan.to_yaml()
        if runtime.is_main_process():
            atomic_write_text(root / "config.yaml", resolved)
        stages = StageRunner(root / STATE_FILE)
        data = ()
        if plan.data is not None:
            stages.run("data", plan.data, lambda redo: make_task_data(plan.data, show_progress, redo))
            data = ("data",)
        stages.run("reward", plan.reward, lambda redo: train_reward(plan.reward, show_progress, redo), after=data)
        stages.run(
            "sft", plan.sft, lambda redo: train_sft(plan.sft, overwrite=redo, show_progress=show_progress), after=data
        )
        stages.run("soup", plan.soup, lambda redo: build_soup_from_config(plan.soup, redo), after=("sft",))
        if plan.normalisation is not None:
            stages.run(
                "normalisation", plan.normalisation, lambda redo: shared_normalisation(plan.normalisation, redo),
                after=(*data, "reward", "sft"),
            )  # fmt: skip
        base_inputs = input_paths(evaluation)
        for job in jobs:
            if runtime.is_main_process() and write_spec(root, job, evaluation, base_inputs):
                console.print(f"[yellow]job {escape(job.id)}[/]: its config or inputs changed; redoing it")
        runtime.barrier()
        todo = [job for job in selected if committed(root, job.id) is None]
        if len(todo) < len(selected):
            console.print(f"[green]{len(selected) - len(todo)} job(s)[/] committed before; skipping them")
        failed = runner.run(root, todo, show_progress) if todo else []
        if failed:
            raise SalsaError(
                f"{len(failed)} of {len(todo)} job(s) failed (the others finished; rerun the same command to resume "
                "them): " + "; ".join(failed)
            )
        missing = [job.id for job in jobs if committed(root, job.id) is None]
        if missing:
            console.print(
                f"{len(jobs) - len(missing)} of {len(jobs)} jobs committed in {escape(str(root))}; missing: "
                f"{escape(', '.join(missing))}. Archive what is here with `salsa study archive {escape(str(root))} "
                "STUDY_DIR`; the evaluation and the report wait for every job."
            )
            return None
        for job in jobs:
            stages.fingerprints[job.id] = read_json(job_dir(root, job.id) / "job.json")["spec"]
        stages.run(
            "eval", plan.eval,
            lambda redo: evaluate(plan.eval, show_progress, redo, drawn=committed_rows(root, jobs)),
            after=tuple(job.id for job in jobs),
        )  # fmt: skip
        report_dir = root / "report"
        write_report(plan.eval.output_dir, report_dir, {"timings": stages.timings, "config": resolved})
        run.finish()
    return report_dir
