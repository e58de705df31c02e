"""One dataclass per stage, loaded from YAML and overridden from the command line.

A YAML file holds either one stage's keys at top level, or a whole-run config with one section per
stage (`sft:`, `soup:`, ...). Overrides are `key=value` strings; the key may carry the section prefix
(`sft.learning_rate=1e-5`). Unknown keys are errors that name the key and suggest the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from salsa.errors import ConfigError
from salsa.io import atomic_write_text

DEFAULT_MODEL = "smollm2-135m"


def option(default: Any = None, help: str = "", factory: Any = None) -> Any:
    """A config field with its help text (shown by `salsa <stage> --help`)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class SFTConfig:
    """Supervised fine-tuning of K models that differ only in seed."""

    model: str = option(DEFAULT_MODEL, "hub id, local model dir, .gguf file, or smollm2-135m (offline default)")
    data: str = option("builtin:reviews", "JSONL/Parquet file, `datasets` dir or hub id, or builtin:<task>")
    data_split: str = option("train", "split to read from a `datasets` source")
    output_dir: str = option("runs/sft", "where sft-0, sft-1, ... are written")
    num_models: int = option(2, "K: how many models to train")
    seed: int = option(0, "first seed; the K models use seed, seed+1, ...")
    seeds: list[int] | None = option(None, "explicit seeds (overrides seed and num_models)")
    max_steps: int | None = option(40, "optimizer steps per model; null trains for num_epochs")
    num_epochs: float = option(1.0, "epochs per model when max_steps is null")
    batch_size: int = option(8, "micro-batch size per device")
    grad_accum_steps: int = option(1, "micro-batches per optimizer step")
    learning_rate: float = option(3e-5, "peak learning rate (AdamW)")
    lr_scheduler: str = option("cosine", "cosine | linear | constant (after warmup)")
    warmup_ratio: float = option(0.1, "fraction of steps spent in linear warmup")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    max_length: int = option(256, "tokens per example (prompt + completion), truncated beyond")
    completion_only_loss: bool = option(True, "mask prompt tokens out of the loss; false trains on everything")
    mixed_precision: str = option("auto", "auto (bf16 where the GPU supports it, else fp32) | no | bf16 | fp16")
    use_lora: bool = option(False, "train LoRA adapters (PEFT) instead of all weights; saved merged")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA scaling numerator")
    lora_dropout: float = option(0.05, "dropout on the LoRA input")
    lora_target_modules: list[str] | None = option(None, "module names to adapt; null adapts all linear layers")
    save_steps: int = option(0, "checkpoint every N steps (0: none); a rerun resumes from the newest")
    logging_steps: int = option(1, "write metrics every N steps")


@dataclass
class SoupConfig:
    """Weighted average of K >= 2 fine-tuned models, or a point on the line between two."""

    models: list[str] = option(help="ingredient model directories (or LoRA adapter dirs)", factory=list)
    output_dir: str = option("runs/soup", "where the soup model directory is written")
    weights: list[float] | None = option(None, "one weight per model; null is uniform")
    alpha: float | None = option(None, "two models only: result = (1 - alpha) * A + alpha * B")
    allow_extrapolation: bool = option(False, "allow negative weights and alpha outside [0, 1]")
    dtype: str | None = option(None, "output dtype: float32 | bfloat16 | float16; null keeps the ingredients'")
    max_shard_size: str = option("2GB", "largest output shard, e.g. 500MB or 5GB")


@dataclass
class DataConfig:
    """Prompts, SFT demonstrations and preference pairs of a built-in task, made offline."""

    task: str = option("reviews", "built-in task name")
    model: str = option(DEFAULT_MODEL, "model whose samples become demonstrations and preference pairs")
    output_dir: str = option("runs/data", "where the JSONL files and datasheet.md are written")
    seed: int = option(0, "seed of sampling and labelling")
    samples_per_prompt: int = option(4, "n: samples per prompt (best-of-n demonstrations, all pairs of n)")
    max_new_tokens: int = option(40, "longest sampled response")
    temperature: float = option(0.8, "sampling temperature")
    top_p: float = option(0.95, "nucleus sampling: the smallest token set with this much probability")
    off_subject_samples: int = option(
        2, "samples of the same request about another subject added to each train prompt's pool (0: none)"
    )
    pairs_per_prompt: int | None = option(
        None, "training pairs kept per prompt (drawn from its own, its twin's and off-subject samples); null: all"
    )
    label_temperature: float = option(
        0.1, "Bradley-Terry label noise: P(a > b) = sigmoid((gold_a - gold_b) / t); 0 = none"
    )
    batch_size: int = option(96, "sequences sampled together")


@dataclass
class RewardConfig:
    """A Bradley-Terry reward model trained on chosen/rejected pairs."""

    backbone: str = option("encoder", "encoder (all-MiniLM-L6-v2, fast on a CPU) | causal (LM + scalar head)")
    model: str | None = option(None, "backbone weights; default MiniLM (encoder) or smollm2-135m (causal)")
    data: str = option("runs/data/prefs.jsonl", "training pairs: prompt/chosen/rejected (JSONL, Parquet, datasets)")
    data_split: str = option("train", "split to read from a `datasets` source")
    eval_data: str | None = option("runs/data/prefs_eval.jsonl", "held-out pairs; with gold_* fields, gold accuracy")
    output_dir: str = option("runs/reward", "where the reward model directory is written")
    seed: int = option(0, "seed of initialisation and data order")
    num_epochs: float = option(4.0, "passes over the training pairs")
    batch_size: int = option(
        32, "pairs per step, in whole prompts: a prompt's pairs share a step and each response is forwarded once"
    )
    learning_rate: float | None = option(
        None, "peak learning rate of the backbone (AdamW, linear decay after warmup); null: 1e-4 encoder, 1e-5 causal"
    )
    head_learning_rate: float = option(
        1e-3, "peak learning rate of the freshly initialised scalar head (it must move far; the backbone not)"
    )
    warmup_ratio: float = option(0.1, "fraction of steps in linear warmup")
    weight_decay: float = option(0.01, "AdamW weight decay")
    max_length: int = option(128, "tokens per (prompt, response)")
    restarts: int = option(
        2, "fresh starts (seed + 1, + 2, ...) when the loss is still ln 2 after one epoch: a stuck run rarely recovers"
    )


@dataclass
class RLConfig:
    """Online RL (PPO, RLOO, GRPO) or offline DPO with a choice of KL reference."""

    algorithm: str = option("ppo", "ppo | rloo | grpo | dpo")
    init: str = option("runs/sft/sft-0", "policy start: an SFT model or a soup directory")
    reference: str = option("sft", "KL anchor: sft | soup | ema | none")
    reference_model: str | None = option(None, "sft/soup: the reference directory; default: init")
    reference_models: list[str] | None = option(None, "soup: average these models in memory instead")
    reference_weights: list[float] | None = option(None, "weights of reference_models; default uniform")
    ema_decay: float = option(0.99, "ema: reference <- decay * reference + (1 - decay) * policy, every step")
    sft_model: str | None = option(None, "also log KL to this SFT model (an extra forward pass per step)")
    reward_model: str = option("runs/reward/model", "reward model directory from `salsa reward`")
    prompts: str = option("runs/data/prompts_train.jsonl", "training prompts (JSONL/Parquet/datasets with 'prompt')")
    preference_data: str = option("runs/data/prefs.jsonl", "dpo: prompt/chosen/rejected pairs")
    task: str | None = option("reviews", "built-in task whose gold judge is logged; null for none")
    output_dir: str = option("runs/rl", "checkpoints/, snapshots/, metrics.jsonl, tensorboard/, final/")
    seed: int = option(0, "seed of prompt order, sampling and initialisation")
    steps: int = option(30, "RL iterations (rollout + update); dpo: optimizer steps")
    prompts_per_step: int = option(16, "prompts per iteration")
    samples_per_prompt: int = option(1, "completions per prompt (rloo/grpo need >= 2)")
    max_new_tokens: int = option(40, "longest response")
    temperature: float = option(1.0, "sampling temperature (log-probs use the same temperature)")
    learning_rate: float = option(1e-5, "AdamW learning rate (constant)")
    ppo_epochs: int = option(1, "passes over each rollout")
    minibatch_size: int = option(16, "sequences per gradient step within a rollout")
    clip_range: float = option(0.2, "PPO ratio clip epsilon")
    value_clip_range: float = option(0.2, "value clip epsilon")
    vf_coef: float = option(0.1, "value loss weight")
    gamma: float = option(1.0, "discount")
    lam: float = option(0.95, "GAE lambda")
    kl_coef: float = option(0.05, "beta: KL penalty coefficient (initial value when adaptive)")
    adaptive_kl: bool = option(False, "Ziegler et al. adaptive beta towards target_kl")
    target_kl: float = option(6.0, "adaptive KL target (nats per sequence)")
    kl_horizon: int = option(10000, "adaptive KL horizon (samples)")
    whiten_advantages: bool = option(True, "normalise advantages per rollout")
    reward_clip: float = option(5.0, "clip normalised reward-model scores to +-this")
    missing_eos_penalty: float | None = option(None, "subtract from the score of responses cut at max_new_tokens")
    value_head: str = option("shared", "shared (head on the policy trunk) | separate (own critic model)")
    use_lora: bool = option(False, "train LoRA adapters on the policy")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA scaling numerator")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    dpo_beta: float = option(0.1, "dpo: beta")
    dpo_batch_size: int = option(8, "dpo: pairs per step")
    save_steps: int = option(10, "checkpoint every N steps (0: none); a rerun resumes from the newest")
    snapshot_steps: int = option(
        0, "keep the trained weights (LoRA: adapters only) every N steps, for eval at matched KL (0: none)"
    )
    collapse_fraction: float = option(0.25, "flag a collapse when mean length falls below this fraction of step 1's")


@dataclass
class EvalConfig:
    """Policies compared on held-out prompts: win rates with bootstrap intervals, KL, reward landscape."""

    policies: dict[str, list[str]] = option(
        help="name: model dir, or a list of dirs (one per RL seed), e.g. {sft: [runs/sft/sft-0], ppo: [...]}",
        factory=dict,
    )
    comparisons: list[str] | None = option(None, "pairs 'a:b' to compare (a against b); null: every pair")
    prompts: str = option("runs/data/prompts_eval.jsonl", "in-distribution held-out prompts")
    ood_prompts: str | None = option("runs/data/prompts_ood.jsonl", "out-of-distribution prompts; null for none")
    reward_model: str | None = option("runs/reward/model", "reward model judge; null for none")
    task: str | None = option("reviews", "built-in task whose gold judge scores responses; null for none")
    sft_model: str | None = option("runs/sft/sft-0", "KL of each policy to this SFT model (in-distribution prompts)")
    soup_model: str | None = option("runs/soup", "KL of each policy to this soup")
    landscape_models: list[str] | None = option(
        None, "two models, SFT-1 and SFT-2: score the line (1 - alpha) * SFT-1 + alpha * SFT-2"
    )
    landscape_alphas: list[float] = option(
        help="alphas of the landscape (0 and 1 are the endpoints, 0.5 the soup)",
        factory=lambda: [-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5],
    )
    matched_kl: bool = option(
        True, "also compare two RL runs at matched KL to SFT, using their snapshots (rl.snapshot_steps)"
    )
    max_new_tokens: int = option(40, "longest response")
    temperature: float = option(0.7, "sampling temperature (pure sampling; KL is between the tempered models)")
    batch_size: int = option(64, "prompts sampled together")
    seed: int = option(0, "sampling seed, the same for every policy (common random numbers)")
    tie_margin: float = option(0.0, "scores closer than this count as a tie")
    bootstrap_samples: int = option(2000, "bootstrap resamples for the confidence intervals")
    confidence: float = option(0.95, "confidence level of the intervals")
    output_dir: str = option("runs/eval", "where results.json and samples.jsonl are written")


@dataclass
class RunConfig:
    """`salsa run`: the whole pipeline. Stage paths left at their defaults are wired into the run directory."""

    output_dir: str = option("runs/salsa", "run directory: data/, reward/, sft/, soup/, rl/, eval/, report/")
    seeds: int = option(1, "RL seeds per method (PPO and SALSA); results aggregate over them")
    methods: list[str] = option(
        help="RL runs to compare: ppo (init and reference sft-0) and salsa (init and reference soup)",
        factory=lambda: ["salsa", "ppo"],
    )


STAGES: dict[str, type] = {
    "run": RunConfig,
    "sft": SFTConfig,
    "soup": SoupConfig,
    "data": DataConfig,
    "reward": RewardConfig,
    "rl": RLConfig,
    "eval": EvalConfig,
}

C = TypeVar("C")


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], where)
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of name: value, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}[{k}]") for k, v in value.items()}
    if origin is list:
        if isinstance(value, str):
            parsed = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
            value = parsed
        if not isinstance(value, list):
            value = [value]
        return [_coerce(v, args[0] if args else str, where) for v in value]
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes", "on"):
                return True
            if str(value).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(value)
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return str(value)
    except (TypeError, ValueError):
        name = getattr(annotation, "__name__", str(annotation))
        raise ConfigError(f"{where}: expected {name}, got {value!r}") from None
    return value


def build_config(cls: type[C], values: dict[str, Any], where: str = "config") -> C:
    """Instantiate a stage dataclass from a mapping, checking every key and type."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key '{key}'{_suggest(key, names)}")
        kwargs[key] = _coerce(value, hints[key], f"{where}: key '{key}'")
    return cls(**kwargs)


def parse_overrides(overrides: list[str], section: str) -> dict[str, Any]:
    """Turn `key=value` / `section.key=value` strings into a mapping for one stage."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, for example {section}.seed=1")
        key, value = item.split("=", 1)
        key = key.strip()
        prefix, _, rest = key.partition(".")
        if rest:
            if prefix not in STAGES:
                raise ConfigError(f"--set {item!r}: unknown section '{prefix}'{_suggest(prefix, list(STAGES))}")
            if prefix != section:
                continue  # meant for another stage of a whole-run config
            key = rest
        out[key] = value
    return out


def load_stage_config(
    cls: type[C], section: str, path: str | Path | None = None, overrides: list[str] | None = None
) -> C:
    """Load one stage's config from an optional YAML file plus `--set` overrides."""
    values: dict[str, Any] = {}
    where = ""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e.__class__.__name__}: {e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values at top level")
        if any(k in STAGES for k in raw):
            unknown = [k for k in raw if k not in STAGES]
            if unknown:
                raise ConfigError(f"{path}: unknown section '{unknown[0]}'{_suggest(unknown[0], list(STAGES))}")
            raw = raw.get(section) or {}
            where = f"{path} [{section}]"
        else:
            where = str(path)
        values.update(raw)
        config = build_config(cls, values, where)
        values = dataclasses.asdict(config)
    values.update(parse_overrides(overrides or [], section))
    if overrides:
        where = f"{where} / --set" if where else "--set"
    return build_config(cls, values, where or "config")


def describe_fields(cls: type) -> str:
    """One line per config key: name, default and help, for the CLI's --help."""
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"{f.name} = {default!r}: {f.metadata.get('help', '')}")
    return "\n".join(lines)


def config_to_yaml(config: Any, section: str | None = None) -> str:
    data = dataclasses.asdict(config)
    return yaml.safe_dump({section: data} if section else data, sort_keys=False)


def fingerprint(config: Any, **ignored: Any) -> str:
    """A short hash of a config, with `ignored` fields replaced (those that do not change the result)."""
    import hashlib

    relevant = dataclasses.replace(config, **ignored)
    return hashlib.sha256(config_to_yaml(relevant).encode()).hexdigest()[:16]


def save_config(config: Any, path: str | Path, section: str | None = None) -> None:
    """Write the resolved config next to a stage's outputs."""
    atomic_write_text(path, config_to_yaml(config, section))
