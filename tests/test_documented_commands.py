"""Every command in the ```bash blocks of README.md and docs/**/*.md runs here, so a documented command that stops
working fails the tests, and a command added to the docs without a plan below fails them too.

The commands run in document order, in this process (`salsa.cli.main`), in one sandbox directory that holds what
they read at the paths the docs use: a tiny model (models/tiny), the user's files (my_sft.jsonl, my_run.yaml,
run.yaml, my_rewards.py, ...) and the examples/. Each command runs as documented, with at most:

- appended overrides that shrink its budget or point the default model at the tiny one (`Plan.budget`);
- the arguments that `...` stands for (`Plan.dots`): those of the command it abbreviates;
- `--dry-run` (`mode="dry-run"`), or a check of its parsing and every setting and input without running it
  (`mode="check"`: what `salsa run --dry-run` checks, hub names by their form), where it needs the network, a GPU,
  several processes or hours; `Plan.why` says which.

A line that launches salsa under `torchrun` or `accelerate launch` is parsed by that launcher's own parser (its
config file loaded), and the salsa command it launches is run by its plan, in this one process.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import shutil
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest

import salsa.cli

REPO = Path(__file__).parent.parent
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def without_comment(line: str) -> str:
    """The line up to a `#` that starts a shell comment (after a space or at the start, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def bash_commands(markdown: str) -> list[str]:
    """The command lines of the ```bash blocks of a Markdown text: `\\` continuations joined, comments dropped,
    runs of spaces made one."""
    commands, in_fence, in_bash, pending = [], False, False, ""
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            in_bash = in_fence and line.strip() == "```bash"
            continue
        if not in_bash:
            continue
        line = (pending + without_comment(line)).rstrip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line.strip():
            commands.append(" ".join(line.split()))
    return commands


DOCUMENTED = [(doc.relative_to(REPO).as_posix(), c) for doc in DOCUMENTS for c in bash_commands(doc.read_text())]


@dataclass(frozen=True)
class Plan:
    """How one documented command runs here."""

    mode: str = "run"  # run: for real, on tiny models | dry-run: with --dry-run | check: parsed and checked, not run
    budget: tuple[str, ...] = ()  # appended: a smaller budget, the tiny model for the default one
    dots: str = ""  # what `...` in the command stands for
    expect: str = ""  # text its output must hold
    why: str = ""  # why it does not run for real (modes dry-run and check)


TINY = "models/tiny"


def settings(*items: str) -> tuple[str, ...]:
    """`--set ITEM` for each item."""
    return tuple(arg for item in items for arg in ("--set", item))


SFT_BUDGET = settings(f"model={TINY}", "max_steps=1", "batch_size=2", "max_length=64")
# One preference pair per prompt: a reward model's normalisation scores the distinct responses of its pairs (2 per
# prompt, not the 6 of every pair), and the WARM command does that 4 times (3 members and their average). No nucleus
# (top_p 1): its sort of the tiny model's 49k-token vocabulary was most of the command's time.
DATA_BUDGET = settings(f"model={TINY}", "samples_per_prompt=2", "max_new_tokens=4", "pairs_per_prompt=1", "top_p=1.0")
# The default MiniLM encoder, shipped offline: one step of one prompt's pairs.
REWARD_BUDGET = settings("num_epochs=0.01", "batch_size=2", "max_length=32")
# The reward's mean and std measured on 2 of the starting policy's responses, not 64.
RL_BUDGET = settings("steps=1", "prompts_per_step=2", "max_new_tokens=4", "normalisation_samples=2")
EVAL_BUDGET = settings("max_new_tokens=4", "landscape_alphas=[0.0,0.5,1.0]", "bootstrap_samples=100")
# IFEval scores all 541 prompts; the soup's health would sample its 3 ingredients and the soup on each of them too, and
# the README's `salsa eval` already runs that on the same soup (the command took 99 s with it, 28 s without, at a load
# of 10 on 2 cores).
IFEVAL_BUDGET = settings("max_new_tokens=4", "soup_health=false", "bootstrap_samples=100")
# The merges' sweeps on the in-distribution prompts only, without the soup's health: the README's `salsa eval` samples
# the same policies on the out-of-distribution prompts, and the same soup's health (6 merges and 3 policies drew 72
# OOD responses each, and the health 4 x 24 more).
MERGES_EVAL_BUDGET = (*EVAL_BUDGET, *settings("ood_prompts=null", "soup_health=false"))
README_EVAL = (
    "-p salsa=runs/rl-salsa/final -p ppo=runs/rl-ppo/final -p sft=runs/x/sft-0 --set soup_model=runs/x/soup "
    '--set sft_model=runs/x/sft-0 --set "landscape_models=[runs/x/sft-0,runs/x/sft-1]"'
)
MT_BENCH_EVAL = (
    "salsa eval -p sft=runs/x/sft-0 -p ppo=runs/rl-ppo/final --set sft_model=runs/x/sft-0 --set soup_model=runs/x/soup "
    '--set prompts=mt-bench --set ood_prompts=null --set "comparisons=[ppo:sft,ppo:references]" --judge '
    "Qwen/Qwen2.5-7B-Instruct"
)
HUB = "it names hub data or models, and nothing here reaches the network"
EIGHT = "it needs 8 processes (GPUs); the dry run checks every stage's settings and inputs"
NODES = "it needs 2 machines of 8 GPUs; the dry run checks every stage's settings and inputs"

PLANS: dict[str, Plan] = {
    # README: usage (my_run.yaml holds tiny models and budgets, and the user's own data)
    "salsa run my_run.yaml --set rl.steps=40 --seeds 3": Plan(budget=settings("rl.steps=1")),
    "salsa run my_run.yaml": Plan(expect="finished before, skipping"),
    # README: stage by stage
    "salsa sft --data my_sft.jsonl --num-models 3 --output-dir runs/x --set learning_rate=2e-5": Plan(
        budget=SFT_BUDGET
    ),
    "salsa soup runs/x/sft-0 runs/x/sft-1 runs/x/sft-2 --out runs/x/soup": Plan(),
    "salsa data make --output-dir runs/data": Plan(budget=DATA_BUDGET),
    "salsa reward --data runs/data/prefs.jsonl --eval-data runs/data/prefs_dev.jsonl --output-dir runs/reward": Plan(
        budget=REWARD_BUDGET
    ),
    "salsa rl --init runs/x/sft-0 --reference sft --reward-model runs/reward/model --output-dir runs/rl-ppo": Plan(
        budget=RL_BUDGET
    ),
    "salsa rl --init runs/x/soup --reference soup --reward-model runs/reward/model --output-dir runs/rl-salsa": Plan(
        budget=RL_BUDGET
    ),
    "salsa rl --set algorithm=rloo --set samples_per_prompt=4 --set reference=ema ...": Plan(
        dots="--init runs/x/sft-0 --reward-model runs/reward/model --output-dir runs/rl-rloo", budget=RL_BUDGET
    ),
    f"salsa eval {README_EVAL}": Plan(budget=EVAL_BUDGET),
    "salsa report runs/eval": Plan(),
    # docs/benchmarks-sets.md: IFEval by its rules; MT-Bench judged against a policy and GPT-4's reference answers
    "salsa eval -p sft=runs/x/sft-0 --set sft_model=runs/x/sft-0 --set soup_model=runs/x/soup --set prompts=ifeval "
    "--set ood_prompts=null --set samples_per_prompt=1 --output-dir runs/eval-ifeval": Plan(budget=IFEVAL_BUDGET),
    f"{MT_BENCH_EVAL} --dry-run": Plan(
        expect="ppo vs references on in_distribution (mt-bench): 30 of 80 prompts x 1 samples x 1 seed pairs = 30 pairs"
    ),
    "salsa eval -p sft=runs/x/sft-0 -p ppo=runs/rl-ppo/final --set sft_model=runs/x/sft-0 --set soup_model=runs/x/soup "
    "--set prompts=mt-bench --set ood_prompts=null --set mt_bench_turns=2 --set "
    '"comparisons=[ppo:sft,ppo:references]" --judge Qwen/Qwen2.5-7B-Instruct --dry-run': Plan(
        expect="ppo vs references on in_distribution_turn_2 (mt-bench): 30 of 80 prompts x 1 samples x 1 seed pairs "
        "= 30 pairs"
    ),
    f"{MT_BENCH_EVAL} --output-dir runs/eval-mt-bench": Plan(
        "check",
        why="its judge is a 7B hub model: the network, and a GPU to be of use; tests/test_judged_sets.py "
        "runs the same comparison end to end with a tiny judge",
    ),
    # docs/guide.md: TRL users' models and data; training; soups
    "salsa sft --data hub:trl-lib/Capybara:train --num-models 3 --output-dir runs/x": Plan("check", why=HUB),
    "salsa reward --data hub:trl-lib/ultrafeedback_binarized:train --output-dir runs/reward": Plan("check", why=HUB),
    "salsa rl --init runs/x/soup --reference soup --output-dir runs/rl-salsa --reward-model "
    "Skywork/Skywork-Reward-V2-Qwen3-0.6B --set prompts=hub:trl-lib/ultrafeedback-prompt:train": Plan("check", why=HUB),
    "salsa rl ... --reward-model my_rewards.py:brevity": Plan(
        dots="--init runs/x/soup --reference soup --output-dir runs/rl-brevity", budget=RL_BUDGET
    ),
    "salsa eval ... --judge Qwen/Qwen2.5-7B-Instruct": Plan(
        "check", dots=README_EVAL, why="its judge is a 7B hub model: the network, and a GPU to be of use"
    ),
    "salsa dpo --init runs/x/soup --reference soup --data runs/data/prefs.jsonl --output-dir runs/dpo-salsa": Plan(
        budget=settings("steps=1", "batch_size=2")
    ),
    "salsa sft --config run.yaml --set sft.use_lora=true": Plan(),
    "salsa soup runs/x/sft-0 runs/x/sft-1 -w 0.3 -w 0.7 --out runs/x/soup-37": Plan(),
    "salsa soup runs/x/sft-0 runs/x/sft-1 --alpha 1.5 --allow-extrapolation --out runs/x/beyond": Plan(),
    # docs/methods/merges.md
    "salsa soup runs/x/sft-0 runs/rl-ppo/final --method expo --expo-alpha 0.3 --out runs/x/expo": Plan(),
    "salsa soup runs/x/sft-0 runs/rl-ppo/final --method liti --eta 0.5 --out runs/x/liti": Plan(),
    "salsa soup runs/x/sft-0 runs/x/sft-1 --method slerp --t 0.5 --out runs/x/slerp": Plan(),
    "salsa eval -p sft=runs/x/sft-0 -p ppo=runs/rl-ppo/final -p salsa=runs/rl-salsa/final --set "
    "sft_model=runs/x/sft-0 --set soup_model=runs/x/soup --set prompts=runs/data/prompts_dev.jsonl --set 'sweeps={"
    "ppo-expo: {method: expo, models: [sft, ppo], values: [0.5, 1]}, ppo-liti: {method: liti, models: [sft, ppo], "
    "values: [0.25, 0.5, 0.75]}, rl-slerp: {method: slerp, models: [ppo, salsa], values: [0.5]}}' --output-dir "
    "runs/eval-merges": Plan(budget=MERGES_EVAL_BUDGET),
    "salsa report runs/eval-merges": Plan(expect="report:"),
    "salsa run examples/merges_cpu.yaml": Plan(
        "dry-run", why="it runs the demo's pipeline on the default model, then 12 merges (about 15 min on 2 cores)"
    ),
    # docs/methods/warm.md
    "salsa reward --data runs/data/prefs.jsonl --eval-data runs/data/prefs_dev.jsonl --num-models 3 --output-dir "
    "runs/reward-warm": Plan(budget=REWARD_BUDGET),
    "salsa rl --init runs/x/sft-0 --reference sft --reward-model runs/reward-warm/model --output-dir "
    "runs/rl-warm": Plan(budget=RL_BUDGET),
    # docs/methods/reference-schedules.md: enough steps for the reference to move
    "salsa rl --init runs/x/soup --reference soup --reward-model runs/reward/model --output-dir runs/rl-salsa-soft "
    "--set reference_schedule=soft --set reference_update_steps=2 --set reference_update_weight=0.5": Plan(
        budget=settings("steps=2", "prompts_per_step=2", "max_new_tokens=4", "normalisation_samples=2")
    ),
    "salsa rl --init runs/x/sft-0 --reference sft --reward-model runs/reward/model --output-dir runs/rl-hard "
    "--set reference_schedule=hard --set reference_update_steps=4 --set use_lora=true": Plan(
        budget=settings("steps=4", "prompts_per_step=2", "max_new_tokens=4", "normalisation_samples=2")
    ),
    "salsa dpo --init runs/x/sft-0 --reference sft --data runs/data/prefs.jsonl --output-dir runs/dpo-soft --set "
    "reference_schedule=soft --set reference_update_steps=2": Plan(budget=settings("steps=2", "batch_size=2")),
    # docs/results/cpu-smollm2-135m.md
    "salsa run examples/study_cpu.yaml": Plan(
        "dry-run", why="the study takes about 6 h on the default model; `salsa run my_run.yaml` runs the same stages"
    ),
    # docs/scaling.md
    "salsa run my_run.yaml --num-processes 8": Plan("dry-run", why=EIGHT),
    "torchrun --nproc_per_node 8 -m salsa.cli run my_run.yaml": Plan("dry-run", why=EIGHT),
    "accelerate launch --config_file examples/accelerate/multi_gpu.yaml -m salsa.cli run my_run.yaml": Plan(
        "dry-run", why=EIGHT
    ),
    "accelerate launch --config_file examples/accelerate/multi_node.yaml --machine_rank 0 -m salsa.cli run "
    "my_run.yaml": Plan("dry-run", why=NODES),
    "torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_endpoint HOST:29500 -m salsa.cli run my_run.yaml": (
        Plan("dry-run", why=NODES)
    ),
    "torchrun --nproc_per_node 8 -m salsa.cli sft --config my_run.yaml": Plan(
        "check", why="it needs 8 processes (GPUs), and `salsa sft` has no dry run"
    ),
    "salsa run examples/study_salsa_ppo_cpu.yaml --executor ray --ray-address auto": Plan(
        "dry-run", why="it needs a Ray cluster; tests/test_ray.py runs a grid on a two-node cluster of this machine"
    ),
}
# Lines of the bash blocks that do not run salsa.
NOT_SALSA = {
    "make demo": "installs, then runs `salsa demo` on the default model (about 15 min from a fresh clone)",
    "make test": "runs this test suite",
    "git checkout e1ca679": "the commit the study ran",
    "ray start --head --port 6379": "starts a Ray cluster's head node (tests/test_ray.py starts its own cluster)",
    "ray start --address HEAD_IP:6379": "joins a Ray cluster (tests/test_ray.py starts its own cluster)",
    'sbatch --nodes 4 --gpus-per-node 8 --wrap \'srun --nodes 1 --ntasks 1 -w "$(hostname)" ray start --head --port '
    '6379 --block & sleep 30; srun --nodes 3 --ntasks 3 --exclude "$(hostname)" ray start --address '
    '"$(hostname -i):6379" --block & sleep 30; salsa run study.yaml --executor ray --ray-address auto\'': "a Slurm "
    "allocation (no Slurm here; tests/test_ray.py runs the grid on Ray)",
    "sbatch --array 0-7 --wrap 'salsa run study.yaml --shard $SLURM_ARRAY_TASK_ID/8 --set "
    "run.output_dir=runs/study-$SLURM_ARRAY_TASK_ID'": "a Slurm array (no Slurm here; tests/test_study.py runs a grid "
    "in two shards and archives them into one study)",
    "for i in 0 1 2 3 4 5 6 7; do salsa study archive runs/study-$i docs/results/my-study; done": "archives the "
    "array's eight run directories (tests/test_study.py archives two shards into one study)",
}


# ---------------------------------------------------------------- the sandbox the commands run in


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _write_user_files(root: Path, tiny_model_dir: Path) -> None:
    """The files a reader of the docs has: a model, data, and run configs on that model with tiny budgets."""
    shutil.copytree(tiny_model_dir, root / TINY)
    shutil.copytree(REPO / "examples", root / "examples")
    subjects = ["cafe", "bakery", "museum", "park", "library", "cinema", "hotel", "market"]
    _jsonl(root / "my_sft.jsonl", [{"prompt": f"Review a {s}.", "completion": f"A lovely {s}."} for s in subjects])
    _jsonl(root / "my_prompts.jsonl", [{"prompt": f"Review a {s}."} for s in subjects[:4]])
    _jsonl(root / "my_prefs.jsonl", [{"prompt": f"Review a {s}.", "chosen": f"A lovely {s}.", "rejected": "Bad."}
                                     for s in subjects])  # fmt: skip
    (root / "my_rewards.py").write_text(
        "def brevity(prompts, responses):\n    return [-len(r) / 100 for r in responses]\n"
    )
    sft = f"model: {TINY}, data: my_sft.jsonl, max_steps: 1, batch_size: 2, max_length: 64"
    (root / "run.yaml").write_text(f"sft: {{{sft}, output_dir: runs/lora}}\n")
    (root / "my_run.yaml").write_text(  # the user's own data: no `salsa data make`; the reward model judges
        "run: {output_dir: runs/my_run, task: null, seeds: 3}\n"
        f"sft: {{{sft}}}\n"
        f"reward: {{backbone: causal, model: {TINY}, data: my_prefs.jsonl, num_epochs: 0.5, max_length: 64}}\n"
        "rl: {prompts: my_prompts.jsonl, steps: 1, prompts_per_step: 2, max_new_tokens: 4, normalisation_samples: 2}\n"
        "eval: {prompts: my_prompts.jsonl, max_new_tokens: 4, landscape_alphas: [0, 0.5, 1], bootstrap_samples: 100}\n"
    )


class Checked(Exception):
    """Raised instead of running a stage whose command was only to be checked."""


def _check_offline(config, out=None):
    """In place of the command line's own check before a stage runs: what `salsa run --dry-run` checks of a stage
    (every value; every input, local files to their rows and hub models and datasets by the form of their names),
    then stop before the stage runs."""
    from salsa.config_loading import validate_values
    from salsa.inputs import check_inputs

    validate_values(config)
    check_inputs(config, Path(out if out is not None else config.output_dir), download=True)
    raise Checked


def _never_launch(command, *args, **kwargs):
    raise AssertionError(f"a documented command launched processes: {command}")


def _launched_salsa(argv: list[str]) -> list[str]:
    """The salsa arguments of a `torchrun` or `accelerate launch` line, after its launcher's own parser read it."""
    if argv[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        args = get_args_parser().parse_args(argv[1:])
    elif argv[:2] == ["accelerate", "launch"]:
        from accelerate.commands.config.config_args import load_config_from_file
        from accelerate.commands.launch import launch_command_parser

        args = launch_command_parser().parse_args(argv[2:])
        config = load_config_from_file(args.config_file)
        assert config.distributed_type == "MULTI_GPU" and config.num_processes > 1, args.config_file
    else:
        raise AssertionError(f"not a salsa command, nor a launcher this test knows: {argv}")
    assert args.module and args.training_script == "salsa.cli", argv
    return list(args.training_script_args)


def salsa_arguments(command: str, plan: Plan) -> list[str]:
    """The arguments `salsa.cli.main` runs for a documented command under its plan."""
    argv = shlex.split(command)
    arguments = argv[1:] if argv[0] == "salsa" else _launched_salsa(argv)
    assert ("..." in arguments) == bool(plan.dots), f"{command!r}: `...` and Plan.dots go together"
    if plan.dots:
        at = arguments.index("...")
        arguments[at : at + 1] = shlex.split(plan.dots)
    return arguments + list(plan.budget) + (["--dry-run"] if plan.mode == "dry-run" else [])


class Sandbox:
    """A directory of the user's files where the documented commands run in order, each once."""

    def __init__(self, root: Path):
        self.root = root
        self.outcomes: list[tuple[int, str]] = []  # (exit code, output) of DOCUMENTED[i] for i < len(outcomes)

    def outcome(self, index: int) -> tuple[int, str]:
        """The exit code and output of documented command `index`, after every command before it has run (later
        commands read what earlier ones wrote, as a reader following the docs would)."""
        while len(self.outcomes) <= index:
            self.outcomes.append(self._run(DOCUMENTED[len(self.outcomes)][1]))
        return self.outcomes[index]

    def _run(self, command: str) -> tuple[int, str]:
        if command in NOT_SALSA or command not in PLANS:
            return 0, ""  # not salsa's; or without a plan, which test_every_documented_command_has_a_plan reports
        plan = PLANS[command]
        try:
            argv = ["salsa", *salsa_arguments(command, plan)]
        except Exception:  # the launcher's own parser, or its config file, refused the line
            return 1, traceback.format_exc()
        output = io.StringIO()
        checks = mock.patch.object(salsa.cli, "_checked", _check_offline) if plan.mode == "check" else None
        with (
            contextlib.chdir(self.root),
            contextlib.redirect_stdout(output),
            contextlib.redirect_stderr(output),
            mock.patch.object(salsa.cli, "subprocess", SimpleNamespace(run=_never_launch)),
            checks or contextlib.nullcontext(),
            mock.patch.object(sys, "argv", argv),
        ):
            try:
                salsa.cli.main()
                code = 0
            except SystemExit as e:
                code = e.code
            except Checked:
                code = 0
            except Exception:  # a bug, not a user mistake: its traceback goes into the failure's report
                output.write(traceback.format_exc())
                code = 1
        return code, output.getvalue()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, tiny_model_dir):
    import torch

    root = tmp_path_factory.mktemp("documented")
    _write_user_files(root, tiny_model_dir)
    # One thread: a tiny model's ops are too small to share out, and on busy shared cores a second thread mostly
    # waits (the `salsa run` command took 84 s with two threads, 22 s with one).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Sandbox(root)
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- the tests


def test_every_documented_command_has_a_plan():
    documented = {command for _, command in DOCUMENTED}
    unknown = sorted(documented - set(PLANS) - set(NOT_SALSA))
    assert not unknown, f"documented commands without a plan: add them to PLANS in {Path(__file__).name}: {unknown}"
    stale = sorted((set(PLANS) | set(NOT_SALSA)) - documented)
    assert not stale, f"planned commands that no document holds any more: {stale}"
    unexplained = [c for c, plan in PLANS.items() if plan.mode != "run" and not plan.why]
    assert not unexplained, f"say why these do not run for real: {unexplained}"


@pytest.mark.parametrize(
    "index",
    [i for i, (_, command) in enumerate(DOCUMENTED) if command not in NOT_SALSA],
    ids=[f"{doc}: {command[:70]}" for doc, command in DOCUMENTED if command not in NOT_SALSA],
)
def test_a_documented_command_runs(index, sandbox):
    doc, command = DOCUMENTED[index]
    if command not in PLANS:
        pytest.fail(f"{doc}: no plan for {command!r}; add one to PLANS")
    code, output = sandbox.outcome(index)
    assert code == 0, f"{doc}: `{command}` exited with {code}:\n{output[-3000:]}"
    assert PLANS[command].expect in output, f"{doc}: `{command}` did not say {PLANS[command].expect!r}:\n{output}"


def test_commands_are_read_from_the_bash_blocks_only():
    markdown = (
        "Run `salsa sft` inline.\n```bash\n# a comment\nsalsa eval -p a=x \\\n  --set 'x=#1'   # why\n\n"
        "make demo\n```\n```python\nsalsa = 1\n```\n```\nsalsa soup a b\n```\n"
    )
    assert bash_commands(markdown) == ["salsa eval -p a=x --set 'x=#1'", "make demo"]
