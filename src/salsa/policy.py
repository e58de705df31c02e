"""A policy as RL builds it, and its forward pass over responses: log-probs (and hidden states, entropy) of
response tokens only. Below both RL (which trains the policy) and the evaluation (which scores it and its KL).

Sequences are [left-padded prompt | response]; the prompt part has the same length P for every row.
Only the hidden states that predict response tokens go through the LM head, which skips the vocabulary
projection for every prompt token, and a prompt shared by several samples (RLOO, GRPO) runs once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from salsa.config import PolicyConfig
from salsa.generation import position_ids, shared_prompt_cache
from salsa.models import forward_logits, trainable_model


def entropy_from_logprobs(logprobs: torch.Tensor) -> torch.Tensor:
    """Per-position entropy H = -sum_v p(v) log p(v), from normalised log-probabilities."""
    return -(logprobs.exp() * logprobs).sum(-1)


def sequence_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of whole responses, estimated on p's own samples: k1 = log p(y) - log q(y) (`rl.core.kl_k1`)
    summed over each response's tokens (`mask`: 1 on response tokens)."""
    return ((logp - ref_logp) * mask).sum(1)


def fresh_policy(config: PolicyConfig, activation_checkpointing: bool = False) -> nn.Module:
    """The policy as RL starts it: the init model, LoRA-wrapped with `use_lora` (DPO, RL, snapshots, gathering)."""
    return trainable_model(
        config.init, use_lora=config.use_lora, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
        activation_checkpointing=activation_checkpointing,
    )  # fmt: skip


# Batch rows per step of the log-sum-exp pass: each step's temporaries stay ~32 MB at 49,152 tokens x 40 positions.
_ROWS_PER_STEP = 4


class _TokenLogProbs(torch.autograd.Function):
    """log softmax(logits / T)[target] per position, and the entropy (no gradient) of softmax(logits / T).

    The same values and gradient as gathering from a full `log_softmax`, without its [B, R, vocab] copies: the
    forward pass keeps only a [B, R] log-sum-exp (found a few rows at a time), and the backward pass builds the
    gradient (onehot(target) - softmax) * g / T in one vocabulary-sized tensor. At batch 64 x 40 each such copy is
    ~0.5 GB (benchmarks/token_logprobs.py measures both ways side by side).
    """

    @staticmethod
    def forward(ctx, logits, targets, temperature, with_entropy):
        lse, entropy = [], []
        for rows in logits.split(_ROWS_PER_STEP):
            scaled = rows / temperature
            rows_lse = scaled.logsumexp(-1)
            lse.append(rows_lse)
            if with_entropy:
                entropy.append(entropy_from_logprobs(scaled.sub_(rows_lse[..., None])))
        lse = torch.cat(lse)
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature = temperature
        chosen = torch.gather(logits, -1, targets[..., None]).squeeze(-1) / temperature
        if not with_entropy:
            return chosen - lse, None
        entropy = torch.cat(entropy)
        ctx.mark_non_differentiable(entropy)
        return chosen - lse, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_entropy):
        logits, targets, lse = ctx.saved_tensors
        scale = (grad_logprobs / ctx.temperature)[..., None]
        grad = (logits / ctx.temperature).sub_(lse[..., None]).exp_().mul_(-scale)
        return grad.scatter_add_(-1, targets[..., None], scale), None, None, None


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(logits / T) at `targets` ([B, R, vocab] logits, [B, R] targets), and with `with_entropy` the
    entropy of softmax(logits / T) per position (no gradient); the same as a gathered `log_softmax`, in less memory."""
    return _TokenLogProbs.apply(logits, targets, temperature, with_entropy)


@dataclass
class ResponseForward:
    logprobs: torch.Tensor  # [B, R] log p(token) of the response tokens
    hidden: torch.Tensor  # [B, R, H] states that predicted them (for a value head)
    entropy: torch.Tensor | None = None  # [B, R]


def response_forward(
    model: nn.Module,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    prompt_state: tuple | None = None,
) -> ResponseForward:
    """One forward pass; log-probs of tokens sequences[:, P:] under `model` at `temperature`.

    Gradients flow through both parts of the shared-prompt pass (the prompt's keys/values included), so it
    trains exactly like a plain forward pass over every row. `prompt_state`: `model`'s `prefill` of these prompts
    with hidden states, when the caller has it (a cache this pass extends; responses of more than one token).
    """
    positions = position_ids(attention_mask)
    response_length = sequences.shape[1] - prompt_length
    targets = sequences[:, prompt_length:]
    shared = prompt_state
    if shared is None and response_length > 1:
        shared = shared_prompt_cache(model, sequences[:, :prompt_length], attention_mask[:, :prompt_length], True)
    if shared is None:
        # Positions P - 1 ... P + R - 2 predict the R response tokens.
        keep = response_length + 1
        logits, hidden = forward_logits(model, sequences, attention_mask, positions, keep=keep, hidden=True)
        parts, hidden = [(logits[:, :-1], targets)], hidden[:, :-1]
    else:
        cache, first_logits, first_hidden = shared
        rest_logits, rest_hidden = forward_logits(
            model, sequences[:, prompt_length:-1], attention_mask[:, :-1], positions[:, prompt_length:-1],
            cache=cache, hidden=True,
        )  # fmt: skip
        parts = [(first_logits, targets[:, :1]), (rest_logits, targets[:, 1:])]
        hidden = torch.cat([first_hidden, rest_hidden], 1)
    # Per part, not over a concatenation: only the small [B, R] results are concatenated.
    results = [token_logprobs(logits, part_targets, temperature, with_entropy) for logits, part_targets in parts]
    logprobs = torch.cat([logprob for logprob, _ in results], 1)
    entropy = torch.cat([part_entropy for _, part_entropy in results], 1) if with_entropy else None
    return ResponseForward(logprobs, hidden, entropy)
