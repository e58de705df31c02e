"""Offline DPO (Rafailov et al. 2023) on preference pairs, with the same reference options as online RL.

    loss = -log sigmoid(beta * ((log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))))

`reference: none` drops the reference terms (reference-free); `ema` moves the reference after each step.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from salsa.config import RLConfig, save_config
from salsa.data import IGNORE_INDEX, Conversation, collate, load_records, shuffled_batches, tokenize_conversation
from salsa.io import JsonlWriter, mark_complete
from salsa.models import add_lora, load_causal_lm, load_tokenizer
from salsa.progress import training_progress
from salsa.reward import parse_preference_rows
from salsa.rl.core import dpo_loss
from salsa.rl.reference import ema_update, load_reference


def sequence_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum over completion tokens of log p(token): one number per sequence."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    token_logp = torch.gather(logits.log_softmax(-1), -1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return (token_logp * mask).sum(1)


def train_dpo(config: RLConfig, show_progress: bool = True) -> Path:
    torch.manual_seed(config.seed)
    pairs = parse_preference_rows(*load_records(config.preference_data))
    tokenizer = load_tokenizer(config.init)
    policy = load_causal_lm(config.init)
    if config.use_lora:
        policy = add_lora(policy, config.lora_r, config.lora_alpha)
    policy.train()
    reference = load_reference(config)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=config.learning_rate)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml", section="rl")
    metrics, tensorboard = JsonlWriter(out / "metrics.jsonl"), SummaryWriter(str(out / "tensorboard"))
    batches = shuffled_batches(len(pairs), config.dpo_batch_size, random.Random(config.seed))
    with training_progress(disable=not show_progress) as progress:
        task = progress.add_task(f"dpo ({config.reference} ref)", total=config.steps, metrics="")
        for step in range(1, config.steps + 1):
            batch_pairs = [pairs[i] for i in next(batches)]
            # Chosen and rejected sequences of the batch go through each model in one forward pass.
            examples = [
                tokenize_conversation(tokenizer, Conversation([{"role": "user", "content": p.prompt}], response), 512)
                for responses in ([p.chosen for p in batch_pairs], [p.rejected for p in batch_pairs])
                for p, response in zip(batch_pairs, responses, strict=True)
            ]
            batch = collate(examples, tokenizer.pad_token_id)
            logp = sequence_logprobs(policy, batch)
            n = len(batch_pairs)
            if reference is None:
                ref = torch.zeros_like(logp)
            else:
                with torch.no_grad():
                    ref = sequence_logprobs(reference, batch)
            loss = dpo_loss(logp[:n], logp[n:], ref[:n], ref[n:], config.dpo_beta)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if config.reference == "ema" and reference is not None:
                ema_update(reference, policy, config.ema_decay)
            margin = ((logp[:n] - ref[:n]) - (logp[n:] - ref[n:])).detach()
            record = {
                "step": step,
                "loss": loss.item(),
                "margin": float(margin.mean()),
                "accuracy": float((margin > 0).float().mean()),
            }
            metrics.write(record)
            for key, value in record.items():
                if key != "step":
                    tensorboard.add_scalar(f"dpo/{key}", value, step)
            progress.update(task, advance=1, metrics=f"loss {record['loss']:.3f}  acc {record['accuracy']:.2f}")
    metrics.close()
    tensorboard.close()
    from salsa.rl.ppo import save_policy

    save_policy(policy, tokenizer, out / "final")
    mark_complete(out, {"stage": "rl", "algorithm": "dpo", "reference": config.reference})
    return out / "final"
