"""Supervised fine-tuning of K models from one base that differ only in seed (data order, dropout,
LoRA initialisation): the ingredients of the model soup.

One explicit training loop, in the order it runs:
  1. tokenize the data once (prompt tokens masked out of the loss unless `completion_only_loss=False`);
  2. per seed: seed every RNG, load the base (optionally wrap it in LoRA), build AdamW + LR schedule;
  3. each optimizer step accumulates `grad_accum_steps` micro-batches in a seeded order; the loss is the
     token-level cross-entropy summed over the window divided by its number of target tokens, so
     accumulation gives exactly the gradient of one large batch;
  4. clip, step, checkpoint every `save_steps` (model, optimizer, scheduler, RNG and data position);
  5. write a standard Hugging Face model directory (LoRA merged, the adapter kept in `adapter/`), then
     the completion marker last.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from rich.markup import escape
from transformers import PreTrainedTokenizerBase, get_scheduler

from salsa import runtime
from salsa.checkpoint import Checkpointer
from salsa.config import SFTConfig
from salsa.engine import OWNER_MARKER, Stage, owner
from salsa.errors import ConfigError, SalsaError
from salsa.io import COMPLETE_MARKER, atomic_write_json
from salsa.logs import FiniteGuard, MetricsLog
from salsa.models import load_tokenizer, model_config, save_model, trainable_model
from salsa.progress import console, training_progress
from salsa.seeding import batch_stream, generator
from salsa.tokenization import IGNORE_INDEX, collate, tokenize_sft_rows

SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
# The K models of one stage differ only in these; a finished model is reused when K grows.
MEMBER_FIELDS = ("num_models", "seeds", "seed")


def seeds_of(config: SFTConfig) -> list[int]:
    return list(config.seeds) if config.seeds is not None else [config.seed + i for i in range(config.num_models)]


def token_cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over target tokens of -log p(token): position t predicts label t+1; IGNORE_INDEX is skipped."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def count_targets(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def predicting_positions(labels: torch.Tensor) -> int:
    """How many of the last positions predict a target token, from the first position that does to the end (rows
    right-padded): the output layer needs only those; with completion-only loss, not the prompts'."""
    predicting = (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero()
    return labels.shape[1] - int(predicting[0]) if len(predicting) else labels.shape[1]


def train_sft(
    config: SFTConfig, *, seeds: list[int] | None = None, overwrite: bool = False, show_progress: bool = True
) -> list[Path]:
    """Train one model per seed from `config.model`; returns the model directories (`sft-0`, `sft-1`, ...).

    A model whose directory is already complete with the same config and seed is reused (so raising K trains
    only the new models); an unfinished one resumes from its newest checkpoint.
    """
    if seeds is not None:
        config = dataclasses.replace(config, seeds=list(seeds), num_models=len(seeds))
    with Stage(config, overwrite=overwrite, ignore=MEMBER_FIELDS) as stage:
        tokenizer = load_tokenizer(config.model)
        positions = getattr(model_config(config.model), "max_position_embeddings", None)
        if positions is not None and config.max_length > positions:
            raise ConfigError(f"sft.max_length {config.max_length} exceeds the model's {positions} positions")
        examples = tokenize_sft_rows(tokenizer, stage.inputs["data"], config.max_length, config.completion_only_loss)
        paths = []
        for index, seed in enumerate(seeds_of(config)):
            out = stage.out / f"sft-{index}"
            own, data = member_data(config, examples, index)
            member = {"seed": seed, "data": data}
            if _member_finished(out, member, stage.fingerprint):
                console.print(f"[green]{escape(str(out))}[/] is complete; reusing it")
            else:
                _train_one(config, member, stage.fingerprint, own, tokenizer, out, show_progress)
            paths.append(out)
        stage.finish({"seeds": seeds_of(config)})
    return paths


def member_data(config: SFTConfig, examples: list, index: int) -> tuple[list, str]:
    """The examples model `index` of the K trains on, and what they are (recorded with the model).

    none: all of them (the K models differ in seed and data order only); disjoint: the index-th of K disjoint
    shards of a seeded permutation; bootstrap: as many draws with replacement, seeded by the model's seed.
    """
    k, seed = len(seeds_of(config)), seeds_of(config)[index]
    if config.data_shards == "disjoint":
        order = torch.randperm(len(examples), generator=generator(config.seed, "shards")).tolist()
        return [examples[i] for i in order[index::k]], f"shard {index + 1} of {k}"
    if config.data_shards == "bootstrap":
        draws = torch.randint(len(examples), (len(examples),), generator=generator(seed, "bootstrap")).tolist()
        return [examples[i] for i in draws], f"bootstrap resample {seed}"
    return examples, "all"


def _member_finished(out: Path, member: dict, fingerprint: str) -> bool:
    """Whether model directory `out` holds a finished model of this seed and data; refuses another one."""
    recorded = owner(out) if out.is_dir() else None
    if recorded is None:
        return False
    trained = {"seed": recorded.get("seed"), "data": recorded.get("data", "all")}
    if trained != member or recorded.get("fingerprint") != fingerprint:
        raise SalsaError(
            f"{out} holds a model of seed {trained['seed']} trained on {trained['data']}, and this config asks seed "
            f"{member['seed']} on {member['data']} there; pass --overwrite to retrain, or choose another output_dir"
        )
    return (out / COMPLETE_MARKER).is_file()


def _train_one(
    config: SFTConfig,
    member: dict,
    fingerprint: str,
    examples: list[dict[str, list[int]]],
    tokenizer: PreTrainedTokenizerBase,
    out: Path,
    show_progress: bool,
) -> None:
    accelerator = runtime.accelerator()
    main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    seed = member["seed"]
    set_seed(seed)
    core = runtime.place(_fresh_model(config), accelerator.device, config.sharding)  # sharded with fsdp2
    core.train()
    trainable = [p for p in core.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    global_batch = config.batch_size * world
    micro_per_epoch = math.ceil(len(examples) / global_batch)
    total_steps = config.max_steps or max(1, math.ceil(config.num_epochs * micro_per_epoch / config.grad_accum_steps))
    # The scheduler is stepped by hand once per optimizer step (a prepared one steps once per process).
    warmup = round(config.warmup_ratio * total_steps)
    scheduler = get_scheduler(SCHEDULERS[config.lr_scheduler], optimizer, warmup, total_steps)
    # Replicated: DDP through Accelerate (gradients averaged during the backward pass); FSDP2 does its own.
    model = core if runtime.is_sharded(core) else accelerator.prepare(core)
    if main:  # the model directory of this seed, from here on a run that can resume
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / OWNER_MARKER, {"stage": "sft", **member, "fingerprint": fingerprint})
    checkpoints = Checkpointer(
        out / "checkpoints", core, optimizer, every=config.save_steps, scheduler=scheduler,
        identity={"seed": seed, "world_size": world},
    )  # fmt: skip
    counters = checkpoints.resume() or {"step": 0, "micro_step": 0}
    step, micro_step = counters["step"], counters["micro_step"]
    guard = FiniteGuard("sft", config.on_nonfinite)
    dtype = runtime.compute_dtype(config.mixed_precision)
    # Every rank walks the same global order and takes its own slice of each global micro-batch.
    stream = batch_stream([1] * len(examples), global_batch, seed, start=micro_step)
    bar = training_progress(disable=not show_progress or not main)
    with MetricsLog(out, "sft", config, resume_step=step, enabled=main) as log, bar as progress:
        task = progress.add_task(f"sft seed {seed}", total=total_steps, completed=step, metrics="")
        while step < total_steps:
            started = time.perf_counter()
            window = [
                collate([examples[i] for i in next(stream)[rank::world]], tokenizer.pad_token_id)
                for _ in range(config.grad_accum_steps)
            ]
            totals = _accumulate(model, window, dtype)
            grad_norm = runtime.clip_gradients(trainable, config.max_grad_norm)
            loss = float(totals[1] / totals[0].clamp(min=1))
            if guard.ok(step + 1, loss=loss, grad_norm=float(grad_norm)):
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            micro_step += config.grad_accum_steps
            record = {
                "step": step, "loss": loss, "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0],
                "tokens": int(totals[2]), "tokens_per_s": float(totals[2]) / (time.perf_counter() - started),
                "skipped_steps": guard.skipped,
            }  # fmt: skip
            if step % config.logging_steps == 0 or step == total_steps:
                log.write(record)
            progress.update(task, advance=1, metrics=f"loss {loss:.3f}  {record['tokens_per_s']:.0f} tok/s")
            checkpoints.save_if_due(step, total_steps, {"micro_step": micro_step})
    runtime.check_replicas_agree(core, what=f"weights of {out}")
    whole = runtime.full_model(core, lambda: _fresh_model(config))
    if main:
        save_model(whole, tokenizer, out, adapter=config.use_lora)
        marker = {"stage": "sft", **member, "steps": total_steps, "fingerprint": fingerprint}
        atomic_write_json(out / COMPLETE_MARKER, {**marker, "skipped_steps": guard.skipped})
    checkpoints.clear()
    accelerator.wait_for_everyone()
    accelerator.free_memory()


def _accumulate(model, window: list[dict[str, torch.Tensor]], dtype: torch.dtype | None) -> torch.Tensor:
    """Forward and backward passes of one accumulation window, the gradients those of the mean token loss over
    the window's target tokens on every process; returns [target tokens, summed loss, input tokens] over all."""
    accelerator = runtime.accelerator()
    world = accelerator.num_processes
    # [target tokens, summed loss, input tokens] of this process, reduced over processes for the logs.
    local = torch.zeros(3, dtype=torch.float64, device=accelerator.device)
    local[0] = sum(count_targets(b["labels"]) for b in window)
    num_targets = accelerator.reduce(local[0].clone(), reduction="sum").clamp(min=1)
    for i, batch in enumerate(window):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with runtime.gradient_sync(model, sync=i == len(window) - 1), runtime.autocast(dtype):
            keep = predicting_positions(batch["labels"])
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
            summed = token_cross_entropy_sum(out.logits, batch["labels"][:, -keep:])
        # DDP averages gradients over ranks, hence the factor `world`.
        accelerator.backward(summed * world / num_targets)
        local[1] += summed.detach()
        local[2] += batch["attention_mask"].sum()
    return accelerator.reduce(local, reduction="sum")


def _fresh_model(config: SFTConfig):
    """The base model as training starts from it (LoRA-wrapped with `use_lora`)."""
    return trainable_model(
        config.model, use_lora=config.use_lora, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout, lora_target_modules=config.lora_target_modules,
        activation_checkpointing=config.gradient_checkpointing,
    )  # fmt: skip
