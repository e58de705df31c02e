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
from salsa.data import Conversation
from salsa.engine import Stage, run_stage
from salsa.logs import FiniteGuard, MetricsLog, check_finite_weights
from salsa.models import add_lora, base_model, lm_logits, load_causal_lm, load_tokenizer, save_model
from salsa.progress import console, training_progress
from salsa.rl.core import dpo_loss
from salsa.rl.reference import ema_update, load_reference, reference_weights, restore_reference
from salsa.seeding import batch_stream, derive_seed
from salsa.tokenization import IGNORE_INDEX, collate, tokenize_conversation

MAX_LENGTH = 512


def sequence_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum over completion tokens of log p(token): one number per sequence (the LM head runs on those only)."""
    hidden = (
        base_model(model)
        .get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        .last_hidden_state[:, :-1]
    )
    labels = batch["labels"][:, 1:]
    targets = labels != IGNORE_INDEX
    logprobs = lm_logits(model, hidden[targets]).float().log_softmax(-1)
    token_logp = logprobs.gather(-1, labels[targets][:, None]).squeeze(-1)
    rows = targets.nonzero()[:, 0]
    return torch.zeros(len(labels), dtype=token_logp.dtype, device=token_logp.device).index_add(0, rows, token_logp)


def train_dpo(config: RLConfig, show_progress: bool = True, overwrite: bool = False) -> Path:
    return run_stage(config, lambda stage: _run(config, stage, show_progress), overwrite) / "final"


def _run(config: RLConfig, stage: Stage, show_progress: bool) -> None:
    out, device = stage.out, runtime.accelerator().device
    torch.manual_seed(config.seed)
    pairs = stage.inputs["preference_data"]
    tokenizer = load_tokenizer(config.init)
    policy = load_causal_lm(config.init)
    if config.use_lora:
        policy = add_lora(policy, config.lora_r, config.lora_alpha)
    policy.to(device).train()
    reference = load_reference(config)
    reference = reference.to(device) if reference is not None else None
    trainable = {name: p for name, p in policy.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=config.learning_rate)
    checkpoints, step = out / "checkpoints", 0
    resume_from = latest_checkpoint(checkpoints)
    if resume_from is not None:
        weights, counters = load_checkpoint(resume_from, optimizer)
        with torch.no_grad():
            for name, value in weights.items():
                if not name.startswith("reference."):
                    trainable[name].copy_(value)
        if config.reference == "ema":
            restore_reference(reference, weights)
        step = counters["step"]
        console.print(f"resuming {out} from step {step}")
    guard = FiniteGuard("rl", config.on_nonfinite)
    batches = batch_stream([1] * len(pairs), config.dpo_batch_size, derive_seed(config.seed, "pairs"), step)
    with MetricsLog(out, "dpo", resume_step=step) as log, training_progress(disable=not show_progress) as progress:
        task = progress.add_task(f"dpo ({config.reference} ref)", total=config.steps, completed=step, metrics="")
        while step < config.steps:
            step += 1
            batch_pairs = [pairs[i] for i in next(batches)]
            # Chosen and rejected sequences of the batch go through each model in one forward pass.
            examples = [
                tokenize_conversation(
                    tokenizer, Conversation([{"role": "user", "content": p.prompt}], response), MAX_LENGTH
                )
                for responses in ([p.chosen for p in batch_pairs], [p.rejected for p in batch_pairs])
                for p, response in zip(batch_pairs, responses, strict=True)
            ]
            batch = {k: v.to(device) for k, v in collate(examples, tokenizer.pad_token_id).items()}
            logp = sequence_logprobs(policy, batch)
            n = len(batch_pairs)
            if reference is None:
                ref = torch.zeros_like(logp)
            else:
                with torch.no_grad():
                    ref = sequence_logprobs(reference, batch)
            loss = dpo_loss(logp[:n], logp[n:], ref[:n], ref[n:], config.dpo_beta)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable.values(), config.max_grad_norm)
            if guard.ok(step, loss=loss, grad_norm=grad_norm):
                optimizer.step()
                if config.reference == "ema" and reference is not None:
                    ema_update(reference, policy, config.ema_decay)
            optimizer.zero_grad(set_to_none=True)
            margin = ((logp[:n] - ref[:n]) - (logp[n:] - ref[n:])).detach()
            record = {
                "step": step,
                "loss": loss.item(),
                "margin": float(margin.mean()),
                "accuracy": float((margin > 0).float().mean()),
                "skipped": guard.skipped,
            }
            log.write(record)
            progress.update(task, advance=1, metrics=f"loss {record['loss']:.3f}  acc {record['accuracy']:.2f}")
            if config.save_steps and step % config.save_steps == 0 and step < config.steps:
                weights = dict(trainable)
                if config.reference == "ema" and reference is not None:
                    weights.update(reference_weights(reference))
                check_finite_weights(weights, str(checkpoints))
                save_checkpoint(checkpoints / f"step-{step:07d}", weights, optimizer, counters={"step": step})
    save_model(policy, tokenizer, out / "final")
    stage.finish({"algorithm": "dpo", "reference": config.reference, "skipped_steps": guard.skipped})
    shutil.rmtree(checkpoints, ignore_errors=True)
