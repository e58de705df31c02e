"""Offline DPO (Rafailov et al. 2023) on preference pairs, with the same reference options as online RL.

    loss = -log sigmoid(beta * ((log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))))

`reference: none` drops the reference terms (reference-free); `ema` moves the reference after each step.
Like online RL, a run checkpoints every `save_steps` and a rerun resumes from the newest checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from salsa import runtime
from salsa.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from salsa.config import RLConfig
from salsa.data import Conversation, as_messages
from salsa.engine import Stage, run_stage
from salsa.errors import ConfigError, SalsaError
from salsa.logs import FiniteGuard, MetricsLog, check_finite_weights
from salsa.models import (
    add_lora,
    enable_activation_checkpointing,
    forward_logits,
    load_causal_lm,
    load_tokenizer,
    save_model,
)
from salsa.progress import console, training_progress
from salsa.rl.core import dpo_loss
from salsa.rl.reference import ema_update, load_reference, reference_weights, restore_reference
from salsa.seeding import batch_stream, derive_seed
from salsa.tokenization import IGNORE_INDEX, collate, tokenize_conversation

MAX_LENGTH = 512


def sequence_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum over completion tokens of log p(token): one number per sequence."""
    logits, _ = forward_logits(model, batch["input_ids"], batch["attention_mask"])
    labels = batch["labels"][:, 1:]
    targets = labels != IGNORE_INDEX
    logprobs = logits[:, :-1][targets].log_softmax(-1)
    token_logp = logprobs.gather(-1, labels[targets][:, None]).squeeze(-1)
    rows = targets.nonzero()[:, 0]
    return torch.zeros(len(labels), dtype=token_logp.dtype, device=token_logp.device).index_add(0, rows, token_logp)


def train_dpo(config: RLConfig, show_progress: bool = True, overwrite: bool = False) -> Path:
    return run_stage(config, lambda stage: _run(config, stage, show_progress), overwrite) / "final"


def _run(config: RLConfig, stage: Stage, show_progress: bool) -> None:
    accelerator = runtime.accelerator()
    out, device, main = stage.out, accelerator.device, accelerator.is_main_process
    world, rank = runtime.world_size(), runtime.process_state().process_index
    if config.dpo_batch_size < world:
        raise ConfigError(f"rl.dpo_batch_size ({config.dpo_batch_size}) must be at least the {world} processes")
    torch.manual_seed(config.seed)
    pairs = stage.inputs["preference_data"]
    tokenizer = load_tokenizer(config.init)
    core = load_causal_lm(config.init)
    if config.gradient_checkpointing:
        enable_activation_checkpointing(core)
    if config.use_lora:
        core = add_lora(core, config.lora_r, config.lora_alpha)
    core.to(device).train()
    reference = load_reference(config, core, device)
    ema = reference.model if reference is not None and config.reference == "ema" else None
    trainable = [p for p in core.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate)
    policy = accelerator.prepare(core)  # DDP when launched on several processes
    checkpoints, step = out / "checkpoints", 0
    resume_from = latest_checkpoint(checkpoints)
    if resume_from is not None:
        saved = load_checkpoint(resume_from, rank=rank)
        if saved.counters.get("world_size", 1) != world:
            raise SalsaError(f"{resume_from} was saved on {saved.counters.get('world_size', 1)} processes, not {world}")
        runtime.load_trainable_state(core, {k: v for k, v in saved.weights.items() if not k.startswith("reference.")})
        runtime.load_optimizer_state(core, optimizer, saved.optimizer_state)
        if ema is not None:
            restore_reference(ema, saved.weights)
        step = saved.counters["step"]
        console.print(f"resuming {out} from step {step}")
    guard = FiniteGuard("rl", config.on_nonfinite)
    dtype = runtime.compute_dtype(config.mixed_precision)
    batches = batch_stream([1] * len(pairs), config.dpo_batch_size, derive_seed(config.seed, "pairs"), step)
    progress_bar = training_progress(disable=not show_progress or not main)
    with MetricsLog(out, "dpo", resume_step=step, enabled=main) as log, progress_bar as progress:
        task = progress.add_task(f"dpo ({config.reference} ref)", total=config.steps, completed=step, metrics="")
        while step < config.steps:
            step += 1
            # Every process takes its share of the step's pairs; DDP averages the gradients.
            batch_pairs = [pairs[i] for i in next(batches)[rank::world]]
            # Chosen and rejected sequences of the batch go through each model in one forward pass.
            examples = [
                tokenize_conversation(tokenizer, Conversation(as_messages(p.prompt), response), MAX_LENGTH)
                for responses in ([p.chosen for p in batch_pairs], [p.rejected for p in batch_pairs])
                for p, response in zip(batch_pairs, responses, strict=True)
            ]
            batch = {k: v.to(device) for k, v in collate(examples, tokenizer.pad_token_id).items()}
            n = len(batch_pairs)
            with runtime.autocast(dtype):
                logp = sequence_logprobs(policy, batch)
                ref = torch.zeros_like(logp)
                if reference is not None:
                    with torch.no_grad(), reference.scoring():
                        ref = sequence_logprobs(reference.model, batch)
            # The loss of this process's pairs, scaled to its share of the global mean (DDP averages).
            losses = dpo_loss(logp[:n], logp[n:], ref[:n], ref[n:], config.dpo_beta, reduction="none")
            loss = losses.sum() * world / config.dpo_batch_size
            loss.backward()
            grad_norm = runtime.clip_gradients(trainable, config.max_grad_norm)
            global_loss = runtime.all_sum(losses.sum().detach()) / config.dpo_batch_size
            if guard.ok(step, loss=global_loss, grad_norm=grad_norm):
                optimizer.step()
                if ema is not None:
                    ema_update(ema, core, config.ema_decay)
            optimizer.zero_grad(set_to_none=True)
            margin = ((logp[:n] - ref[:n]) - (logp[n:] - ref[n:])).detach()
            totals = runtime.all_sum(torch.stack([margin.sum(), (margin > 0).float().sum()]))
            record = {
                "step": step,
                "loss": float(global_loss),
                "margin": float(totals[0]) / config.dpo_batch_size,
                "accuracy": float(totals[1]) / config.dpo_batch_size,
                "skipped": guard.skipped,
            }
            log.write(record)
            progress.update(task, advance=1, metrics=f"loss {record['loss']:.3f}  acc {record['accuracy']:.2f}")
            if config.save_steps and step % config.save_steps == 0 and step < config.steps:
                weights = runtime.trainable_state(core)
                if ema is not None:
                    weights.update(reference_weights(ema))
                check_finite_weights(weights, str(checkpoints))
                counters = {"step": step, "world_size": world}
                state = runtime.optimizer_state(core, optimizer)
                save_checkpoint(checkpoints / f"step-{step:07d}", weights, state, counters=counters)
    if main:
        save_model(core, tokenizer, out / "final")
    stage.finish({"algorithm": "dpo", "reference": config.reference, "skipped_steps": guard.skipped})
    if main:
        shutil.rmtree(checkpoints, ignore_errors=True)
