"""Batched sampling from a causal LM: left padding, KV cache, prompts sorted by length to cut padding, and
each distinct prompt run once when several samples share it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from salsa.data import render_prompt
from salsa.progress import training_progress


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt as a one-turn user message, through the chat template when there is one."""
    texts = [render_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    add_special = not tokenizer.chat_template
    return [tokenizer(t, add_special_tokens=add_special)["input_ids"] for t in texts]


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists right-aligned (left padding), the layout generation with a KV cache needs."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, length - len(s) :] = torch.tensor(s)
        mask[i, length - len(s) :] = 1
    return ids, mask


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers stay in place inside it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` uses them."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def distinct_rows(ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(one row index per distinct (ids, mask) row, each row's position in that list)."""
    distinct, inverse = torch.unique(torch.cat([ids, attention_mask], 1), dim=0, return_inverse=True)
    first = torch.empty(len(distinct), dtype=torch.long, device=ids.device)
    first[inverse] = torch.arange(len(ids), device=ids.device)  # any occurrence will do: they are equal
    return first, inverse


def shared_prompt_cache(
    model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[DynamicCache, torch.Tensor] | None:
    """Run each distinct left-padded prompt row once and give every row its keys/values.

    Returns (the cache over all rows, each row's hidden state at the last prompt position [N, 1, H]), or None
    when no two rows are equal. With k samples per prompt this cuts the prompt work k-fold.
    """
    first, inverse = distinct_rows(ids, attention_mask)
    if len(first) == len(ids):
        return None
    base = base_model(model)
    cache = DynamicCache(config=base.config)
    mask = attention_mask[first]
    hidden = base.get_decoder()(
        input_ids=ids[first], attention_mask=mask, position_ids=position_ids(mask), past_key_values=cache,
        use_cache=True,
    ).last_hidden_state[:, -1:]  # fmt: skip
    cache.batch_select_indices(inverse)
    return cache, hidden[inverse]


@torch.no_grad()
def sample_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    num_samples: int = 1,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
    show_progress: bool = False,
    description: str = "sampling",
) -> list[list[str]]:
    """`num_samples` sampled replies per prompt (greedy when temperature is 0), in prompt order.

    Each batch is seeded from `seed` and its position, so the result does not depend on anything else.
    """
    lengths = [len(ids) for ids in encode_prompts(tokenizer, prompts)]
    jobs = sorted((lengths[i], i, s) for i in range(len(prompts)) for s in range(num_samples))
    replies: list[list[str]] = [[""] * num_samples for _ in prompts]
    batches = [jobs[start : start + batch_size] for start in range(0, len(jobs), batch_size)]
    with training_progress(disable=not show_progress) as progress:
        task = progress.add_task(description, total=len(jobs), metrics="")
        for number, batch in enumerate(batches):
            sample = generate(
                model, tokenizer, [prompts[i] for _, i, _ in batch], max_new_tokens=max_new_tokens,
                temperature=temperature, top_p=top_p, seed=seed * 1_000_003 + number,
            )  # fmt: skip
            for (_, i, s), text in zip(batch, sample.responses, strict=True):
                replies[i][s] = text
            progress.update(task, advance=len(batch))
    return replies


def response_mask(responses: torch.Tensor, eos_token_ids: set[int]) -> torch.Tensor:
    """1 on response tokens up to and including the first EOS, 0 after it."""
    is_eos = torch.zeros_like(responses, dtype=torch.bool)
    for eos in eos_token_ids:
        is_eos |= responses == eos
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    return (~after_eos).float()


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The tokenizer's EOS and every EOS of the model's generation config (chat models often have several)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    extra = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return {tokenizer.eos_token_id, *extra}


@dataclass
class Generation:
    """Sampled responses with the tensors needed to score them again under any model."""

    prompts: list[str]
    responses: list[str]  # decoded, up to the first EOS
    sequences: torch.Tensor  # [N, P + R] left-padded prompt, then response
    attention_mask: torch.Tensor  # [N, P + R] prompt attention, then the response mask
    prompt_length: int  # P
    mask: torch.Tensor  # [N, R] 1 on response tokens up to and including EOS
    logprobs: torch.Tensor | None = None  # [N, R] log-probs of the sampled tokens at the sampling temperature


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    top_p: float = 1.0,
    with_logprobs: bool = False,
) -> Generation:
    """One batch of samples (pure temperature sampling by default, so log-probs at `temperature` are exact;
    greedy when temperature is 0).

    `with_logprobs` keeps the sampling distribution of every step, which saves a forward pass over the
    responses when their log-probs are needed (not with top_p < 1, where the kept scores are truncated).
    """
    device = next(model.parameters()).device
    ids, attention = left_pad(encode_prompts(tokenizer, prompts), tokenizer.pad_token_id)
    ids, attention = ids.to(device), attention.to(device)
    was_training = model.training
    model.eval()
    # Prompts repeated for several samples are prefilled once; generate() then runs only the last prompt token.
    shared = shared_prompt_cache(model, ids[:, :-1], attention[:, :-1]) if ids.shape[1] > 1 else None
    cache = shared[0] if shared else None
    torch.manual_seed(seed)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": top_p}
        if temperature > 0
        else {"do_sample": False}
    )
    out = model.generate(
        input_ids=ids, attention_mask=attention, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
        output_scores=with_logprobs, return_dict_in_generate=True, past_key_values=cache, **sampling,
    )  # fmt: skip
    model.train(was_training)
    sequences = out.sequences
    responses = sequences[:, ids.shape[1] :]
    logprobs = None
    if with_logprobs:
        # `scores` are the logits after the temperature warper: log_softmax gives the sampling distribution.
        step_logprobs = torch.stack(out.scores, dim=1).float().log_softmax(-1)
        logprobs = torch.gather(step_logprobs, -1, responses[..., None]).squeeze(-1)
    mask = response_mask(responses, eos_token_ids(model, tokenizer))
    texts = [
        tokenizer.decode(r[m.bool()], skip_special_tokens=True).strip() for r, m in zip(responses, mask, strict=True)
    ]
    full_attention = torch.cat([attention, mask.long()], dim=1)
    return Generation(list(prompts), texts, sequences, full_attention, ids.shape[1], mask, logprobs)
