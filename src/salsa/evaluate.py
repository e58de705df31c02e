"""`salsa eval`: do the policies differ, and by how much? Win rates with intervals, KL, the reward landscape.

1. samples: every policy answers the same held-out prompts (in-distribution and out-of-distribution) with
   the same sampling settings and seeds (common random numbers, so differences come from the weights);
2. judges: the gold judge of the task and the reward model score every response; an LLM judge, if given,
   compares the paired responses of every compared pair of policies (both orders; `evaluation/llm_judge.py`);
3. win / tie / loss of policy A against B, prompt by prompt, with 95% bootstrap intervals. With several
   RL seeds the outcomes form a [seeds x prompts] matrix and the bootstrap resamples both axes, so the
   interval covers seed-to-seed variation too;
4. KL of each policy to the SFT model and to the soup on its own samples (k1 summed over the response);
5. the reward landscape: gold and reward-model score of (1 - alpha) * SFT-1 + alpha * SFT-2;
6. the frontier: reward against KL-to-SFT along training (from the RL runs' metrics.jsonl), and two RL runs
   compared at matched KL: the policies they saved along the way (snapshots) answer the in-distribution prompts
   too, and each pair is compared at the largest KL to SFT, measured on those prompts, that both reached;
7. merge sweeps (`sweeps`): ExPO, LITI and SLERP merges of the policies at several values, each built in memory
   and evaluated as a policy is, for the report's plot of score against KL to SFT.

The sampling is cut into units (one policy model, one snapshot, one merge, the landscape, the soup's health), each
of which depends only on its models, the prompts and the seeds: a study draws them in separate jobs
(`salsa.grid`) and `evaluate(config, drawn=rows)` draws only the units the rows do not hold yet. Within one process
a model directory that several units read (the SFT policy, the landscape's endpoints and soup, the soup's health)
answers each split once, and each of its KLs is computed once (`Sampler.answers`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from salsa import runtime
from salsa.config import REFERENCES, EvalConfig
from salsa.config_loading import validate_values
from salsa.engine import Stage, run_stage
from salsa.evaluation.examples import paired_examples
from salsa.evaluation.ifeval import METRICS as IFEVAL_METRICS
from salsa.evaluation.judging import (
    Answers,
    Judges,
    Prompts,
    PromptStates,
    comparison_pairs,
    draw_answers,
    frozen,
    kl_to,
    prompt_sources,
    sample_and_score,
    second_turn_prompts,
    second_turn_splits,
    turn_of,
)
from salsa.evaluation.landscape import sample_point
from salsa.evaluation.llm_judge import LLMJudge, judging_plan, judgment_rows, reference_samples
from salsa.evaluation.matched import matched_kl_rows
from salsa.evaluation.soup_health import ingredients_of, member_names, summarise_soup_health
from salsa.evaluation.summary import summarise
from salsa.evaluation.sweeps import summarise_sweeps
from salsa.evaluation.text_stats import text_statistics
from salsa.generation import check_prompt_lengths
from salsa.inputs import check_inputs
from salsa.io import SOUP_RECORD, atomic_write_json, atomic_write_text, read_json
from salsa.judge_prompt import DEFAULT_TEMPLATE
from salsa.models import load_tokenizer
from salsa.progress import training_progress
from salsa.snapshots import list_snapshots, load_snapshot
from salsa.standard_sets import SETS, load_set, reference_info
from salsa.tasks import current_gold_version
from salsa.weights.in_memory import soup_model

LANDSCAPE_KEYS = ("index", "sample", "prompt", "response", "length", "gold", "reward")


@dataclass(frozen=True)
class Unit:
    """One piece of an evaluation's sampling: a policy model, a snapshot of an RL run, one merge of a sweep (for
    one seed), the landscape, or the soup's health. Its rows depend only on its `models`, the prompts and the
    seeds, so it may be drawn in any process and the rows pooled."""

    kind: str  # policy | snapshot | sweep | landscape | health
    policy: str = ""
    seed_index: int = 0
    step: int = 0  # a snapshot's step
    models: tuple[str, ...] = ()  # the model directories it reads besides the KL references
    parameters: tuple[tuple[str, float | str], ...] = ()  # a sweep point's merge

    @property
    def key(self) -> tuple:
        return (self.kind, self.policy, self.seed_index, self.step)

    def responses(self, config: EvalConfig, splits: dict[str, int]) -> int:
        """How many responses it draws (its first round, for the landscape), for the progress bar."""
        per_prompt, in_dist = config.samples_per_prompt, splits["in_distribution"]
        if self.kind in ("policy", "sweep"):
            return per_prompt * sum(splits.values())
        if self.kind == "landscape":
            return per_prompt * in_dist * len(config.landscape_alphas)
        return per_prompt * in_dist * (len(self.models) if self.kind == "health" else 1)


def unit_key(row: dict) -> tuple:
    """The key of the unit a sample row was drawn in."""
    if "alpha" in row:
        return ("landscape", "", 0, 0)
    if "member" in row:
        return ("health", "", 0, 0)
    if "snapshot" in row:
        return ("snapshot", row["policy"], row["seed_index"], row["snapshot"])
    return ("sweep" if "sweep" in row else "policy", row["policy"], row["seed_index"], 0)


def plan_units(config: EvalConfig) -> list[Unit]:
    """Every unit of the evaluation, in the order its rows are written: the policies, their snapshots (with
    `matched_kl`; those their runs saved), the sweeps' merges, the landscape, the soup's health."""
    units = [Unit("policy", name, s, models=(path,)) for name, paths in config.policies.items()
             for s, path in enumerate(paths)]  # fmt: skip
    if config.matched_kl:
        units += [Unit("snapshot", u.policy, u.seed_index, step, u.models)
                  for u in list(units) for step in list_snapshots(Path(u.models[0]).parent)]  # fmt: skip
    for point in config.sweep_points():
        parameters = tuple(point.parameters.items())
        units += [Unit("sweep", point.name, s, models=tuple(pair), parameters=parameters)
                  for s, pair in enumerate(point.models)]  # fmt: skip
    if config.landscape_models:
        units.append(Unit("landscape", models=tuple(config.landscape_models)))
    ingredients = ingredients_of(config.soup_model) if config.soup_health and config.soup_model else None
    if ingredients:
        units.append(Unit("health", models=(*ingredients, config.soup_model)))
    return units


@dataclass
class Sampler:
    """What every unit of one evaluation shares: the prompts of each split, the judges, the KL references (the SFT
    model and the soup, loaded once), the tokenizer, the progress bar, and the answers of every model directory
    drawn so far with their KLs: units that read the same model (the SFT policy, the landscape's endpoints, the
    soup's health) draw its answers once."""

    config: EvalConfig
    splits: dict[str, list]  # the prompts of each split (MT-Bench: its first turns)
    second_turns: dict[str, str]  # each split whose MT-Bench second turns are sampled too -> their split
    judges: dict[str, Judges]  # each split's (a standard set has its own)
    kl_references: dict[str, torch.nn.Module]
    kl_paths: dict[str, str]  # the KL references' model directories, by the same names
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    advance: Callable[[int], None] = lambda n: None
    describe: Callable[[str], None] = lambda text: None
    loaded: dict[Path, torch.nn.Module] = field(default_factory=dict)
    answered: dict[tuple[Path, str], Answers] = field(default_factory=dict)  # (model directory, split)
    kls: dict[tuple[Path, str, Path], list[float]] = field(default_factory=dict)  # (model, split, reference)
    prompt_states: PromptStates = field(default_factory=PromptStates)  # the references' reading of the prompts

    @property
    def samples(self) -> range:
        return range(self.config.samples_per_prompt)

    def model(self, path: str) -> torch.nn.Module:
        """A model to sample from: a KL reference already loaded (KL 0 to itself), else loaded now."""
        return self.loaded.get(Path(path).resolve()) or frozen(path, self.device, self.dtype)

    def scored(
        self,
        model: torch.nn.Module,
        split: str,
        prompts: Prompts | None = None,
        references: dict[str, torch.nn.Module] | None = None,
    ) -> list[dict]:
        """The answers of a model built in memory (a snapshot, a merge) to `prompts` (default: the split's): drawn
        each time, with their KL to `references` (default: the KL references, on the in-distribution prompts)."""
        if references is None:
            references = self.kl_references if split == "in_distribution" else {}
        prompts = self._prompts(model, split, prompts)
        return sample_and_score(
            model, self.tokenizer, prompts, split, self.config, self.judges[split], references, self.advance,
            self.samples, self.prompt_states,
        )  # fmt: skip

    def _prompts(self, model: torch.nn.Module, split: str, prompts: Prompts | None) -> Prompts:
        """The prompts a model answers: `prompts`, or the split's when None. MT-Bench's second turns are checked here
        to leave room to answer: each holds a first answer, so they were not checked with the split's prompts."""
        if prompts is None:
            return self.splits[split]
        if isinstance(prompts, dict):
            where = f"eval ({split}: MT-Bench's second turns, each holding a first answer)"
            check_prompt_lengths(self.tokenizer, list(prompts.values()), self.config.max_new_tokens, model, where)
        return prompts

    def answers(
        self,
        path: str,
        split: str,
        references: dict[str, str],
        models: dict[Path, torch.nn.Module] | None = None,
        prompts: Prompts | None = None,
    ) -> list[dict]:
        """The answers of the model directory `path` to `split` (to `prompts`, default the split's: a second turn's
        hold the model's own first answers, so they are the same whenever this model is asked), with their KL to each
        of `references` (name -> model directory; 0 to itself) as `kl_<name>`: drawn once per model and split, each
        KL computed once, however many units ask. `models`: the models the caller loaded (by resolved directory),
        which this adds to."""
        models = {} if models is None else models

        def load(directory: Path) -> torch.nn.Module:
            if directory not in models:
                models[directory] = self.model(str(directory))
            return models[directory]

        key = Path(path).resolve()
        answers = self.answered.get((key, split))
        if answers is None:
            model = load(key)
            answers = draw_answers(
                model, self.tokenizer, self._prompts(model, split, prompts), split, self.config, self.judges[split],
                self.advance, self.samples,
            )  # fmt: skip
            self.answered[(key, split)] = answers
        else:
            self.advance(len(answers.rows))
        kls = {}
        for name, reference in references.items():
            ref = Path(reference).resolve()
            if ref == key:
                kls[name] = [0.0] * len(answers.rows)
                continue
            if (key, split, ref) not in self.kls:
                self.kls[(key, split, ref)] = kl_to(answers, load(ref), self.config, self.prompt_states)
            kls[name] = self.kls[(key, split, ref)]
        return [{**row, **{f"kl_{n}": values[j] for n, values in kls.items()}} for j, row in enumerate(answers.rows)]

    def reference_paths(self, split: str) -> dict[str, str]:
        """The KL references of a policy's answers to `split`: the SFT model and the soup, in-distribution only."""
        return self.kl_paths if split == "in_distribution" else {}


def open_sampler(config: EvalConfig, inputs: dict, first_model: str) -> Sampler:
    """Load the judges, the KL references and the tokenizer (of `first_model`, the first model to sample from), and
    check that the prompts leave room to answer."""
    splits = {"in_distribution": inputs["prompts"]}
    if config.ood_prompts:
        splits["out_of_distribution"] = inputs["ood_prompts"]
    device = runtime.accelerator().device
    dtype = runtime.forward_dtype(config.mixed_precision)
    judges = Judges(config.task, config.reward_model, device)
    sources = prompt_sources(config)
    judges = {split: judges.for_prompts(sources[split]) for split in split_names(config)}
    kl_paths = {name: p for name, p in (("sft", config.sft_model), ("soup", config.soup_model)) if p}
    tokenizer = load_tokenizer(first_model)
    kl_references = {name: frozen(path, device, dtype) for name, path in kl_paths.items()}
    model = next(iter(kl_references.values()), None) or frozen(first_model, device, dtype)
    for split in splits:
        check_prompt_lengths(tokenizer, splits[split], config.max_new_tokens, model, f"eval ({sources[split]})")
    loaded = {Path(kl_paths[name]).resolve(): model for name, model in kl_references.items()}
    second_turns = second_turn_splits(config)
    return Sampler(
        config, splits, second_turns, judges, kl_references, kl_paths, tokenizer, device, dtype, loaded=loaded
    )


def _policy_rows(
    sampler: Sampler, name: str, seed_index: int, answer: Callable[[str, Prompts | None], list[dict]]
) -> list[dict]:
    """One policy's answers on every split (`answer(split, prompts)`: scored, with the KL to the references on the
    in-distribution prompts; prompts None: the split's), each MT-Bench split's second turns right after its first:
    each (prompt, sample) continues the conversation of the policy's own answer to it."""
    rows = []
    for split in sampler.splits:
        first = answer(split, None)
        rows += [{"policy": name, "seed_index": seed_index, "split": split, **r} for r in first]
        if split in sampler.second_turns:
            second = sampler.second_turns[split]
            answers = answer(second, second_turn_prompts(first))
            rows += [{"policy": name, "seed_index": seed_index, "split": second, **r} for r in answers]
    return rows


def _drawn(rows: list[dict], path: str, config: EvalConfig) -> list[dict]:
    """The in-distribution rows already drawn from the policy model at `path`, if it is one."""
    for name, paths in config.policies.items():
        for seed_index, policy_path in enumerate(paths):
            if Path(policy_path).resolve() == Path(path).resolve():
                key = ("policy", name, seed_index, 0)
                return [r for r in rows if unit_key(r) == key and r["split"] == "in_distribution"]
    return []


def _points_on_disk(config: EvalConfig, models: tuple[str, ...]) -> dict[float, str]:
    """The landscape's points that are model directories: its endpoints, and the soup when it is the linear merge of
    the two in their own dtype at weights (1 - alpha, alpha), which the in-memory merge reproduces bit for bit
    (`weights.in_memory`)."""
    points = {0.0: models[0], 1.0: models[1]}
    record = Path(config.soup_model) / SOUP_RECORD if config.soup_model else None
    if record is None or not record.is_file():
        return points
    soup = read_json(record)
    ingredients = soup.get("ingredients", [])
    on_line = [Path(entry["path"]).resolve() for entry in ingredients] == [Path(m).resolve() for m in models]
    weights = [entry.get("weight") for entry in ingredients] if on_line else []
    linear = (soup.get("method"), soup.get("dtype")) == ("linear", "ingredients")
    if linear and on_line and None not in weights and weights[0] == 1.0 - weights[1]:
        points.setdefault(weights[1], config.soup_model)
    return points


def _landscape_rows(sampler: Sampler, unit: Unit, drawn: list[dict]) -> list[dict]:
    """The samples of every point (1 - alpha) * SFT-1 + alpha * SFT-2 of the landscape; a point that is a model
    directory (an endpoint, the soup) starts from its answers (those of a policy drawn before, or drawn now and kept
    for the soup's health)."""
    config = sampler.config
    endpoints = _points_on_disk(config, unit.models)
    rows_out: list[dict] = []
    for alpha in config.landscape_alphas:
        sampler.describe(f"landscape alpha={alpha:+.2f}")
        start = _drawn(drawn, endpoints[alpha], config) if alpha in endpoints else []
        sampler.advance(len(start))
        if alpha in endpoints and not start:
            start = sampler.answers(endpoints[alpha], "in_distribution", {})
        start = [{k: v for k, v in r.items() if k in LANDSCAPE_KEYS} for r in start]

        def build(alpha=alpha):
            model = soup_model(list(unit.models), alpha=alpha, allow_extrapolation=True)
            return model.to(sampler.device, sampler.dtype).eval().requires_grad_(False)

        rows = sample_point(
            config, build, sampler.tokenizer, sampler.splits["in_distribution"], sampler.judges["in_distribution"],
            start, sampler.advance,
        )  # fmt: skip
        rows_out += [{"alpha": alpha, **r} for r in rows]
    return rows_out


def _health_rows(sampler: Sampler, unit: Unit) -> list[dict]:
    """Every ingredient and the soup answer the in-distribution prompts, each scored with its KL to the others."""
    members = dict(zip(member_names(len(unit.models) - 1), unit.models, strict=True))
    models: dict[Path, torch.nn.Module] = {}  # each member loaded once, if some answer or KL still needs it
    rows = []
    for name, path in members.items():
        sampler.describe(f"soup health: {name}")
        answers = sampler.answers(path, "in_distribution", members, models)
        rows += [{"member": name, "split": "in_distribution", **r} for r in answers]
    return rows


def draw(sampler: Sampler, unit: Unit, drawn: list[dict]) -> list[dict]:
    """The rows of one unit (`drawn`: the rows drawn before it, which the landscape may start from)."""
    label = f"{unit.policy} [{unit.seed_index}]"
    if unit.kind == "policy":
        sampler.describe(label)
        path, models = unit.models[0], {}  # the policy loaded once for all its splits

        def answer(split: str, prompts: Prompts | None) -> list[dict]:
            return sampler.answers(path, split, sampler.reference_paths(split), models, prompts)

        return _policy_rows(sampler, unit.policy, unit.seed_index, answer)
    if unit.kind == "snapshot":
        sampler.describe(f"{label} at step {unit.step}")
        model = load_snapshot(Path(unit.models[0]).parent, unit.step)
        model = model.to(sampler.device, sampler.dtype).eval().requires_grad_(False)
        meta = {"policy": unit.policy, "seed_index": unit.seed_index, "split": "in_distribution",
                "snapshot": unit.step}  # fmt: skip
        # Matched KL needs the KL to the SFT model only (the axis the runs are matched on), not to the soup.
        sft = {name: model for name, model in sampler.kl_references.items() if name == "sft"}
        return [{**meta, **r} for r in sampler.scored(model, "in_distribution", references=sft)]
    if unit.kind == "sweep":
        sampler.describe(label)
        model = soup_model(list(unit.models), **dict(unit.parameters))
        model = model.to(sampler.device, sampler.dtype).eval().requires_grad_(False)
        sweep = unit.policy.rsplit("@", 1)[0]
        rows = _policy_rows(
            sampler, unit.policy, unit.seed_index, lambda split, prompts: sampler.scored(model, split, prompts)
        )
        return [{**r, "sweep": sweep} for r in rows]
    if unit.kind == "landscape":
        return _landscape_rows(sampler, unit, drawn)
    return _health_rows(sampler, unit)


def draw_units(config: EvalConfig, inputs: dict, units: list[Unit], show_progress: bool = True) -> list[dict]:
    """The rows of `units`, in order, under one progress bar."""
    if not units:
        return []
    sampler = open_sampler(config, inputs, units[0].models[0])
    sizes = {split: len(prompts) for split, prompts in sampler.splits.items()}
    sizes |= {second: sizes[split] for split, second in sampler.second_turns.items()}
    rows: list[dict] = []
    with training_progress(disable=not show_progress or not runtime.is_main_process()) as progress:
        task = progress.add_task("evaluating", total=sum(u.responses(config, sizes) for u in units), metrics="")
        sampler.advance = lambda n: progress.update(task, advance=n)
        sampler.describe = lambda text: progress.update(task, metrics=text)
        for unit in units:
            rows += draw(sampler, unit, rows)
    return rows


def in_plan_order(rows: list[dict], units: list[Unit]) -> list[dict]:
    """The rows sorted by their unit's place in the plan (stable within a unit): the same file however the units
    were shared out."""
    place = {unit.key: i for i, unit in enumerate(units)}
    return sorted(rows, key=lambda r: place.get(unit_key(r), len(place)))


def split_names(config: EvalConfig) -> list[str]:
    """The evaluation's splits in the order of the rows: in-distribution, out-of-distribution when it has prompts,
    each MT-Bench split followed by its second turns when eval.mt_bench_turns is 2."""
    second_turns = second_turn_splits(config)
    splits = ["in_distribution"] + (["out_of_distribution"] if config.ood_prompts else [])
    return [name for split in splits for name in (split, second_turns.get(split)) if name]


def _judge(config: EvalConfig, samples: list[dict], stage: Stage, show_progress: bool) -> list[dict]:
    """The LLM judge's verdicts on every comparison (both orders of each pair of responses), a policy against
    another or against a standard set's reference answers."""
    device, dtype = runtime.accelerator().device, runtime.forward_dtype(config.mixed_precision)
    pairs = comparison_pairs(config, with_references=True)
    if any(b == REFERENCES for _, b in pairs):
        samples = samples + reference_samples(samples, prompt_sources(config))
    rows = judgment_rows(samples, pairs)
    template = stage.inputs.get("judge_template") or DEFAULT_TEMPLATE
    judge = LLMJudge(frozen(config.judge, device, dtype), config.judge, template, config.batch_size)
    jobs = [(r["prompt"], r["response_a"], r["response_b"]) for r in rows]
    with training_progress(disable=not show_progress or not runtime.is_main_process()) as progress:
        task = progress.add_task("LLM judge", total=len(rows), metrics=config.judge)
        verdicts = judge.verdicts(jobs, lambda n: progress.update(task, advance=n))
    return [{**r, **v} for r, v in zip(rows, verdicts, strict=True)]


def dry_run(config: EvalConfig) -> list[str]:
    """Check the evaluation's values and every input without sampling, judging or downloading (hub models and
    datasets by the form of their names, as `salsa run --dry-run`): one line per split of prompts and, with an LLM
    judge, what it would be asked (`judging_plan`). Loads no model."""
    validate_values(config)
    inputs = check_inputs(config, Path(config.output_dir), download=True)
    sources = prompt_sources(config)
    prompts = {"in_distribution": inputs.get("prompts"), "out_of_distribution": inputs.get("ood_prompts")}
    second_turns = second_turn_splits(config)
    prompts |= {second: prompts[split] for split, second in second_turns.items()}  # one follow-up per question
    lines = [f"eval: {config.output_dir} (policies {', '.join(config.policies)})"]
    for split in split_names(config):
        rows, source = prompts[split], sources[split]
        if split in second_turns.values():
            source = f"{source} second turns, each policy's own first answer in context"
        count = "a hub dataset, not read in a dry run" if rows is None else f"{len(rows)} prompts"
        lines.append(f"{split}: {source}, {count}, {config.samples_per_prompt} samples per prompt and policy")
    read = {split: prompts[split] for split in split_names(config) if prompts[split] is not None}
    return lines + (judging_plan(config, read, sources) if config.judge else [])


def evaluate(
    config: EvalConfig, show_progress: bool = True, overwrite: bool = False, drawn: list[dict] | None = None
) -> Path:
    """Sample, judge and compare the configured policies; writes results.json and samples.jsonl. `drawn`: rows of
    units drawn elsewhere (a study's jobs); only the units they lack are sampled here."""
    return run_stage(config, lambda stage: _evaluate(config, stage, show_progress, drawn or []), overwrite)


def _evaluate(config: EvalConfig, stage: Stage, show_progress: bool, drawn: list[dict]) -> None:
    units = plan_units(config)
    have = {unit_key(r) for r in drawn}
    todo = [u for u in units if u.key not in have]
    rows = in_plan_order(drawn + draw_units(config, stage.inputs, todo, show_progress), units)
    judgments = _judge(config, rows_of(rows, "policy"), stage, show_progress) if config.judge else []
    results = summarise_rows(config, rows, judgments, current_gold_version(config.task))
    if runtime.is_main_process():
        atomic_write_text(stage.out / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        if judgments:
            atomic_write_text(stage.out / "judgments.jsonl", "".join(json.dumps(r) + "\n" for r in judgments))
        atomic_write_json(stage.out / "results.json", results)
    stage.finish()


def rows_of(rows: list[dict], kind: str) -> list[dict]:
    """The rows drawn in units of one kind (policy, snapshot, sweep, landscape, health)."""
    return [r for r in rows if unit_key(r)[0] == kind]


def summarise_rows(
    config: EvalConfig, rows: list[dict], judgments: list[dict] | None = None, gold_version: int | None = None
) -> dict:
    """results.json from every sample row of an evaluation (the eval stage's, or a study's restored archive);
    `gold_version`: the version of the gold judge that scored the rows, recorded with the results."""
    samples = rows_of(rows, "policy")
    splits = split_names(config)
    judges = [j for j in ("gold", "reward", *IFEVAL_METRICS) if any(j in r for r in samples)]
    matched, unmatched = matched_kl_rows(config, samples, rows_of(rows, "snapshot")) if config.matched_kl else ([], [])
    results = summarise(config, samples, rows_of(rows, "landscape"), judges, splits, matched, unmatched, judgments)
    if "gold" in judges:
        results["settings"]["gold_judge_version"] = gold_version
    sources = prompt_sources(config)
    results["standard_sets"] = {split: load_set(sources[split])[1] for split in splits if sources[split] in SETS}
    judged_references = dict.fromkeys(r["split"] for r in judgments or [] if r["b"] == REFERENCES)
    if judged_references:  # which reference answers the policies met, from which file, under which licence
        results["llm_judge"]["references"] = {
            split: reference_info(sources[split], turn_of(split)) for split in judged_references
        }
    stats = {"num_samples": config.bootstrap_samples, "confidence": config.confidence, "seed": config.seed}
    results["text_stats"] = text_statistics(samples, config.max_new_tokens, stats)
    results["examples"] = paired_examples(samples, seed=config.seed)
    health = rows_of(rows, "health")
    results["soup_health"] = summarise_soup_health(health, judges, config, stats) if health else None
    points = config.sweep_points()
    if points:  # each point in the policies' table, and the sweeps as curves of points
        entries, results["sweeps"] = summarise_sweeps(config, points, rows_of(rows, "sweep"), judges, splits, stats)
        results["policies"].update(entries)
    return results
