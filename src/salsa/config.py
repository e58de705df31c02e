"""One dataclass per stage: every setting with its default, help text and rule (see `salsa.options`).

A YAML file holds either one stage's keys at top level, or a whole-run config with one section per stage
(`sft:`, `soup:`, ...); `salsa.config_loading` reads it and applies `--set` overrides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from salsa.errors import ConfigError
from salsa.options import above, at_least, fraction, known_task, one_of, option
from salsa.shipped import DEFAULT_MODEL
from salsa.sweep_spec import SweepPoint, sweep_points
from salsa.trackers import known_tracker
from salsa.weights.spec import Merge, parse_size, resolve_merge, soup_weights

REWARD_BACKBONES = ("encoder", "causal")
REFERENCES = "references"  # eval.comparisons `a:references`: a standard set's reference answers as policy B
PRECISIONS = ("auto", "no", "bf16")
PRECISION_HELP = "auto (bf16 on a GPU that supports it, else fp32) | no (fp32) | bf16: forward passes under autocast"
CHECKPOINTING_HELP = "recompute activations in the backward pass of trained models: less memory, ~30% more time"
SHARDINGS = ("none", "fsdp2")
SHARDING_HELP = (
    "none (every process holds the whole model: data parallel) | fsdp2 (torch FSDP2 shards the trained model "
    "over the processes: for models that do not fit one device)"
)
REPORT_TO_HELP = (
    "trackers that also receive the metrics (TRL's report_to): tensorboard | wandb | mlflow | trackio, several or "
    "none; metrics.jsonl is always written. wandb, mlflow and trackio come with the `trackers` extra of salsa-rlhf; "
    "their offline settings: docs/tracking.md"
)
NONFINITE_HELP = "on a NaN/inf loss, reward or statistic: stop (error naming the step) | skip (the step; counted)"


@dataclass
class SFTConfig:
    """Supervised fine-tuning of K models that differ only in seed."""

    STAGE: ClassVar[str] = "sft"

    model: str = option(
        DEFAULT_MODEL, "hub id, local model dir, .gguf file, or smollm2-135m (offline default)", input="model"
    )
    data: str = option(
        "builtin:reviews", "JSONL/Parquet file, `datasets` dir or hub id, or builtin:<task>", input="sft_data"
    )
    data_split: str = option("train", "split to read from a `datasets` source")
    output_dir: str = option("runs/sft", "where sft-0, sft-1, ... are written")
    num_models: int = option(2, "K: how many models to train", check=at_least(1))
    seed: int = option(0, "first seed; the K models use seed, seed+1, ...")
    seeds: list[int] | None = option(None, "explicit seeds (overrides seed and num_models)")
    data_shards: str = option(
        "none", "what each of the K models trains on: none (all the data; the models differ in seed and data order) | "
        "disjoint (model i: the i-th of K disjoint shards) | bootstrap (model i: a resample with replacement)",
        check=one_of("none", "disjoint", "bootstrap"),
    )  # fmt: skip
    max_steps: int | None = option(40, "optimizer steps per model; null trains for num_epochs", check=at_least(1))
    num_epochs: float = option(1.0, "epochs per model when max_steps is null", check=above(0))
    batch_size: int = option(8, "micro-batch size per device", check=at_least(1))
    grad_accum_steps: int = option(1, "micro-batches per optimizer step", check=at_least(1))
    learning_rate: float = option(3e-5, "peak learning rate (AdamW)", check=above(0))
    lr_scheduler: str = option(
        "cosine", "cosine | linear | constant (after warmup)", check=one_of("cosine", "linear", "constant")
    )
    warmup_ratio: float = option(0.1, "fraction of steps spent in linear warmup", check=fraction())
    weight_decay: float = option(0.0, "AdamW weight decay", check=at_least(0))
    max_grad_norm: float = option(1.0, "gradient clipping norm", check=above(0))
    max_length: int = option(256, "tokens per example (prompt + completion), truncated beyond", check=at_least(2))
    completion_only_loss: bool = option(True, "mask prompt tokens out of the loss; false trains on everything")
    mixed_precision: str = option("auto", PRECISION_HELP, check=one_of(*PRECISIONS))
    gradient_checkpointing: bool = option(False, CHECKPOINTING_HELP)
    sharding: str = option("none", SHARDING_HELP, check=one_of(*SHARDINGS))
    use_lora: bool = option(False, "train LoRA adapters (PEFT) instead of all weights; saved merged")
    lora_r: int = option(16, "LoRA rank", check=at_least(1))
    lora_alpha: int = option(32, "LoRA scaling numerator", check=above(0))
    lora_dropout: float = option(0.05, "dropout on the LoRA input", check=fraction())
    lora_target_modules: list[str] | None = option(None, "module names to adapt; null adapts all linear layers")
    save_steps: int = option(
        0, "checkpoint every N steps (0: none); a rerun resumes from the newest", check=at_least(0), result=False
    )
    logging_steps: int = option(1, "write metrics every N steps", check=at_least(1), result=False)
    report_to: list[str] = option(
        help=REPORT_TO_HELP, factory=lambda: ["tensorboard"], check=known_tracker, result=False
    )
    on_nonfinite: str = option("stop", NONFINITE_HELP, check=one_of("stop", "skip"))

    def check(self) -> None:
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ConfigError(f"sft.seeds must be distinct and non-empty, got {self.seeds}")


@dataclass
class SoupConfig:
    """Weighted average of K >= 2 fine-tuned models, or a point on the line between two."""

    STAGE: ClassVar[str] = "soup"

    models: list[str] = option(
        help="ingredient model directories (or LoRA adapter dirs)", factory=list, input="ingredient"
    )
    output_dir: str = option("runs/soup", "where the soup model directory is written")
    weights: list[float] | None = option(None, "one weight per model; null is uniform")
    alpha: float | None = option(None, "two models only: result = (1 - alpha) * A + alpha * B")
    allow_extrapolation: bool = option(False, "allow negative weights and alpha outside [0, 1]")
    method: str = option(
        "linear", "linear (weights or alpha) | slerp (t) | expo (expo_alpha) | liti (eta); slerp, expo and liti merge "
        "two models, A (the start: SFT or init) then B (the RL policy); see docs/methods/merges.md",
        check=one_of("linear", "slerp", "expo", "liti"),
    )  # fmt: skip
    t: float | None = option(None, "slerp: the position on the arc from A (0) to B (1), per tensor")
    expo_alpha: float | None = option(None, "expo: B + expo_alpha * (B - A), expo_alpha > 0 (ExPO)")
    eta: float | None = option(None, "liti: (1 - eta) * A + eta * B, eta in [0, 1] (WARP's interpolation to init)")
    dtype: str | None = option(
        None, "output dtype: float32 | bfloat16 | float16; null keeps the ingredients'",
        check=one_of("float32", "bfloat16", "float16"),
    )  # fmt: skip
    max_shard_size: str = option("2GB", "largest output shard, e.g. 500MB or 5GB", result=False)

    def check(self) -> None:
        self.merge()
        parse_size(self.max_shard_size)

    def merge(self) -> Merge:
        """The checked merge these settings describe."""
        return resolve_merge(
            len(self.models), self.method, weights=self.weights, alpha=self.alpha,
            allow_extrapolation=self.allow_extrapolation, t=self.t, eta=self.eta, expo_alpha=self.expo_alpha,
        )  # fmt: skip


@dataclass
class DataConfig:
    """Prompts, SFT demonstrations and preference pairs of a built-in task, made offline."""

    STAGE: ClassVar[str] = "data"

    task: str = option("reviews", "built-in task name", check=known_task)
    model: str = option(DEFAULT_MODEL, "model whose samples become demonstrations and preference pairs", input="model")
    output_dir: str = option("runs/data", "where the JSONL files and datasheet.md are written")
    seed: int = option(0, "seed of sampling and labelling")
    samples_per_prompt: int = option(
        4, "n: samples per prompt (best-of-n demonstrations, all pairs of n)", check=at_least(2)
    )
    max_new_tokens: int = option(40, "longest sampled response", check=at_least(1))
    temperature: float = option(0.8, "sampling temperature", check=above(0))
    top_p: float = option(
        0.95, "nucleus sampling: the smallest token set with this much probability",
        check=fraction(high_inclusive=True, low_inclusive=False),
    )  # fmt: skip
    off_subject_samples: int = option(
        2, "samples of the same request about another subject added to each train prompt's pool (0: none)",
        check=at_least(0),
    )  # fmt: skip
    pairs_per_prompt: int | None = option(
        None, "training pairs kept per prompt (drawn from its own, its twin's and off-subject samples); null: all",
        check=at_least(1),
    )  # fmt: skip
    label_temperature: float = option(
        0.1, "Bradley-Terry label noise: P(a > b) = sigmoid((gold_a - gold_b) / t); 0 = none", check=at_least(0)
    )
    batch_size: int = option(96, "sequences sampled together", check=at_least(1), result=False)
    mixed_precision: str = option("auto", PRECISION_HELP, check=one_of(*PRECISIONS))


@dataclass
class RewardConfig:
    """A Bradley-Terry reward model trained on chosen/rejected pairs."""

    STAGE: ClassVar[str] = "reward"

    backbone: str = option(
        "encoder", "encoder (all-MiniLM-L6-v2, fast on a CPU) | causal (LM + scalar head)",
        check=one_of(*REWARD_BACKBONES),
    )  # fmt: skip
    model: str | None = option(
        None, "backbone weights; default MiniLM (encoder) or smollm2-135m (causal)", input="model"
    )
    data: str = option(
        "runs/data/prefs.jsonl", "training pairs: prompt/chosen/rejected (JSONL, Parquet, datasets)",
        input="preferences",
    )  # fmt: skip
    data_split: str = option("train", "split to read from a `datasets` source")
    eval_data: str | None = option(
        "runs/data/prefs_dev.jsonl", "held-out pairs; with gold_* fields, gold accuracy", input="preferences"
    )
    output_dir: str = option("runs/reward", "where the reward model directory is written")
    seed: int = option(0, "seed of initialisation and data order")
    num_epochs: float = option(4.0, "passes over the training pairs", check=above(0))
    batch_size: int = option(
        32, "pairs per step, in whole prompts: a prompt's pairs share a step and each response is forwarded once",
        check=at_least(1),
    )  # fmt: skip
    learning_rate: float | None = option(
        None, "peak learning rate of the backbone (AdamW, linear decay after warmup); null: 1e-4 encoder, 1e-5 causal",
        check=above(0),
    )  # fmt: skip
    head_learning_rate: float = option(
        1e-3, "peak learning rate of the freshly initialised scalar head (it must move far; the backbone not)",
        check=above(0),
    )  # fmt: skip
    warmup_ratio: float = option(0.1, "fraction of steps in linear warmup", check=fraction())
    weight_decay: float = option(0.01, "AdamW weight decay", check=at_least(0))
    max_length: int = option(128, "tokens per (prompt, response)", check=at_least(2))
    restarts: int = option(
        2, "fresh starts (seed + 1, + 2, ...) when the loss is still ln 2 after one epoch: a stuck run rarely recovers",
        check=at_least(0),
    )  # fmt: skip
    mixed_precision: str = option("auto", PRECISION_HELP, check=one_of(*PRECISIONS))
    gradient_checkpointing: bool = option(False, CHECKPOINTING_HELP)
    on_nonfinite: str = option("stop", NONFINITE_HELP, check=one_of("stop", "skip"))
    report_to: list[str] = option(
        help=REPORT_TO_HELP, factory=lambda: ["tensorboard"], check=known_tracker, result=False
    )
    num_models: int = option(
        1, "K > 1: WARM, K members trained from one start (the backbone and one head initialisation) with their own "
        "seeds for data order and dropout, kept in members/member-<i>/ and averaged into model/; see "
        "docs/methods/warm.md", check=at_least(1),
    )  # fmt: skip


def _online_algorithm(name: str) -> str | None:
    if name == "dpo":
        return "must be one of ppo, rloo, grpo (DPO is its own command now: `salsa dpo`, with a `dpo:` config section)"
    return one_of("ppo", "rloo", "grpo")(name)


@dataclass
class PolicyConfig:
    """What online RL and DPO share: where the policy starts (LoRA or not), its KL reference and how that moves."""

    STAGE: ClassVar[str]  # each subclass's section, which its errors name

    init: str = option("runs/sft/sft-0", "policy start: an SFT model or a soup directory", input="model")
    reference: str = option("sft", "KL anchor: sft | soup | ema | none", check=one_of("sft", "soup", "ema", "none"))
    reference_model: str | None = option(
        None, "the reference directory; sft: default init; soup: default init when init is a soup directory "
        "(`salsa soup` output), else required unless reference_models", input="model",
    )  # fmt: skip
    reference_models: list[str] | None = option(None, "soup: average these models in memory instead", input="model")
    reference_weights: list[float] | None = option(None, "weights of reference_models; default uniform")
    ema_decay: float = option(
        0.99, "ema: reference <- decay * reference + (1 - decay) * policy, every step", check=fraction()
    )
    reference_schedule: str = option(
        "fixed", "how the reference moves from where `reference` starts it: fixed | ema (every step, by ema_decay; "
        "WARP) | soft (every reference_update_steps steps, reference <- (1 - w) * reference + w * policy with w = "
        "reference_update_weight; TR-DPO) | hard (every reference_update_steps steps, reference <- policy; TR-DPO); "
        "`reference: ema` is the ema schedule from the init. See docs/methods/reference-schedules.md",
        check=one_of("fixed", "ema", "soft", "hard"),
    )  # fmt: skip
    reference_update_steps: int = option(10, "soft, hard: move the reference every N steps", check=at_least(1))
    reference_update_weight: float = option(
        0.6, "soft: w, the policy's share of the moved reference (TR-DPO's alpha)",
        check=fraction(high_inclusive=True, low_inclusive=False),
    )  # fmt: skip
    use_lora: bool = option(False, "train LoRA adapters on the policy")
    lora_r: int = option(16, "LoRA rank", check=at_least(1))
    lora_alpha: int = option(32, "LoRA scaling numerator", check=above(0))

    def check(self) -> None:
        stage = self.STAGE
        if self.reference_models and self.reference != "soup":
            raise ConfigError(
                f"{stage}.reference_models averages a soup reference; {stage}.reference is '{self.reference}'"
            )
        if self.reference_weights is not None:
            if not self.reference_models:
                raise ConfigError(f"{stage}.reference_weights needs {stage}.reference_models")
            soup_weights(len(self.reference_models), self.reference_weights)
        if self.reference_schedule != "fixed" and self.reference == "none":
            raise ConfigError(
                f"{stage}.reference_schedule is {self.reference_schedule} but {stage}.reference is none: there is no "
                f"reference to move; set {stage}.reference to where it starts (sft or soup)"
            )
        if self.reference == "ema" and self.reference_schedule not in ("fixed", "ema"):
            raise ConfigError(
                f"{stage}.reference ema is the ema schedule from the init, but {stage}.reference_schedule is "
                f"{self.reference_schedule}; set {stage}.reference to where the {self.reference_schedule} schedule "
                "starts (sft or soup)"
            )
        if self.reference_model and self.reference in ("ema", "none"):
            raise ConfigError(
                f"{stage}.reference_model is set but {stage}.reference is '{self.reference}', which does not use it"
            )


@dataclass
class RLConfig(PolicyConfig):
    """Online RL (PPO, RLOO, GRPO) with a choice of KL reference."""

    STAGE: ClassVar[str] = "rl"
    # Keys DPO's own config took with it (`salsa dpo`), as they are named there.
    MOVED: ClassVar[dict[str, str]] = {
        "dpo_beta": "dpo.beta", "dpo_batch_size": "dpo.batch_size", "preference_data": "dpo.data"
    }  # fmt: skip

    algorithm: str = option("ppo", "ppo | rloo | grpo", check=_online_algorithm)
    sft_model: str | None = option(
        None, "also log KL to this SFT model (an extra forward pass per step)", input="model"
    )
    reward_model: str | None = option(
        "runs/reward/model", "a `salsa reward` directory, any one-label sequence-classification model (directory "
        "or hub id, read as TRL reads it), a Python function module:function / file.py:function, or gold: the task's "
        "gold judge (a control: can RL optimise the true objective at all?)",
        input="rl_reward",
    )  # fmt: skip
    reward_normalisation: str = option(
        "initial_policy", "initial_policy: centre and scale the reward by its mean and std over samples of the policy "
        "as RL starts, for the training prompts (measured once, kept in reward_normalisation.json, reused on resume), "
        "so the first rollouts score about 0 +- 1 | fixed: by the mean and std in normalisation_file (`salsa run` "
        "with run.reward_normalisation shared: one for every run) | none: the reward as it comes",
        check=one_of("initial_policy", "fixed", "none"),
    )  # fmt: skip
    normalisation_file: str | None = option(
        None, "fixed: a JSON file with the reward's mean and std (as `salsa run` writes in normalisation/)",
        input="normalisation",
    )  # fmt: skip
    normalisation_samples: int = option(
        64, "initial_policy: how many responses of the starting policy measure the reward's mean and std",
        check=at_least(2),
    )  # fmt: skip
    prompts: str = option(
        "runs/data/prompts_train.jsonl", "training prompts (JSONL/Parquet/datasets with 'prompt')", input="prompts"
    )
    task: str | None = option("reviews", "built-in task whose gold judge is logged; null for none", check=known_task)
    output_dir: str = option("runs/rl", "checkpoints/, snapshots/, metrics.jsonl, tensorboard/, final/")
    seed: int = option(0, "seed of prompt order, sampling and initialisation")
    steps: int = option(10, "RL iterations (rollout + update)", check=at_least(1))
    max_minutes: float | None = option(
        None, "stop at the first step that ends after this much training time (a wall-clock budget; how many steps "
        "that is depends on the machine), then save the final policy as usual; null: run every step",
        check=above(0),
    )  # fmt: skip
    prompts_per_step: int = option(32, "prompts per iteration", check=at_least(1))
    samples_per_prompt: int = option(2, "completions per prompt (rloo/grpo need >= 2)", check=at_least(1))
    max_new_tokens: int = option(40, "longest response", check=at_least(1))
    temperature: float = option(1.0, "sampling temperature (log-probs use the same temperature)", check=above(0))
    learning_rate: float = option(3e-5, "AdamW learning rate of the policy (constant)", check=above(0))
    value_learning_rate: float = option(
        1e-3, "ppo: AdamW learning rate of the value function (the value head; with value_head separate also the "
        "critic model); the value head starts untrained and must move much further than the policy",
        check=above(0),
    )  # fmt: skip
    value_init: str = option(
        "zero", "ppo: zero (a value head at 0) | reward_model (the critic starts as the reward model, as in "
        "InstructGPT: value_head separate and a causal `salsa reward` model of the policy's architecture)",
        check=one_of("zero", "reward_model"),
    )  # fmt: skip
    value_warmup_steps: int = option(
        2, "ppo: the first N steps train only the value function on the rollouts (the policy does not move); they "
        "count in steps, and at most steps - 1 of them are warm-up, so that a short run still moves the policy",
        check=at_least(0),
    )  # fmt: skip
    ppo_epochs: int = option(
        1, "PPO's epochs over each rollout (TRL's PPO: 4); 1 with one minibatch is a single policy-gradient step "
        "that reuses the rollout's forward pass (fast; the ratio is 1, so clipping never acts)", check=at_least(1),
    )  # fmt: skip
    minibatch_size: int = option(32, "sequences per gradient step within a rollout (global)", check=at_least(1))
    clip_range: float = option(0.2, "PPO ratio clip epsilon", check=above(0))
    value_clip_range: float = option(0.2, "value clip epsilon", check=above(0))
    vf_coef: float = option(0.1, "value loss weight", check=at_least(0))
    gamma: float = option(1.0, "discount", check=fraction(high_inclusive=True))
    lam: float = option(0.95, "GAE lambda", check=fraction(high_inclusive=True))
    kl_coef: float = option(0.05, "beta: KL penalty coefficient (initial value when adaptive)", check=at_least(0))
    adaptive_kl: bool = option(False, "Ziegler et al. adaptive beta towards target_kl")
    target_kl: float = option(6.0, "adaptive KL target (nats per sequence)", check=above(0))
    kl_horizon: int = option(10000, "adaptive KL horizon (samples)", check=at_least(1))
    whiten_advantages: bool | None = option(
        None, "normalise advantages over the rollout's tokens; null: on for ppo (InstructGPT, TRL), off for rloo and "
        "grpo, whose baselines already centre them (as in their papers and TRL)",
    )  # fmt: skip
    loss_aggregation: str = option(
        "token", "token: the mean over every response token of a minibatch (DAPO, TRL's GRPO); sequence: the mean "
        "over each response's tokens, then over responses (the GRPO paper)", check=one_of("token", "sequence"),
    )  # fmt: skip
    reward_clip: float = option(5.0, "clip normalised reward-model scores to +-this", check=above(0))
    missing_eos_penalty: float | None = option(
        None, "subtract from the score of responses cut at max_new_tokens", check=at_least(0)
    )
    value_head: str = option(
        "shared", "shared (head on the policy trunk) | separate (own critic model)", check=one_of("shared", "separate")
    )
    max_grad_norm: float = option(1.0, "gradient clipping norm", check=above(0))
    save_steps: int = option(
        10, "checkpoint every N steps (0: none); a rerun resumes from the newest", check=at_least(0), result=False
    )
    snapshot_steps: int = option(
        0, "keep the trained weights (LoRA: adapters only) every N steps, for eval at matched KL (0: none)",
        check=at_least(0),
    )  # fmt: skip
    collapse_fraction: float = option(
        0.25, "flag a collapse when mean length falls below this fraction of step 1's", check=fraction(), result=False
    )
    report_to: list[str] = option(
        help=REPORT_TO_HELP, factory=lambda: ["tensorboard"], check=known_tracker, result=False
    )
    log_completions_steps: int = option(
        5, "ppo, rloo, grpo: every N steps, the step's prompts, responses, rewards and gold scores go to "
        "completions.jsonl and to the trackers as a table (0: never)", check=at_least(0), result=False,
    )  # fmt: skip
    mixed_precision: str = option("auto", PRECISION_HELP, check=one_of(*PRECISIONS))
    gradient_checkpointing: bool = option(False, CHECKPOINTING_HELP)
    sharding: str = option("none", SHARDING_HELP, check=one_of(*SHARDINGS))
    on_nonfinite: str = option("stop", NONFINITE_HELP, check=one_of("stop", "skip"))

    @property
    def warmup_steps(self) -> int:
        """The steps that train the value function alone: value_warmup_steps, leaving at least one policy step."""
        return min(self.value_warmup_steps, self.steps - 1) if self.algorithm == "ppo" else 0

    def check(self) -> None:
        super().check()
        if self.algorithm in ("rloo", "grpo") and self.samples_per_prompt < 2:
            raise ConfigError(f"rl.samples_per_prompt must be >= 2 for {self.algorithm}, got {self.samples_per_prompt}")
        moving = self.reference == "ema" or self.reference_schedule != "fixed"
        if self.sharding == "fsdp2" and moving and self.use_lora:
            raise ConfigError(
                "rl.sharding fsdp2 cannot shard a moving reference (ema, soft, hard) of a LoRA policy; use none"
            )
        if self.reward_model == "gold" and not self.task:
            raise ConfigError("rl.reward_model is gold, the task's gold judge, but rl.task is null; name the task")
        if self.value_init == "reward_model" and self.reward_model == "gold":
            raise ConfigError("rl.value_init reward_model needs a reward model to start the critic from, not gold")
        if self.value_init == "reward_model" and self.algorithm == "ppo" and self.value_head != "separate":
            raise ConfigError(
                "rl.value_init reward_model starts the critic from the reward model, which needs its own critic: set "
                "rl.value_head to separate"
            )
        if (self.reward_normalisation == "fixed") != (self.normalisation_file is not None):
            raise ConfigError(
                "rl.normalisation_file is the mean and std of rl.reward_normalisation fixed: set both or neither "
                f"(reward_normalisation is {self.reward_normalisation}, normalisation_file {self.normalisation_file})"
            )


@dataclass
class DPOConfig(PolicyConfig):
    """Offline DPO on preference pairs, with the KL references and schedules of online RL."""

    STAGE: ClassVar[str] = "dpo"

    data: str = option(
        "runs/data/prefs.jsonl", "prompt/chosen/rejected pairs (JSONL, Parquet, datasets)", input="preferences"
    )
    output_dir: str = option("runs/dpo", "checkpoints/, metrics.jsonl, tensorboard/, final/")
    seed: int = option(0, "seed of pair order and initialisation")
    steps: int = option(10, "optimizer steps", check=at_least(1))
    batch_size: int = option(8, "pairs per step (global)", check=at_least(1))
    beta: float = option(
        0.1, "beta: loss = -log sigmoid(beta * ((log pi - log ref)(chosen) - (log pi - log ref)(rejected)))",
        check=above(0),
    )  # fmt: skip
    learning_rate: float = option(3e-5, "AdamW learning rate of the policy (constant)", check=above(0))
    max_grad_norm: float = option(1.0, "gradient clipping norm", check=above(0))
    mixed_precision: str = option("auto", PRECISION_HELP, check=one_of(*PRECISIONS))
    gradient_checkpointing: bool = option(False, CHECKPOINTING_HELP)
    on_nonfinite: str = option("stop", NONFINITE_HELP, check=one_of("stop", "skip"))
    save_steps: int = option(
        10, "checkpoint every N steps (0: none); a rerun resumes from the newest", check=at_least(0), result=False
    )
    report_to: list[str] = option(
        help=REPORT_TO_HELP, factory=lambda: ["tensorboard"], check=known_tracker, result=False
    )


@dataclass
class EvalConfig:
    """Policies compared on held-out prompts: win rates with bootstrap intervals, KL, reward landscape."""

    STAGE: ClassVar[str] = "eval"

    policies: dict[str, list[str]] = option(
        help="name: model dir, or a list of dirs (one per RL seed), e.g. {sft: [runs/sft/sft-0], ppo: [...]}",
        factory=dict, input="model_dir",
    )  # fmt: skip
    comparisons: list[str] | None = option(
        None, "pairs 'a:b' to compare (a against b); 'a:references': a against the reference answers of a standard "
        "set (eval.prompts / ood_prompts: mt-bench, arena-hard, alpaca-eval), by the LLM judge; null: every pair of "
        "policies",
    )  # fmt: skip
    prompts: str = option("runs/data/prompts_eval.jsonl", "in-distribution held-out prompts", input="prompts")
    ood_prompts: str | None = option(
        "runs/data/prompts_ood.jsonl", "out-of-distribution prompts; null for none", input="prompts"
    )
    reward_model: str | None = option(
        "runs/reward/model", "reward model (or function module:function) judge; null for none", input="reward_model"
    )
    task: str | None = option(
        "reviews", "built-in task whose gold judge scores responses; null for none", check=known_task
    )
    judge: str | None = option(
        None, "LLM judge (hub id, model dir, .gguf, smollm2-135m): pairwise verdicts on every comparison, each pair "
        "shown in both orders; null for none", input="model",
    )  # fmt: skip
    judge_template: str | None = option(
        None, "text file with the judge prompt ({prompt}, {response_a}, {response_b}); null: the built-in one",
        input="judge_template",
    )  # fmt: skip
    sft_model: str | None = option(
        "runs/sft/sft-0", "KL of each policy to this SFT model (in-distribution prompts)", input="model_dir"
    )
    soup_model: str | None = option("runs/soup", "KL of each policy to this soup", input="model_dir")
    soup_health: bool = option(
        True, "with a soup_model written by `salsa soup`: sample its ingredients and the soup, and report their KL to "
        "each other and the soup against each ingredient",
    )  # fmt: skip
    soup_health_kl: float = option(
        1.0, "KL (nats per response) between two ingredients below which the report says the soup is effectively one "
        "of them", check=above(0),
    )  # fmt: skip
    landscape_models: list[str] | None = option(
        None, "two models, SFT-1 and SFT-2: score the line (1 - alpha) * SFT-1 + alpha * SFT-2", input="model_dir"
    )
    landscape_alphas: list[float] = option(
        help="alphas of the landscape (0 and 1 are the endpoints, 0.5 the soup of two)",
        factory=lambda: [-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5],
    )
    landscape_half_width: float | None = option(
        None, "sample each landscape point in rounds of samples_per_prompt until the 95% interval of its mean score "
        "(gold, else reward model) is at most this wide on each side; null: one round", check=above(0),
    )  # fmt: skip
    landscape_max_samples_per_prompt: int = option(
        32, "the most samples per prompt a landscape point draws", check=at_least(1)
    )
    matched_kl: bool = option(
        True, "also compare two RL runs at matched KL to SFT, using their snapshots (rl.snapshot_steps)"
    )
    mt_bench_turns: int = option(
        1, "where eval.prompts or ood_prompts is mt-bench: 1, its first questions; 2, its follow-ups too, each policy "
        "(seed, sample) answering its own conversation (the first question, its own first answer, the follow-up), "
        "as the split <split>_turn_2; twice the sampling and judging", check=one_of(1, 2),
    )  # fmt: skip
    max_new_tokens: int = option(40, "longest response", check=at_least(1))
    samples_per_prompt: int = option(
        1, "responses per prompt and policy, each with its own seed shared by every policy; more narrows intervals",
        check=at_least(1),
    )  # fmt: skip
    temperature: float = option(
        0.7, "sampling temperature (pure sampling; KL is between the tempered models)", check=above(0)
    )
    batch_size: int = option(64, "prompts sampled together", check=at_least(1), result=False)
    mixed_precision: str = option("auto", PRECISION_HELP, check=one_of(*PRECISIONS))
    seed: int = option(0, "sampling seed, the same for every policy (common random numbers)")
    tie_margin: float = option(0.0, "scores closer than this count as a tie", check=at_least(0))
    bootstrap_samples: int = option(2000, "bootstrap resamples for the confidence intervals", check=at_least(100))
    confidence: float = option(0.95, "confidence level of the intervals", check=fraction(low_inclusive=False))
    verdict_min_seeds: int = option(
        5, "the design's pre-registered number of RL seeds per arm: a comparison (or a 2 x 2 cell) with fewer seeds "
        "gets the verdict 'unresolved', never 'supported' or 'contradicted', whatever its tests say",
        check=at_least(2),
    )  # fmt: skip
    output_dir: str = option("runs/eval", "where results.json and samples.jsonl are written")
    sweeps: dict[str, dict] = option(
        help="families of merged policies, each point built in memory and evaluated like a policy, named NAME@VALUE: "
        "{NAME: {method: expo | liti | slerp, models: [A, B], values: [...]}}; A and B are policy names (seed by seed) "
        "or sft_model / soup_model; values: expo_alpha > 0 (B + alpha (B - A)), eta in [0, 1] ((1 - eta) A + eta B) "
        "or t in [0, 1] (the arc from A to B). Choose a point on a dev split, not the test prompts; see "
        "docs/methods/merges.md",
        factory=dict,
    )  # fmt: skip

    def check(self) -> None:
        if not self.policies:
            raise ConfigError("eval.policies is empty; give at least one name: model_dir (--policy NAME=DIR)")
        for name, paths in self.policies.items():
            if not paths:
                raise ConfigError(f"eval.policies.{name}: no model directory")
        if self.mt_bench_turns == 2 and "mt-bench" not in (self.prompts, self.ood_prompts):
            raise ConfigError(
                f"eval.mt_bench_turns is 2 but neither eval.prompts ({self.prompts}) nor eval.ood_prompts "
                f"({self.ood_prompts or 'null'}) is mt-bench; set one of them to mt-bench, or mt_bench_turns to 1"
            )
        judged_by_rules = "ifeval" in (self.prompts, self.ood_prompts)
        if self.reward_model is None and self.task is None and self.judge is None and not judged_by_rules:
            raise ConfigError("eval: set reward_model, task or judge (something to score with); all are null")
        if self.judge_template is not None and self.judge is None:
            raise ConfigError("eval.judge_template is set but eval.judge is null; name the judge model too")
        if self.landscape_models is not None and len(self.landscape_models) != 2:
            raise ConfigError(f"eval.landscape_models needs exactly two models, got {len(self.landscape_models)}")
        for item in self.comparisons or []:
            a, sep, b = item.partition(":")
            if b == REFERENCES and a in self.policies:
                self._check_references(item)
            elif not sep or a not in self.policies or b not in self.policies or a == b:
                raise ConfigError(
                    f"eval.comparisons: '{item}' must be 'a:b' with two policy names from {', '.join(self.policies)}"
                    f", or 'a:{REFERENCES}'"
                )
        self.sweep_points()

    def _check_references(self, item: str) -> None:
        """'a:references' needs the LLM judge (and a standard set with reference answers: inputs.py checks that)."""
        if REFERENCES in self.policies:
            raise ConfigError(f"eval.policies: '{REFERENCES}' names a standard set's reference answers; rename it")
        if self.judge is None:
            raise ConfigError(f"eval.comparisons: '{item}' is judged by the LLM judge only; name it (--judge MODEL)")

    def sweep_points(self) -> list[SweepPoint]:
        """Every point of `sweeps`, checked against the policies and the reference models (salsa.sweep_spec)."""
        references = {"sft_model": self.sft_model, "soup_model": self.soup_model}
        return sweep_points(self.sweeps, self.policies, references)


@dataclass
class ReportConfig:
    """`salsa report`: an evaluation rendered as Markdown, HTML, plots and summary.json."""

    STAGE: ClassVar[str] = "report"

    eval_dir: str = option("runs/eval", "an eval directory (holds results.json)", input="eval_dir")
    output_dir: str | None = option(None, "report directory; null: `report` next to eval_dir")


@dataclass
class RunConfig:
    """`salsa run`: the whole pipeline. Stage paths left at their defaults are wired into the run directory."""

    STAGE: ClassVar[str] = "run"

    output_dir: str = option("runs/salsa", "run directory: data/, reward/, sft/, soup/, rl/, eval/, report/")
    task: str | None = option(
        "reviews", "built-in task that makes the data (`salsa data make`) and judges; null: your own data (set "
        "sft.data, reward.data, rl.prompts, eval.prompts: files or hub:ORG/NAME[:CONFIG][:SPLIT])", check=known_task,
    )  # fmt: skip
    seeds: int = option(1, "RL seeds per arm; results aggregate over them", check=at_least(1))
    arms: dict[str, str] = option(
        help="RL arms to compare, name: INIT:REFERENCE, INIT sft-<i> | sft | soup, REFERENCE sft-<i> | sft | soup | "
        "ema | none; sft-<i> is SFT model i for every seed, sft (no index) SFT model s mod K for RL seed s (K: "
        "sft.num_models), so that an SFT arm's seeds start from (or anchor to) every ingredient in turn. The first two "
        "arms are the headline comparison (default: salsa soup:soup against ppo sft-0:sft-0; the 2 x 2 of init and "
        "reference adds soup:sft and sft:soup)",
        factory=lambda: {"salsa": "soup:soup", "ppo": "sft-0:sft-0"},
    )  # fmt: skip
    arm_seeds: dict[str, int] = option(help="RL seeds of particular arms (the others have `seeds`)", factory=dict)
    kl_coefs: list[float] | None = option(
        None, "several rl.kl_coef values: every arm trains at each, and the report draws each arm's gold-vs-KL "
        "frontier (KL measured on the evaluation prompts); null: rl.kl_coef only", check=at_least(0),
    )  # fmt: skip
    reward_normalisation: str = option(
        "per_run", "per_run: every RL run normalises the reward on samples of its own starting policy "
        "(rl.reward_normalisation) | shared: one mean and std for every run, measured once (in normalisation/) over "
        "rl.normalisation_samples responses split evenly over the K SFT models, so that one KL coefficient is one "
        "objective in every arm", check=one_of("per_run", "shared"),
    )  # fmt: skip
    cpus_per_job: int = option(
        2, "--executor ray: CPUs (and threads) each job asks for on a cluster without GPUs (with GPUs: one GPU)",
        check=at_least(1), result=False,
    )  # fmt: skip

    def check(self) -> None:
        if len(self.arms) < 1:
            raise ConfigError("run.arms is empty; name at least one RL arm, e.g. {ppo: 'sft-0:sft-0'}")
        for name, spec in self.arms.items():
            init, sep, reference = str(spec).partition(":")
            known_reference = ARM_START.fullmatch(reference) or reference in ("ema", "none")
            if not (sep and ARM_START.fullmatch(init) and known_reference):
                raise ConfigError(
                    f"run.arms.{name}: '{spec}' must be INIT:REFERENCE, INIT sft-<i>, sft or soup, REFERENCE "
                    "sft-<i>, sft, soup, ema or none (e.g. soup:sft)"
                )
            if name in ("sft", "soup") or "/" in name or "@" in name:
                raise ConfigError(f"run.arms: '{name}' cannot name an arm (reserved, or holds / or @)")
        for name, count in self.arm_seeds.items():
            if name not in self.arms or not isinstance(count, int) or count < 1:
                raise ConfigError(f"run.arm_seeds.{name}: must be a number of seeds >= 1 of an arm of run.arms")
        if self.kl_coefs is not None and (not self.kl_coefs or len(set(self.kl_coefs)) != len(self.kl_coefs)):
            raise ConfigError(f"run.kl_coefs must be distinct values, got {self.kl_coefs}")


@dataclass
class NormalisationConfig:
    """`salsa run` with run.reward_normalisation shared: the RL reward's mean and std, measured once over samples of
    the K SFT models to the training prompts, by which every RL run normalises it (rl.reward_normalisation fixed).
    The pipeline fills it from the rl section; it is no section of its own."""

    STAGE: ClassVar[str] = "normalisation"

    models: list[str] = option(
        help="the SFT models whose samples measure the reward, each answering an equal share", factory=list,
        input="model_dir",
    )  # fmt: skip
    reward_model: str | None = option("runs/reward/model", "the RL reward (as rl.reward_model)", input="rl_reward")
    task: str | None = option("reviews", "built-in task whose gold judge `reward_model: gold` is", check=known_task)
    prompts: str = option("runs/data/prompts_train.jsonl", "training prompts", input="prompts")
    samples: int = option(64, "responses in all (rl.normalisation_samples)", check=at_least(2))
    samples_per_prompt: int = option(2, "responses per prompt (rl.samples_per_prompt)", check=at_least(1))
    max_new_tokens: int = option(40, "longest response (rl.max_new_tokens)", check=at_least(1))
    temperature: float = option(1.0, "sampling temperature (rl.temperature)", check=above(0))
    seed: int = option(0, "seed of the prompts and the sampling (rl.seed)")
    output_dir: str = option("runs/normalisation", "where reward_normalisation.json is written")

    def check(self) -> None:
        if self.reward_model == "gold" and not self.task:
            raise ConfigError("rl.reward_model is gold, the task's gold judge, but rl.task is null; name the task")


# sft-<i>: SFT model i for every seed; sft: SFT model s mod K for RL seed s; soup: the soup of the K.
ARM_START = re.compile(r"sft(-\d+)?|soup")


STAGES: dict[str, type] = {
    "run": RunConfig,
    "sft": SFTConfig,
    "soup": SoupConfig,
    "data": DataConfig,
    "reward": RewardConfig,
    "rl": RLConfig,
    "dpo": DPOConfig,
    "eval": EvalConfig,
}
