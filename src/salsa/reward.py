"""Bradley-Terry reward models: r(prompt, response) trained so that chosen responses outscore rejected ones.

    P(chosen > rejected) = sigmoid(r(x, y_c) - r(x, y_r))
    loss = -mean log sigmoid(r(x, y_c) - r(x, y_r))

Two backbones: a small encoder (all-MiniLM-L6-v2, a cross-encoder over the (prompt, response) pair; fast on
a CPU), scored by a linear head on the mean of its token states, the pooling it was trained to embed text
with; and a causal LM with a scalar head on the last token of the templated conversation (initialised from an
SFT model, as in InstructGPT and the SALSA paper; read as TRL reads a reward model). The saved directory is a
sequence-classification model that transformers and TRL load (`AutoModelForSequenceClassification`; the
encoder's small architecture travels with it), its tokenizer, and `salsa_reward.json` (backbone, layout,
normalisation mean and std); `salsa.scoring` reads it, and any other reward model or function, for RL.

With `num_models` K > 1 (WARM, arXiv 2401.12187) K members are trained from one start and differ in their seeds for
data order and dropout; their uniform weight average, streamed as `salsa soup` streams a soup, is the reward model.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from rich.progress import Progress
from scipy.stats import spearmanr
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertModel, get_scheduler

from salsa import encoder_reward, runtime
from salsa.config import RewardConfig
from salsa.data import PreferencePair, Prompt, prompt_key
from salsa.encoder_reward import SalsaEncoderRewardConfig, SalsaEncoderRewardModel
from salsa.engine import Stage, run_stage
from salsa.errors import ConfigError
from salsa.evaluation.stats import mean_with_interval
from salsa.io import COMPLETE_MARKER, REWARD_META, atomic_dir, atomic_write_json, is_complete, mark_complete, read_json
from salsa.logs import FiniteGuard, MetricsLog, NonFiniteError, check_finite_weights
from salsa.models import enable_activation_checkpointing, resolve_model
from salsa.progress import console, training_progress
from salsa.scoring import LAYOUTS, RewardModel
from salsa.seeding import batch_stream
from salsa.shipped import DEFAULT_MODEL, default_encoder_path
from salsa.weights.merge import average_into


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """-mean log sigmoid(r_chosen - r_rejected) (each pair's term with reduction 'none')."""
    losses = -F.logsigmoid(chosen - rejected)
    return losses.mean() if reduction == "mean" else losses


def _backbone_model(config: RewardConfig):
    """The model a reward run starts from: MiniLM with a fresh linear head, or an LM with a fresh scalar head."""
    if config.backbone == "encoder":
        path = str(config.model or default_encoder_path())
    else:
        path = resolve_model(config.model or DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.backbone == "encoder":
        bert = BertModel.from_pretrained(path, add_pooling_layer=False, dtype=torch.float32)
        model = SalsaEncoderRewardModel(SalsaEncoderRewardConfig(**bert.config.to_dict()), bert=bert)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def save_reward_model(reward: RewardModel, backbone: str, out: Path) -> None:
    """A directory that `RewardModel.load`, plain transformers and TRL all load as a sequence-classification model:
    the encoder's own architecture travels with it (modeling_salsa_encoder_reward.py, loaded with
    trust_remote_code=True); the causal backbone is a standard `*ForSequenceClassification`."""
    with atomic_dir(out) as tmp:
        if backbone == "encoder":
            module = "modeling_salsa_encoder_reward"
            reward.model.config.auto_map = {
                "AutoConfig": f"{module}.SalsaEncoderRewardConfig",
                "AutoModelForSequenceClassification": f"{module}.SalsaEncoderRewardModel",
            }
            reward.model.config.architectures = ["SalsaEncoderRewardModel"]
            shutil.copyfile(encoder_reward.__file__, tmp / f"{module}.py")
        reward.model.save_pretrained(tmp)
        reward.tokenizer.save_pretrained(tmp)
        _write_meta(reward, backbone, tmp)


def _write_meta(reward: RewardModel, backbone: str, folder: Path) -> None:
    """salsa_reward.json: how `RewardModel.load` reads the model (backbone, layout, length) and its normalisation."""
    meta = {"backbone": backbone, "max_length": reward.max_length, "layout": reward.layout}
    atomic_write_json(folder / REWARD_META, {**meta, "mean": reward.mean, "std": reward.std})


def spearman(x: list[float] | torch.Tensor, y: list[float] | torch.Tensor) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    return float(spearmanr(list(map(float, x)), list(map(float, y))).statistic)


def pair_agreement(score_a: torch.Tensor, score_b: torch.Tensor, label_a_better: torch.Tensor) -> torch.Tensor:
    """Per pair: 1 where the model orders it as the label does, 0 where it does not, 0.5 for a tie (so a constant
    scorer agrees with half of every pair: 50%). Its mean is the pairwise accuracy."""
    agree = ((score_a > score_b) == label_a_better).float()
    return torch.where(score_a == score_b, 0.5, agree)


# Held-out accuracies carry a 95% percentile-bootstrap interval over the held-out pairs (one draw of the pairs,
# shared by every model evaluated, so that differences between models are paired).
BOOTSTRAP = {"num_samples": 2000, "confidence": 0.95, "seed": 0}


def held_out_scores(reward: RewardModel, pairs: list[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw scores of the chosen and of the rejected response of every pair."""
    prompts = [p.prompt for p in pairs]
    chosen, rejected = ([getattr(p, side) for p in pairs] for side in ("chosen", "rejected"))
    return reward.raw_scores(prompts, chosen), reward.raw_scores(prompts, rejected)


def _with_gold(pairs: list[PreferencePair]) -> list[int]:
    """The pairs whose gold scores exist and differ: those the gold judge orders."""
    return [i for i, p in enumerate(pairs) if p.gold_chosen is not None and p.gold_chosen != p.gold_rejected]


def agreements(chosen: torch.Tensor, rejected: torch.Tensor, pairs: list[PreferencePair]) -> dict[str, torch.Tensor]:
    """`pair_agreement` with the labels (every pair: the chosen response is better) and, for the pairs it orders, with
    the gold judge."""
    result = {"labels": pair_agreement(chosen, rejected, torch.ones(len(pairs), dtype=torch.bool))}
    with_gold = _with_gold(pairs)
    if with_gold:
        gold_c = torch.tensor([pairs[i].gold_chosen for i in with_gold])
        gold_r = torch.tensor([pairs[i].gold_rejected for i in with_gold])
        result["gold"] = pair_agreement(chosen[with_gold], rejected[with_gold], gold_c > gold_r)
    return result


def evaluate_scores(chosen: torch.Tensor, rejected: torch.Tensor, pairs: list[PreferencePair]) -> dict:
    """Held-out pairwise accuracy against the labels and, where gold scores exist, against the gold judge, each with
    its bootstrap interval over the pairs (`ci`), and the Spearman correlation of the scores with the gold scores."""
    agreed = agreements(chosen, rejected, pairs)
    accuracies = {kind: mean_with_interval(agreement.numpy()[None], **BOOTSTRAP) for kind, agreement in agreed.items()}
    result: dict = {"pairs": len(pairs), "accuracy_vs_labels": accuracies["labels"]["mean"]}
    if "gold" in accuracies:
        result["gold_pairs"] = len(agreed["gold"])
        result["accuracy_vs_gold"] = accuracies["gold"]["mean"]
        # Spearman over the distinct (prompt, response) items of the held-out pairs.
        items = {}
        for i, p in enumerate(pairs):
            if p.gold_chosen is not None:
                items[(prompt_key(p.prompt), p.chosen)] = (float(chosen[i]), p.gold_chosen)
                items[(prompt_key(p.prompt), p.rejected)] = (float(rejected[i]), p.gold_rejected)
        model_scores, gold_scores = zip(*items.values(), strict=True)
        result["spearman_vs_gold"] = spearman(model_scores, gold_scores)
    result["ci"] = {f"accuracy_vs_{kind}": accuracy["ci"] for kind, accuracy in accuracies.items()}
    result["confidence"] = BOOTSTRAP["confidence"]
    return result


def evaluate_reward(reward: RewardModel, pairs: list[PreferencePair]) -> dict:
    """`evaluate_scores` of a reward model on held-out pairs."""
    return evaluate_scores(*held_out_scores(reward, pairs), pairs)


def evaluate_members(average: RewardModel, members: Iterable[RewardModel], pairs: list[PreferencePair]) -> dict:
    """The average's evaluation, with each member's (`members`, scored one at a time) and, for each member, the paired
    difference of accuracies average - member with its interval (`average_minus_member`: the same bootstrap draws of
    the pairs)."""
    average_scores = held_out_scores(average, pairs)
    average_agreed = agreements(*average_scores, pairs)
    evaluations = []
    for member in members:
        scores = held_out_scores(member, pairs)
        differences = {
            f"accuracy_vs_{kind}": mean_with_interval((average_agreed[kind] - agreement).numpy()[None], **BOOTSTRAP)
            for kind, agreement in agreements(*scores, pairs).items()
        }
        evaluations.append({**evaluate_scores(*scores, pairs), "average_minus_member": differences})
    return {**evaluate_scores(*average_scores, pairs), "members": evaluations}


def describe_evaluation(evaluation: dict) -> str:
    """The held-out accuracies with their intervals, and the Spearman correlation with gold, in one line."""
    parts = []
    for kind, count in (("labels", "pairs"), ("gold", "gold_pairs")):
        key = f"accuracy_vs_{kind}"
        if key in evaluation:
            low, high = evaluation["ci"][key]
            where = f"against the {kind} ({evaluation[count]} pairs)"
            parts.append(f"{evaluation[key]:.1%} [{low:.1%}, {high:.1%}] {where}")
    if "spearman_vs_gold" in evaluation:
        parts.append(f"Spearman {evaluation['spearman_vs_gold']:.2f} with gold")
    return "accuracy " + ", ".join(parts)


def prompt_groups(prompts: list[Prompt]) -> list[list[int]]:
    """Pair indices grouped by prompt, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt_key(prompt), []).append(i)
    return list(groups.values())


def _distinct_responses(pairs: list[PreferencePair]) -> dict[tuple[str, str], tuple[Prompt, str]]:
    """Every distinct (prompt, response) of the pairs, chosen and rejected, keyed by (prompt key, response) in order
    of first appearance."""
    return {(prompt_key(p.prompt), r): (p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)}


def pair_scores(reward: RewardModel, batch: list[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the chosen and rejected responses, with every distinct (prompt, response) forwarded once."""
    items = _distinct_responses(batch)
    row = {key: i for i, key in enumerate(items)}
    scores = reward.forward([prompt for prompt, _ in items.values()], [r for _, r in items.values()])
    chosen = scores[[row[(prompt_key(p.prompt), p.chosen)] for p in batch]]
    rejected = scores[[row[(prompt_key(p.prompt), p.rejected)] for p in batch]]
    return chosen, rejected


# A pretrained LM moves far at 1e-4 and forgets; the small encoder needs it to learn in a few epochs.
DEFAULT_LEARNING_RATES = {"encoder": 1e-4, "causal": 1e-5}


def stayed_at_chance(losses: list[float], tail: float = 0.1, tolerance: float = 0.01) -> bool:
    """True when the loss over the last `tail` of training is still ln 2 (within `tolerance`): the loss of a
    model that gives every response the same score, i.e. one that learned nothing."""
    last = losses[-max(1, round(tail * len(losses))) :]
    return sum(last) / len(last) > math.log(2) - tolerance


def backbone_learning_rate(config: RewardConfig) -> float:
    """The backbone's peak learning rate: the configured one, or the default of its kind."""
    return config.learning_rate if config.learning_rate is not None else DEFAULT_LEARNING_RATES[config.backbone]


def member_seeds(config: RewardConfig, member: int) -> list[int]:
    """The seeds member `member` of a WARM reward model tries in turn: a first, then one per restart. Member i takes
    the block from seed + i (restarts + 1), so no two tries share a seed; member 0's block is that of a single model."""
    first = config.seed + member * (config.restarts + 1)
    return list(range(first, first + config.restarts + 1))


def _fit(
    config: RewardConfig,
    pairs: list[PreferencePair],
    seed: int,
    log: MetricsLog,
    guard: FiniteGuard,
    progress: Progress,
    may_give_up: bool,
    init_seed: int | None = None,
) -> tuple[RewardModel, list[float]] | None:
    """Train from the pretrained backbone with `seed`. Returns the trained RewardModel and its step losses, or
    None when `may_give_up` and the loss is still ln 2 after the first epoch's steps (of a run with more).

    The fresh head is drawn with `seed`, or with `init_seed` when given (a WARM member: every member starts where
    member 0 did, and `seed` draws only its dropout and data order).

    A step holds whole prompts (all of a prompt's pairs, as in InstructGPT): the pairs of one prompt share
    responses, which `pair_scores` forwards once, and contrast every response of the prompt with the others.
    """
    set_seed(seed if init_seed is None else init_seed)
    accelerator = runtime.accelerator()
    world, rank = accelerator.num_processes, accelerator.process_index
    model, tokenizer = _backbone_model(config)
    if init_seed is not None:
        set_seed(seed)
    if config.gradient_checkpointing:
        enable_activation_checkpointing(model.base_model)
    model.to(accelerator.device)
    groups = prompt_groups([p.prompt for p in pairs])
    steps_per_epoch = math.ceil(len(pairs) / config.batch_size)
    total_steps = max(1, math.ceil(config.num_epochs * steps_per_epoch))
    backbone = {id(p) for p in model.base_model.parameters()}
    head = [p for p in model.parameters() if id(p) not in backbone]
    optimizer = torch.optim.AdamW(
        [
            {"params": list(model.base_model.parameters()), "lr": backbone_learning_rate(config)},
            {"params": head, "lr": config.head_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )
    scheduler = get_scheduler("linear", optimizer, round(config.warmup_ratio * total_steps), total_steps)
    batches = batch_stream([len(g) for g in groups], config.batch_size, seed)
    # DDP when launched on several processes; the saved model and the scores after training are the plain one.
    reward = RewardModel(accelerator.prepare(model), tokenizer, LAYOUTS[config.backbone], config.max_length)
    dtype = runtime.compute_dtype(config.mixed_precision)
    losses = []
    model.train()
    task = progress.add_task(f"reward (seed {seed})", total=total_steps, metrics="")
    for step in range(1, total_steps + 1):
        batch = [pairs[i] for group in next(batches) for i in groups[group]]
        mine = batch[rank::world]  # every process takes its share of the step's pairs
        with runtime.autocast(dtype):
            chosen, rejected = pair_scores(reward, mine)
        terms = bradley_terry_loss(chosen, rejected, reduction="none")
        (terms.sum() * world / len(batch)).backward()  # DDP averages: the mean over the whole batch
        grad_norm = runtime.clip_gradients(list(model.parameters()), 1.0)
        right = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()  # a tie counts half
        totals = runtime.all_sum(torch.stack([terms.sum().detach(), right.sum()]))
        loss, accuracy = float(totals[0]) / len(batch), float(totals[1]) / len(batch)
        if guard.ok(step, loss=loss, grad_norm=grad_norm):
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss)
        record = {"seed": seed, "step": step, "loss": losses[-1], "accuracy": accuracy, "skipped_steps": guard.skipped}
        log.write(record)
        progress.update(task, advance=1, metrics=f"loss {losses[-1]:.3f}  acc {accuracy:.2f}")
        if may_give_up and step == steps_per_epoch < total_steps and stayed_at_chance(losses, tail=0.25):
            return None
    reward.model = model
    return reward, losses


def normalisation(reward: RewardModel, pairs: list[PreferencePair]) -> tuple[float, float]:
    """Mean and std of the raw scores over the distinct responses of the training pairs (chosen and rejected, on and
    off subject): a scale for the scores. RL centres them again on its starting policy's samples."""
    items = _distinct_responses(pairs)
    responses = [items[key] for key in sorted(items)]
    raw = reward.raw_scores([p for p, _ in responses], [r for _, r in responses])
    mean, std = float(raw.mean()), float(raw.std()) if len(raw) > 1 else float("nan")
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise NonFiniteError(
            f"reward: the normalisation statistics of the trained model are mean {mean}, std {std} over "
            f"{len(raw)} distinct responses; a reward model needs finite scores that differ between responses "
            "(check the data: are chosen and rejected responses distinct?)"
        )
    return mean, std


def train_reward(config: RewardConfig, show_progress: bool = True, overwrite: bool = False) -> Path:
    """Train a Bradley-Terry reward model; writes the model, its normalisation and eval.json.

    The encoder sometimes never leaves the initial plateau (loss ln 2: every response scored alike) whatever
    the number of epochs; such a run is recognised at the end of its first epoch and started again from the
    pretrained weights with the next seed, up to `restarts` times. With `num_models` > 1, K members (each with its
    own restarts) are averaged into the reward model (WARM).
    """
    return run_stage(config, lambda stage: _train(config, stage, show_progress), overwrite) / "model"


def _fit_with_restarts(
    config: RewardConfig,
    pairs: list[PreferencePair],
    seeds: list[int],
    init_seed: int | None,
    folder: Path,
    show_progress: bool,
) -> tuple[RewardModel, dict]:
    """`_fit` with each of `seeds` in turn until a try leaves ln 2 within its first epoch (the last try trains to
    the end whatever its loss), logging to folder/metrics.jsonl. Returns the model, normalised on the training pairs,
    and its record: the seed kept and the steps skipped."""
    main = runtime.is_main_process()
    guard = FiniteGuard("reward", config.on_nonfinite)
    progress_bar = training_progress(disable=not show_progress or not main)
    with MetricsLog(folder, "reward", config, enabled=main) as log, progress_bar as progress:
        for seed in seeds:
            fitted = _fit(config, pairs, seed, log, guard, progress, seed != seeds[-1], init_seed)
            if fitted is not None:
                break
            console.print(
                f"[yellow]reward:[/] the loss is still ln 2 = 0.693 after the first epoch with seed {seed}; "
                f"starting again from the pretrained weights with seed {seed + 1}"
            )
    reward, losses = fitted
    if stayed_at_chance(losses):
        console.print(
            "[yellow]warning:[/] the reward model learned nothing: its training loss stayed at ln 2 = 0.693, the "
            "loss of a constant score; retrain with another reward.seed, more reward.restarts or another "
            "learning rate"
        )
    reward.mean, reward.std = normalisation(reward, pairs)
    check_finite_weights(reward.model, str(folder / "model"))
    return reward, {"seed": seed, "skipped_steps": guard.skipped}


def _train(config: RewardConfig, stage: Stage, show_progress: bool) -> None:
    pairs, eval_pairs = stage.inputs["data"], stage.inputs.get("eval_data") or []
    world = runtime.world_size()
    if config.batch_size < world:
        raise ConfigError(f"reward.batch_size ({config.batch_size}) must be at least the {world} processes")
    if config.num_models > 1:
        _train_members(config, stage, pairs, eval_pairs, show_progress)
        return
    reward, record = _fit_with_restarts(config, pairs, member_seeds(config, 0), None, stage.out, show_progress)
    evaluation = evaluate_reward(reward, eval_pairs) if eval_pairs else {}
    if runtime.is_main_process():
        save_reward_model(reward, config.backbone, stage.out / "model")
        atomic_write_json(stage.out / "eval.json", evaluation)
        if evaluation:
            console.print("reward model held-out: " + describe_evaluation(evaluation))
    stage.finish({**record, **evaluation})


def _train_members(
    config: RewardConfig,
    stage: Stage,
    pairs: list[PreferencePair],
    eval_pairs: list[PreferencePair],
    show_progress: bool,
) -> None:
    """WARM: K members in members/member-<i>/, each a reward model of its own, trained from one start (the pretrained
    backbone and member 0's head) with its own seeds for data order and dropout (`member_seeds`); their uniform weight
    average is the reward model. A member finished before an interruption is kept."""
    folders = [stage.out / "members" / f"member-{i}" for i in range(config.num_models)]
    records, init_seed = [], None
    for i, folder in enumerate(folders):
        if is_complete(folder):
            record = read_json(folder / COMPLETE_MARKER)
        else:
            seeds = member_seeds(config, i)
            reward, record = _fit_with_restarts(config, pairs, seeds, init_seed, folder, show_progress)
            record["init_seed"] = record["seed"] if init_seed is None else init_seed
            if runtime.is_main_process():
                save_reward_model(reward, config.backbone, folder / "model")
                mark_complete(folder, record)
            del reward
        init_seed = record["init_seed"]  # member 0's start is every member's
        records.append(record)
    evaluation: dict = {}
    if runtime.is_main_process():  # averaging and evaluating read files: one process does it
        average = _average(config.backbone, folders, pairs, stage.out / "model")
        if eval_pairs:
            members = (RewardModel.load(str(folder / "model")) for folder in folders)  # one in memory at a time
            evaluation = evaluate_members(average, members, eval_pairs)
            for i, (record, entry) in enumerate(zip(records, evaluation["members"], strict=True)):
                entry.update(seed=record["seed"], init_seed=record["init_seed"])
                console.print(f"reward member {i} held-out: " + describe_evaluation(entry))
            console.print("reward model (their average) held-out: " + describe_evaluation(evaluation))
        atomic_write_json(stage.out / "eval.json", evaluation)
    average_evaluation = {k: v for k, v in evaluation.items() if k != "members"}
    stage.finish({"members": records, **average_evaluation})


def _average(backbone: str, folders: list[Path], pairs: list[PreferencePair], out: Path) -> RewardModel:
    """The members' uniform weight average, streamed into `out` as `salsa soup` streams a soup, with the normalisation
    of its own scores (measured as a single model's are)."""
    with atomic_dir(out) as tmp:
        average_into([folder / "model" for folder in folders], tmp)
        average = RewardModel.load(str(tmp))
        average.mean, average.std = normalisation(average, pairs)
        _write_meta(average, backbone, tmp)
    return average
