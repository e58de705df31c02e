"""Offline DPO (Rafailov et al. 2023) on preference pairs, with the same reference options as online RL.

    loss = -log sigmoid(beta * ((log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))))

`reference: none` drops the reference terms (reference-free); a reference schedule (ema, soft, hard: TR-DPO's
updates) moves the reference towards the policy after each optimizer step (a step skipped for a non-finite loss
leaves it, as in online RL). `salsa dpo` runs it, from its own config (`DPOConfig`, the `dpo:` section).
Like online RL, a run checkpoints every `save_steps` and a rerun resumes from the newest checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from salsa import runtime
from salsa.checkpoint import Checkpointer
from salsa.config import DPOConfig
from salsa.data import Conversation, as_messages
from salsa.engine import Stage, run_stage
from salsa.errors import ConfigError
from salsa.logs import FiniteGuard, MetricsLog
from salsa.models import forward_logits, load_tokenizer, save_model
from salsa.policy import fresh_policy
from salsa.progress import training_progress
from salsa.rl.core import dpo_loss
from salsa.rl.reference import Reference, load_reference
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


def train_dpo(config: DPOConfig, show_progress: bool = True, overwrite: bool = False) -> Path:
    """Run DPO as configured; returns the directory of the final policy (`output_dir/final`)."""
    return run_stage(config, lambda stage: _run(config, stage, show_progress), overwrite) / "final"


def _run(config: DPOConfig, stage: Stage, show_progress: bool) -> None:
    accelerator = runtime.accelerator()
    out, device, main = stage.out, accelerator.device, accelerator.is_main_process
    world, rank = runtime.world_size(), runtime.process_state().process_index
    if config.batch_size < world:
        raise ConfigError(f"dpo.batch_size ({config.batch_size}) must be at least the {world} processes")
    torch.manual_seed(config.seed)
    pairs = stage.inputs["data"]
    tokenizer = load_tokenizer(config.init)
    core = fresh_policy(config, config.gradient_checkpointing)
    core.to(device).train()
    reference = load_reference(config, core, device)
    trainable = [p for p in core.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate)
    policy = accelerator.prepare(core)  # DDP when launched on several processes
    checkpoints = Checkpointer(
        out / "checkpoints", core, optimizer, every=config.save_steps, identity={"world_size": world}, extra=reference
    )
    step = (checkpoints.resume() or {"step": 0})["step"]
    guard = FiniteGuard("dpo", config.on_nonfinite)
    dtype = runtime.compute_dtype(config.mixed_precision)
    batches = batch_stream([1] * len(pairs), config.batch_size, derive_seed(config.seed, "pairs"), step)
    progress_bar = training_progress(disable=not show_progress or not main)
    with MetricsLog(out, "dpo", config, resume_step=step, enabled=main) as log, progress_bar as progress:
        task = progress.add_task(f"dpo ({config.reference} ref)", total=config.steps, completed=step, metrics="")
        while step < config.steps:
            step += 1
            # Every process takes its share of the step's pairs; DDP averages the gradients.
            batch_pairs = [pairs[i] for i in next(batches)[rank::world]]
            with runtime.autocast(dtype):
                losses, margin = _pair_losses(policy, reference, tokenizer, batch_pairs, config.beta, device)
            # The loss of this process's pairs, scaled to its share of the global mean (DDP averages).
            (losses.sum() * world / config.batch_size).backward()
            grad_norm = runtime.clip_gradients(trainable, config.max_grad_norm)
            global_loss = runtime.all_sum(losses.sum().detach()) / config.batch_size
            if guard.ok(step, loss=global_loss, grad_norm=grad_norm):
                optimizer.step()
                if reference is not None:
                    reference.update(core, step)
            optimizer.zero_grad(set_to_none=True)
            totals = runtime.all_sum(torch.stack([margin.sum(), (margin > 0).float().sum()]))
            record = {
                "step": step,
                "loss": float(global_loss),
                "margin": float(totals[0]) / config.batch_size,
                "accuracy": float(totals[1]) / config.batch_size,
                "skipped": guard.skipped,
            }
            log.write(record)
            progress.update(task, advance=1, metrics=f"loss {record['loss']:.3f}  acc {record['accuracy']:.2f}")
            checkpoints.save_if_due(step, config.steps, {})
    if main:
        save_model(core, tokenizer, out / "final")
    stage.finish({"algorithm": "dpo", "reference": config.reference, "skipped_steps": guard.skipped})
    checkpoints.clear()


def _pair_losses(policy, reference: Reference | None, tokenizer, pairs: list, beta: float, device):
    """Each pair's DPO loss and its (detached) implicit reward margin; chosen and rejected sequences of the batch go
    through each model in one forward pass."""
    examples = [
        tokenize_conversation(tokenizer, Conversation(as_messages(p.prompt), response), MAX_LENGTH)
        for responses in ([p.chosen for p in pairs], [p.rejected for p in pairs])
        for p, response in zip(pairs, responses, strict=True)
    ]
    batch = {k: v.to(device) for k, v in collate(examples, tokenizer.pad_token_id).items()}
    n = len(pairs)
    logp = sequence_logprobs(policy, batch)
    ref = torch.zeros_like(logp)
    if reference is not None:
        with torch.no_grad(), reference.scoring():
            ref = sequence_logprobs(reference.model, batch)
    losses = dpo_loss(logp[:n], logp[n:], ref[:n], ref[n:], beta, reduction="none")
    margin = ((logp[:n] - ref[:n]) - (logp[n:] - ref[n:])).detach()
    return losses, margin
