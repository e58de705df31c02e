"""The `salsa` command line: one command per stage, each a thin layer over the Python API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from salsa.config import (
    DataConfig,
    DPOConfig,
    EvalConfig,
    ReportConfig,
    RewardConfig,
    RLConfig,
    RunConfig,
    SFTConfig,
    SoupConfig,
)
from salsa.config_loading import describe_fields, load_stage_config
from salsa.errors import SalsaError, os_error_message

# Commands import their stage (and inputs, runtime, transformers) inside them: `salsa --help` answers without
# loading torch or the hub client, and a mistake in a config without loading torch.
app = typer.Typer(
    help="salsa: soup-referenced RLHF. Fine-tune K models, average them into a soup, and use the soup as the "
    "KL reference for RL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Click's plain help for every command: at 80 columns Rich's option table shrinks its columns below the longest
    # option name and cuts it (`--allow-extrapolat…`); Click's list puts a long name on its own line instead.
    rich_markup_mode=None,
)
err = Console(stderr=True)
data_app = typer.Typer(help="Datasets of the built-in tasks: `salsa data make`.", no_args_is_help=True)
app.add_typer(data_app, name="data")
study_app = typer.Typer(
    help="A results doc whose every number regenerates from committed data: `salsa study archive`, `render`.",
    no_args_is_help=True,
)
app.add_typer(study_app, name="study")
job_app = typer.Typer(help="One job of a study's grid: `salsa job run RUN_DIR JOB_ID`.", no_args_is_help=True)
app.add_typer(job_app, name="job")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML file: this stage's keys, or a whole-run config with one section per stage."
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a config key, e.g. --set learning_rate=1e-5 or --set sft.learning_rate=1e-5 (repeatable).",
    ),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
# The policy's start and its KL reference: `salsa rl` and `salsa dpo` alike.
InitOption = Annotated[str | None, typer.Option(help="Policy start: an SFT model or a soup directory.")]
ReferenceOption = Annotated[str | None, typer.Option(help="KL anchor: sft, soup, ema or none.")]
ReferenceModelOption = Annotated[str | None, typer.Option(help="Reference directory (default: init).")]
OverwriteOption = Annotated[
    bool,
    typer.Option(help="Start over in an output directory that salsa wrote with another config (never a foreign one)."),
]


def _keys_epilog(cls: type) -> str:
    return "Config keys (YAML or --set):\n\n" + "\n\n".join(describe_fields(cls).splitlines())


def _overrides(set_: list[str] | None, **explicit) -> list[str]:
    """`--set` strings followed by the explicit options, which win over both file and --set."""
    return list(set_ or []) + [f"{k}={v}" for k, v in explicit.items() if v is not None]


def _quiet_libraries() -> None:
    # Our own bars report progress; the libraries' per-file loading bars would only add noise.
    import logging
    import warnings

    import transformers

    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    # Accelerate warns that tied embeddings are saved once, which is what we want; PEFT still calls a
    # transformers method that transformers 5 deprecates.
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def _fail(message: str, code: int = 2) -> None:
    # The message is user text (paths, values): printed as is, never read as rich markup.
    err.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    sys.exit(code)


def _checked(config, out: str | Path | None = None):
    """The config, after every check of its values and inputs: before torch and the stage's module load, so a
    mistake is reported at once (the stage itself reuses this check)."""
    from salsa.inputs import validate

    validate(config, Path(out if out is not None else config.output_dir))
    return config


def _echo(result) -> None:
    """Print a stage's output path(s) once, from the main process of a multi-process launch."""
    from salsa.runtime import is_main_process

    if is_main_process():
        for path in result if isinstance(result, list) else [result]:
            typer.echo(str(path))


@app.command(epilog=_keys_epilog(SFTConfig))
def sft(
    config: ConfigOption = None,
    set_: SetOption = None,
    model: Annotated[str | None, typer.Option(help="Base model: hub id, local dir, .gguf, or smollm2-135m.")] = None,
    data: Annotated[
        str | None, typer.Option(help="SFT data: JSONL, Parquet, datasets dir/id, builtin:reviews.")
    ] = None,
    output_dir: Annotated[str | None, typer.Option(help="Where sft-0, sft-1, ... are written.")] = None,
    num_models: Annotated[int | None, typer.Option("--num-models", "-k", help="K: models to train.")] = None,
    seed: Annotated[int | None, typer.Option(help="First seed; model i uses seed + i.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps per model.")] = None,
    lora: Annotated[bool | None, typer.Option("--lora/--full", help="LoRA adapters or full fine-tuning.")] = None,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Fine-tune K models from one base that differ only in seed (the soup's ingredients)."""
    overrides = _overrides(
        set_,
        model=model,
        data=data,
        output_dir=output_dir,
        num_models=num_models,
        seed=seed,
        max_steps=max_steps,
        use_lora=lora,
    )
    cfg = _checked(load_stage_config(SFTConfig, "sft", config, overrides))
    from salsa.sft import train_sft

    _quiet_libraries()
    _echo(train_sft(cfg, overwrite=overwrite, show_progress=not quiet))


@app.command(epilog=_keys_epilog(SoupConfig))
def soup(
    models: Annotated[list[str] | None, typer.Argument(help="Ingredient model directories (K >= 2).")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Output model directory.")] = None,
    weights: Annotated[
        list[float] | None, typer.Option("--weights", "-w", help="One weight per model (repeat); default uniform.")
    ] = None,
    alpha: Annotated[float | None, typer.Option(help="Two models: (1 - alpha) * A + alpha * B.")] = None,
    allow_extrapolation: Annotated[
        bool, typer.Option("--allow-extrapolation", help="Allow negative weights and alpha outside [0, 1].")
    ] = False,
    dtype: Annotated[str | None, typer.Option(help="Output dtype: float32, bfloat16 or float16.")] = None,
    max_shard_size: Annotated[str | None, typer.Option(help="Largest output shard, e.g. 2GB.")] = None,
    method: Annotated[str | None, typer.Option(help="linear (default), slerp, expo or liti.")] = None,
    t: Annotated[float | None, typer.Option(help="slerp: position on the arc from A (0) to B (1).")] = None,
    expo_alpha: Annotated[float | None, typer.Option(help="expo: B + expo_alpha * (B - A).")] = None,
    eta: Annotated[float | None, typer.Option(help="liti: (1 - eta) * A + eta * B.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Average K fine-tuned models into one, or merge two by slerp, ExPO or LITI (streamed, exact, checked); write
    provenance next to it."""
    overrides = _overrides(
        set_, output_dir=out, alpha=alpha, dtype=dtype, max_shard_size=max_shard_size, method=method, t=t,
        expo_alpha=expo_alpha, eta=eta,
    )  # fmt: skip
    if models:
        overrides.append("models=" + ",".join(models))
    if weights:
        overrides.append("weights=" + ",".join(str(w) for w in weights))
    if allow_extrapolation:
        overrides.append("allow_extrapolation=true")
    cfg = _checked(load_stage_config(SoupConfig, "soup", config, overrides))
    from salsa.soup import build_soup_from_config

    _echo(build_soup_from_config(cfg, overwrite))


@data_app.command("make", epilog=_keys_epilog(DataConfig))
def data_make(
    task: Annotated[str | None, typer.Option(help="Built-in task (reviews).")] = None,
    output_dir: Annotated[str | None, typer.Option(help="Where the JSONL files and datasheet.md go.")] = None,
    model: Annotated[str | None, typer.Option(help="Model whose samples become demonstrations and pairs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of sampling and labelling.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Make prompts (train/eval/ood), best-of-n SFT demonstrations and Bradley-Terry preference pairs."""
    overrides = _overrides(set_, task=task, output_dir=output_dir, model=model, seed=seed)
    cfg = _checked(load_stage_config(DataConfig, "data", config, overrides))
    from salsa.task_data import make_task_data

    _quiet_libraries()
    _echo(make_task_data(cfg, show_progress=not quiet, overwrite=overwrite))


@app.command(epilog=_keys_epilog(RewardConfig))
def reward(
    data: Annotated[str | None, typer.Option(help="Training pairs: prompt/chosen/rejected.")] = None,
    eval_data: Annotated[str | None, typer.Option(help="Held-out pairs (gold_* fields give gold accuracy).")] = None,
    backbone: Annotated[str | None, typer.Option(help="encoder (MiniLM) or causal (LM + scalar head).")] = None,
    model: Annotated[str | None, typer.Option(help="Backbone weights (default per backbone).")] = None,
    output_dir: Annotated[str | None, typer.Option(help="Where the reward model goes.")] = None,
    num_models: Annotated[
        int | None, typer.Option("--num-models", "-k", help="K > 1: average K reward models from one start (WARM).")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Train a Bradley-Terry reward model (or K averaged ones, WARM) and report held-out accuracy and Spearman vs the
    gold judge."""
    overrides = _overrides(
        set_, data=data, eval_data=eval_data, backbone=backbone, model=model, output_dir=output_dir,
        num_models=num_models,
    )  # fmt: skip
    cfg = _checked(load_stage_config(RewardConfig, "reward", config, overrides))
    from salsa.reward import train_reward

    _quiet_libraries()
    _echo(train_reward(cfg, show_progress=not quiet, overwrite=overwrite))


@app.command(epilog=_keys_epilog(RLConfig))
def rl(
    algorithm: Annotated[str | None, typer.Option(help="ppo, rloo or grpo (DPO: `salsa dpo`).")] = None,
    init: InitOption = None,
    reference: ReferenceOption = None,
    reference_model: ReferenceModelOption = None,
    reward_model: Annotated[
        str | None,
        typer.Option(
            help="A `salsa reward` dir, a one-label sequence classifier (dir or hub id), or a function "
            "module:function / file.py:function."
        ),
    ] = None,
    output_dir: Annotated[str | None, typer.Option(help="Run directory.")] = None,
    steps: Annotated[int | None, typer.Option(help="RL iterations.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Online RL from the reward model with a choice of KL reference: PPO (default), RLOO or GRPO."""
    overrides = _overrides(
        set_, algorithm=algorithm, init=init, reference=reference, reference_model=reference_model,
        reward_model=reward_model, output_dir=output_dir, steps=steps,
    )  # fmt: skip
    cfg = _checked(load_stage_config(RLConfig, "rl", config, overrides))
    from salsa.rl.ppo import train_rl

    _quiet_libraries()
    _echo(train_rl(cfg, show_progress=not quiet, overwrite=overwrite))


app.command("ppo", help="Alias of `salsa rl` (PPO is its default algorithm).", epilog=_keys_epilog(RLConfig))(rl)


@app.command(epilog=_keys_epilog(DPOConfig))
def dpo(
    config: ConfigOption = None,
    set_: SetOption = None,
    init: InitOption = None,
    reference: ReferenceOption = None,
    reference_model: ReferenceModelOption = None,
    data: Annotated[str | None, typer.Option(help="Preference pairs: prompt/chosen/rejected.")] = None,
    output_dir: Annotated[str | None, typer.Option(help="Where checkpoints/, metrics.jsonl and final/ go.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Offline DPO on preference pairs with a choice of KL reference (sft, soup, ema, none) and schedule."""
    overrides = _overrides(
        set_, init=init, reference=reference, reference_model=reference_model, data=data, output_dir=output_dir,
        steps=steps,
    )  # fmt: skip
    cfg = _checked(load_stage_config(DPOConfig, "dpo", config, overrides))
    from salsa.rl.dpo import train_dpo

    _quiet_libraries()
    _echo(train_dpo(cfg, show_progress=not quiet, overwrite=overwrite))


@app.command("eval", epilog=_keys_epilog(EvalConfig))
def eval_(
    policy: Annotated[
        list[str] | None,
        typer.Option("--policy", "-p", help="NAME=MODEL_DIR (repeat; repeat a name for several seeds)."),
    ] = None,
    judge: Annotated[
        str | None,
        typer.Option(help="LLM judge model (hub id, dir, .gguf): pairwise verdicts, each pair in both orders."),
    ] = None,
    judge_template: Annotated[
        str | None, typer.Option(help="Judge prompt file with {prompt}, {response_a}, {response_b}.")
    ] = None,
    output_dir: Annotated[str | None, typer.Option(help="Where results.json and samples.jsonl go.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Check the config and every input, and say what the LLM judge would be asked; load no "
            "model, download nothing.",
        ),
    ] = False,
) -> None:
    """Compare policies on held-out prompts: win rates with bootstrap CIs, KL to SFT and soup, reward landscape."""
    overrides = _overrides(set_, output_dir=output_dir, judge=judge, judge_template=judge_template)
    if policy:
        policies: dict[str, list[str]] = {}
        for item in policy:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise SalsaError(f"--policy {item!r}: expected NAME=MODEL_DIR, e.g. --policy ppo=runs/rl-ppo/final")
            policies.setdefault(name, []).append(path)
        overrides.append("policies=" + json.dumps(policies))
    if dry_run:
        from salsa.evaluate import dry_run as check_eval

        for line in check_eval(load_stage_config(EvalConfig, "eval", config, overrides)):
            typer.echo(line)
        typer.echo("the config and every input are valid; nothing was downloaded, sampled or judged")
        return
    cfg = _checked(load_stage_config(EvalConfig, "eval", config, overrides))
    from salsa.evaluate import evaluate

    _quiet_libraries()
    _echo(evaluate(cfg, show_progress=not quiet, overwrite=overwrite))


@app.command()
def report(
    eval_dir: Annotated[Path, typer.Argument(help="An eval directory (holds results.json).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Report directory; default: next to eval_dir.")
    ] = None,
) -> None:
    """Write report.md, report.html, PNG plots and summary.json from an evaluation."""
    _checked(ReportConfig(str(eval_dir), None if out is None else str(out)), out or eval_dir.parent / "report")
    from salsa.report import print_summary, write_report

    path = write_report(eval_dir, out)
    print_summary(path)


@app.command(epilog=_keys_epilog(RunConfig))
def run(
    config: Annotated[Path | None, typer.Argument(help="Whole-run YAML: sections run, data, sft, soup, ...")] = None,
    set_: SetOption = None,
    seeds: Annotated[int | None, typer.Option(help="RL seeds per method; results aggregate over them.")] = None,
    output_dir: Annotated[str | None, typer.Option(help="Run directory.")] = None,
    num_processes: Annotated[
        int, typer.Option(help="Processes on this machine (one per GPU): relaunches under torchrun.")
    ] = 1,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check the whole config and every input; download and train nothing.")
    ] = False,
    executor: Annotated[
        str, typer.Option(help="Where the grid's jobs run: local (one after another) or ray.")
    ] = "local",
    ray_address: Annotated[
        str | None, typer.Option(help="--executor ray: the cluster, HOST:PORT or auto; default: a local Ray instance.")
    ] = None,
    only: Annotated[
        str | None, typer.Option(help="Run these jobs only: base, ARM/seed-S or ARM/kl-X/seed-S, comma-separated.")
    ] = None,
    shard: Annotated[
        str | None, typer.Option(help="Run shard i of n (i/n, i from 0): job k is in shard k mod n.")
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """The whole pipeline: data, K SFT models, soup, reward model, PPO and SALSA, eval, report.

    Finished stages are skipped on a rerun; an interrupted stage resumes from its checkpoints. Every RL run with
    its evaluation samples is a job (`salsa job run`), run here one after another or on a Ray cluster
    (--executor ray); --only and --shard run part of the grid, for `salsa study archive` to merge. Under
    `torchrun` / `accelerate launch` (or with --num-processes) every stage runs data parallel.
    """
    if num_processes < 1:
        raise SalsaError(f"--num-processes must be >= 1, got {num_processes}")
    # Not yet launched: launch ourselves under torchrun. A dry run checks in this process: it has nothing to share out.
    if num_processes > 1 and not dry_run and "WORLD_SIZE" not in os.environ:
        args, skip = [], False
        for arg in sys.argv[1:]:
            if not skip and not arg.startswith("--num-processes"):
                args.append(arg)
            skip = arg == "--num-processes"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}"]
        sys.exit(subprocess.run([*command, "-m", "salsa.cli", *args]).returncode)
    overrides = list(set_ or [])
    overrides += [f"run.{k}={v}" for k, v in (("seeds", seeds), ("output_dir", output_dir)) if v is not None]
    from salsa.pipeline import dry_run as check_run
    from salsa.pipeline import plan_run, run_pipeline

    if dry_run:
        for line in check_run(plan_run(config, overrides)):
            typer.echo(line)
        typer.echo("the config and every input are valid; nothing was downloaded or trained")
        return
    from salsa.executors import make_executor

    make_executor(executor, ray_address, 1)  # a missing Ray extra: one line, before transformers loads (seconds)
    from salsa.report import print_summary

    _quiet_libraries()
    report_dir = run_pipeline(config, overrides, not quiet, executor, ray_address, only, shard)
    if report_dir is not None:
        print_summary(report_dir)


@job_app.command("run")
def job_run(
    run_dir: Annotated[Path, typer.Argument(help="A run directory whose grid `salsa run` planned.")],
    job_id: Annotated[str, typer.Argument(help="The job: base, ARM/seed-S or ARM/kl-X/seed-S.")],
    quiet: QuietOption = False,
) -> None:
    """Run one job of a study's grid to its commit (a committed job returns at once; an interrupted one resumes)."""
    from salsa.grid import run_job

    _quiet_libraries()
    record = run_job(run_dir, job_id, show_progress=not quiet)
    typer.echo(json.dumps({"job": record["job"], "attempt": record["attempt"], "outputs": record["outputs"]}))


@app.command()
def demo(
    output_dir: Annotated[str, typer.Option(help="Run directory of the demo.")] = "runs/demo",
    quiet: QuietOption = False,
) -> None:
    """`salsa run` on a quick preset: the default model (SmolLM2-135M-Instruct) and the built-in task, offline."""
    from salsa.demo import run_demo

    _quiet_libraries()
    run_demo(output_dir, show_progress=not quiet)


@study_app.command("archive")
def study_archive(
    run_dir: Annotated[Path, typer.Argument(help="A finished `salsa run` directory.")],
    study_dir: Annotated[Path, typer.Argument(help="The study folder (its data/ is written).")],
    accept_rebuilt_base: Annotated[
        bool,
        typer.Option(
            "--accept-rebuilt-base",
            help="Add jobs whose base (data, reward model, SFT models, soup) was built again and differs from the "
            "archive's (float rounding on another CPU, say); the doc says on how many builds its jobs ran.",
        ),
    ] = False,
    extend: Annotated[
        bool,
        typer.Option(
            "--extend",
            help="Add seeds to the study: a run whose configs differ from the archive's only in a larger run.seeds; "
            "the doc then reports the pre-registered result beside the extended one.",
        ),
    ] = False,
) -> None:
    """Add a run's committed jobs (samples, metrics, records) to STUDY_DIR/data, compressed; other jobs are kept."""
    from salsa.study import archive

    for path in archive(run_dir, study_dir, accept_rebuilt_base, extend):
        typer.echo(str(path))


@study_app.command("render")
def study_render(
    study_dir: Annotated[Path, typer.Argument(help="A study folder: study.json, template.md, data/.")],
) -> None:
    """Recompute every number of a study from its data, draw its figures and write its doc."""
    from salsa.study import render

    _quiet_libraries()
    typer.echo(str(render(study_dir)))


def main() -> None:
    """Entry point: user mistakes become one red line and exit code 2, never a traceback."""
    try:
        app(standalone_mode=False)
    except SalsaError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume from the last checkpoint", code=130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # a usage mistake: unknown option, missing argument, a value of the wrong type
        if type(e).__name__ == "NoArgsIsHelpError":  # `salsa` or `salsa data` alone: the help, on stdout as --help
            e.show(sys.stdout)
            sys.exit(e.exit_code)
        command = " ".join(a for a in sys.argv[1:3] if not a.startswith("-"))
        _fail(f"{e.format_message()} (see `salsa {command} --help`)".replace("  ", " "))
    except typer.Abort:
        _fail("aborted", code=130)
    except OSError as e:
        message = os_error_message(e)
        if message is None:
            raise
        _fail(message)


if __name__ == "__main__":
    main()
