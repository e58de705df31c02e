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

import contextlib
import dataclasses
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.tensorboard import SummaryWriter
from transformers import PreTrainedTokenizerBase, get_scheduler

from salsa.config import SFTConfig, fingerprint, save_config
from salsa.data import IGNORE_INDEX, collate, load_records, parse_sft_rows, tokenize_sft_rows
from salsa.errors import ConfigError, SalsaError
from salsa.io import (
    COMPLETE_MARKER,
    JsonlWriter,
    atomic_dir,
    atomic_write_json,
    is_complete,
    mark_complete,
    read_json,
    record_digests,
    truncate_jsonl,
)
from salsa.models import add_lora, load_causal_lm, load_tokenizer
from salsa.progress import console, training_progress

SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
TRAINER_STATE = "trainer_state.json"


def validate_sft_config(config: SFTConfig) -> None:
    positive = ["num_models", "batch_size", "grad_accum_steps", "max_length", "learning_rate", "lora_r"]
    for name in positive:
        if getattr(config, name) <= 0:
            raise ConfigError(f"sft.{name} must be > 0, got {getattr(config, name)}")
    if config.max_steps is not None and config.max_steps <= 0:
        raise ConfigError(f"sft.max_steps must be > 0 or null (train for num_epochs), got {config.max_steps}")
    if config.max_steps is None and config.num_epochs <= 0:
        raise ConfigError(f"sft.num_epochs must be > 0, got {config.num_epochs}")
    if config.lr_scheduler not in SCHEDULERS:
        raise ConfigError(f"sft.lr_scheduler must be one of {', '.join(SCHEDULERS)}, got '{config.lr_scheduler}'")
    if not 0 <= config.warmup_ratio < 1:
        raise ConfigError(f"sft.warmup_ratio must be in [0, 1), got {config.warmup_ratio}")
    if config.mixed_precision not in ("auto", "no", "bf16", "fp16"):
        raise ConfigError(f"sft.mixed_precision must be auto, no, bf16 or fp16, got '{config.mixed_precision}'")
    if config.seeds is not None and len(set(config.seeds)) != len(config.seeds):
        raise ConfigError(f"sft.seeds must be distinct, got {config.seeds}")


def resolve_mixed_precision(mode: str) -> str:
    """'auto' means bf16 where the GPU supports it and fp32 elsewhere (bf16 on a CPU is slow and lossy)."""
    if mode != "auto":
        return mode
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def seeds_of(config: SFTConfig) -> list[int]:
    return list(config.seeds) if config.seeds is not None else [config.seed + i for i in range(config.num_models)]


def micro_batch_stream(num_examples: int, batch_size: int, seed: int, start: int = 0) -> Iterator[list[int]]:
    """Example indices of each micro-batch, epoch after epoch, in an order fixed by the seed.

    `start` skips that many micro-batches, so a resumed run sees exactly the data it would have seen.
    """
    per_epoch = math.ceil(num_examples / batch_size)
    epoch, offset = divmod(start, per_epoch)
    while True:
        order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for b in range(offset, per_epoch):
            yield order[b * batch_size : (b + 1) * batch_size].tolist()
        epoch, offset = epoch + 1, 0


def token_cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over target tokens of -log p(token): position t predicts label t+1; IGNORE_INDEX is skipped."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def count_targets(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def _latest_checkpoint(checkpoints: Path) -> Path | None:
    found = sorted(p for p in checkpoints.glob("step-*") if (p / TRAINER_STATE).is_file())
    return found[-1] if found else None


def _move_into(src: Path, dst: Path) -> None:
    """Move every file of `src` into `dst`, each by an atomic rename (subfolders as a whole)."""
    for item in src.iterdir():
        target = dst / item.name
        if target.is_dir():
            shutil.rmtree(target)
        item.replace(target)


def train_sft(
    config: SFTConfig, *, seeds: list[int] | None = None, overwrite: bool = False, show_progress: bool = True
) -> list[Path]:
    """Train one model per seed from `config.model`; returns the model directories (`sft-0`, `sft-1`, ...).

    A model whose directory is already complete with the same config is reused; an unfinished one resumes
    from its newest checkpoint.
    """
    if seeds is not None:
        config = dataclasses.replace(config, seeds=list(seeds), num_models=len(seeds))
    validate_sft_config(config)
    out_root = Path(config.output_dir)
    tokenizer = load_tokenizer(config.model)
    conversations = parse_sft_rows(*load_records(config.data, config.data_split))
    examples = tokenize_sft_rows(tokenizer, conversations, config.max_length, config.completion_only_loss)
    save_config(config, out_root / "config.yaml", section="sft")
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(config.mixed_precision))
    paths = []
    for index, seed in enumerate(seeds_of(config)):
        out = out_root / f"sft-{index}"
        # The output location does not change what is trained.
        config_hash = fingerprint(config, output_dir="", seeds=None, seed=seed, num_models=1)
        if is_complete(out) and not overwrite:
            if read_json(out / COMPLETE_MARKER).get("fingerprint") != config_hash:
                raise SalsaError(
                    f"{out} holds a model trained with a different config; pass --overwrite or another output_dir"
                )
            console.print(f"[green]{out}[/] is complete; reusing it")
        else:
            if overwrite and out.exists():
                shutil.rmtree(out)
            _train_one(config, seed, config_hash, examples, tokenizer, out, accelerator, show_progress)
        paths.append(out)
    return paths


def _train_one(
    config: SFTConfig,
    seed: int,
    config_hash: str,
    examples: list[dict[str, list[int]]],
    tokenizer: PreTrainedTokenizerBase,
    out: Path,
    accelerator: Accelerator,
    show_progress: bool,
) -> None:
    set_seed(seed)
    model = load_causal_lm(config.model)
    if config.use_lora:
        model = add_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    micro_per_epoch = math.ceil(len(examples) / (config.batch_size * accelerator.num_processes))
    total_steps = config.max_steps or max(1, math.ceil(config.num_epochs * micro_per_epoch / config.grad_accum_steps))
    scheduler = get_scheduler(
        SCHEDULERS[config.lr_scheduler],
        optimizer,
        num_warmup_steps=round(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / "checkpoints"
    step, micro_step = 0, 0
    resume_from = _latest_checkpoint(checkpoints)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = read_json(resume_from / TRAINER_STATE)
        step, micro_step = state["step"], state["micro_step"]
        console.print(f"resuming {out} from {resume_from.name}")
    truncate_jsonl(out / "metrics.jsonl", step)
    metrics_log = JsonlWriter(out / "metrics.jsonl")
    tensorboard = SummaryWriter(str(out / "tensorboard"))

    # Every rank walks the same global order and takes its own slice of each global micro-batch.
    global_batch = config.batch_size * accelerator.num_processes
    stream = micro_batch_stream(len(examples), global_batch, seed, start=micro_step)
    rank, world = accelerator.process_index, accelerator.num_processes
    with training_progress(disable=not show_progress or not accelerator.is_main_process) as progress:
        task = progress.add_task(f"sft seed {seed}", total=total_steps, completed=step, metrics="")
        while step < total_steps:
            started = time.perf_counter()
            window = [
                collate([examples[i] for i in next(stream)[rank::world]], tokenizer.pad_token_id)
                for _ in range(config.grad_accum_steps)
            ]
            local_targets = torch.tensor(sum(count_targets(b["labels"]) for b in window), device=accelerator.device)
            num_targets = accelerator.reduce(local_targets, reduction="sum").clamp(min=1)
            loss_sum, tokens = 0.0, 0
            for i, batch in enumerate(window):
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                sync = i == len(window) - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    summed = token_cross_entropy_sum(logits, batch["labels"])
                    # DDP averages gradients over ranks, hence the factor `world`.
                    accelerator.backward(summed * world / num_targets)
                loss_sum += summed.item()
                tokens += int(batch["attention_mask"].sum())
            grad_norm = accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            micro_step += config.grad_accum_steps
            elapsed = time.perf_counter() - started
            record = {
                "step": step,
                "loss": loss_sum / max(1, int(local_targets)),
                "grad_norm": float(grad_norm),
                "lr": scheduler.get_last_lr()[0],
                "tokens": tokens,
                "tokens_per_s": tokens / elapsed,
            }
            if accelerator.is_main_process and (step % config.logging_steps == 0 or step == total_steps):
                metrics_log.write(record)
                for key, value in record.items():
                    if key != "step":
                        tensorboard.add_scalar(f"sft/{key}", value, step)
            progress.update(task, advance=1, metrics=f"loss {record['loss']:.3f}  {record['tokens_per_s']:.0f} tok/s")
            if config.save_steps and step % config.save_steps == 0 and step < total_steps:
                _save_checkpoint(accelerator, checkpoints / f"step-{step:07d}", step, micro_step, seed)
    metrics_log.close()
    tensorboard.close()
    _save_final(accelerator, model, tokenizer, out, config.use_lora)
    if accelerator.is_main_process:
        mark_complete(out, {"stage": "sft", "seed": seed, "steps": total_steps, "fingerprint": config_hash})
        shutil.rmtree(checkpoints, ignore_errors=True)
    accelerator.free_memory()


def _save_checkpoint(accelerator: Accelerator, path: Path, step: int, micro_step: int, seed: int) -> None:
    """Full training state (model, optimizer, scheduler, RNG) plus the data position; older ones removed."""
    if accelerator.is_main_process:
        with atomic_dir(path) as tmp:
            accelerator.save_state(str(tmp))
            atomic_write_json(tmp / TRAINER_STATE, {"step": step, "micro_step": micro_step, "seed": seed})
        for older in path.parent.glob("step-*"):
            if older.name < path.name:
                shutil.rmtree(older, ignore_errors=True)
    accelerator.wait_for_everyone()


def _save_final(accelerator: Accelerator, model, tokenizer: PreTrainedTokenizerBase, out: Path, lora: bool) -> None:
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    model = accelerator.unwrap_model(model)
    with tempfile.TemporaryDirectory(dir=out, prefix=".final-") as tmp:
        tmp = Path(tmp)
        if lora:
            model.save_pretrained(tmp / "adapter")
            model = model.merge_and_unload()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _move_into(tmp, out)
    record_digests(out)  # a soup of these models then reads each weight file once, without hashing it
