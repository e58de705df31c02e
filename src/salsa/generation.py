"""Batched sampling from a causal LM: left padding, KV cache, prompts sorted by length to cut padding, each
distinct prompt run once when several samples share it, and rows leaving the batch as they end."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from salsa import runtime
from salsa.data import Prompt, as_messages
from salsa.errors import ConfigError, DataError
from salsa.models import base_model, forward_logits
from salsa.progress import training_progress
from salsa.seeding import derive_seed
from salsa.tokenization import render_prompt


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt]) -> list[list[int]]:
    """Token ids of each prompt (a string is one user turn; messages keep every turn), through the chat template
    when there is one."""
    texts = [render_prompt(tokenizer, as_messages(p)) for p in prompts]
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


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` uses them."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def distinct_rows(ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(one row index per distinct (ids, mask) row, each row's position in that list)."""
    distinct, inverse = torch.unique(torch.cat([ids, attention_mask], 1), dim=0, return_inverse=True)
    first = torch.empty(len(distinct), dtype=torch.long, device=ids.device)
    first[inverse] = torch.arange(len(ids), device=ids.device)  # any occurrence will do: they are equal
    return first, inverse


def prefill(
    model: nn.Module,
    ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rows: tuple[torch.Tensor, torch.Tensor] | None = None,
    hidden: bool = False,
) -> tuple[DynamicCache, torch.Tensor, torch.Tensor | None]:
    """Run each distinct left-padded prompt row once and give every row its keys/values.

    Returns (the cache over all rows, each row's logits at the last prompt position [N, 1, V], and with `hidden`
    its final hidden state there [N, 1, H]). `rows` is `distinct_rows(ids, attention_mask)` when known.
    """
    first, inverse = rows if rows is not None else distinct_rows(ids, attention_mask)
    cache = DynamicCache(config=base_model(model).config)
    mask = attention_mask[first]
    logits, states = forward_logits(model, ids[first], mask, position_ids(mask), cache=cache, keep=1, hidden=hidden)
    cache.batch_select_indices(inverse)
    return cache, logits[inverse], states[inverse] if hidden else None


def shared_prompt_cache(
    model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor, hidden: bool = False
) -> tuple[DynamicCache, torch.Tensor, torch.Tensor | None] | None:
    """`prefill`, or None when no two rows are equal (then one plain pass over whole rows is cheaper).

    With k samples per prompt this cuts the prompt work k-fold.
    """
    rows = distinct_rows(ids, attention_mask)
    return None if len(rows[0]) == len(ids) else prefill(model, ids, attention_mask, rows, hidden)


def check_prompt_lengths(
    tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt], max_new_tokens: int, model: nn.Module, source: str
) -> None:
    """Every prompt plus `max_new_tokens` must fit in the model's positions; name the first that does not."""
    limit = getattr(base_model(model).config, "max_position_embeddings", None)
    if limit is None:
        return
    for number, ids in enumerate(encode_prompts(tokenizer, prompts), start=1):
        if len(ids) + max_new_tokens > limit:
            raise DataError(
                f"{source}: prompt {number} is {len(ids)} tokens; with max_new_tokens {max_new_tokens} it exceeds "
                f"the model's {limit} positions. Shorten it or lower max_new_tokens"
            )


def decode_responses(tokenizer: PreTrainedTokenizerBase, responses: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """The text of each response row up to its end (mask 1), special tokens removed."""
    return [
        tokenizer.decode(r[m.bool()], skip_special_tokens=True).strip() for r, m in zip(responses, mask, strict=True)
    ]


@torch.no_grad()
def sample_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Prompt],
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

    Sample s of prompt i draws from its own random stream, seeded by (seed, i, s), whatever the batch it lands in.
    Under several processes each samples its share of the batches one process would make, and every process gets
    all the replies. They are one process's replies but for rare tokens: the logits agree to float rounding only,
    and a token whose draw falls within it of the boundary between two tokens can differ (see `generate`).
    """
    lengths = [len(ids) for ids in encode_prompts(tokenizer, prompts)]
    jobs = sorted((lengths[i], i, s) for i in range(len(prompts)) for s in range(num_samples))
    replies: dict[tuple[int, int], str] = {}
    batches = runtime.my_batches(jobs, batch_size)
    with training_progress(disable=not show_progress or not runtime.is_main_process()) as progress:
        task = progress.add_task(description, total=sum(len(b) for b in batches), metrics="")
        for batch in batches:
            sample = generate(
                model, tokenizer, [prompts[i] for _, i, _ in batch], max_new_tokens=max_new_tokens,
                temperature=temperature, top_p=top_p, seeds=[derive_seed(seed, "sample", i, s) for _, i, s in batch],
            )  # fmt: skip
            for (_, i, s), text in zip(batch, sample.responses, strict=True):
                replies[(i, s)] = text
            progress.update(task, advance=len(batch))
    everything = runtime.gather_dict(replies)
    return [[everything[(i, s)] for s in range(num_samples)] for i in range(len(prompts))]


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

    prompts: list[Prompt]
    responses: list[str]  # decoded, up to the first EOS
    sequences: torch.Tensor  # [N, P + R] left-padded prompt, then response
    attention_mask: torch.Tensor  # [N, P + R] prompt attention, then the response mask
    prompt_length: int  # P
    mask: torch.Tensor  # [N, R] 1 on response tokens up to and including EOS
    logprobs: torch.Tensor | None = None  # [N, R] log-probs of the sampled tokens at the sampling temperature


def sampling_logprobs(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """Log-probs of the next-token distribution that sampling draws from: softmax(logits / temperature),
    restricted to the nucleus (the most likely tokens holding `top_p` of the mass; at least one); the
    plain softmax of the logits for greedy decoding (temperature 0)."""
    logits = logits.float()
    if temperature <= 0:
        return logits.log_softmax(-1)
    logits = logits / temperature
    if top_p < 1.0:
        ascending, order = logits.sort(-1)
        outside = ascending.softmax(-1).cumsum(-1) <= 1.0 - top_p
        outside[..., -1] = False  # the most likely token always stays
        logits = logits.masked_fill(outside.scatter(-1, order, outside), float("-inf"))
    return logits.log_softmax(-1)


def inverse_cdf_sample(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Token i of each row with probability probs[i]: the first i whose cumulative probability exceeds u * total.

    A token of probability 0 (outside the nucleus) spans an empty interval and is never drawn.
    """
    cdf = probs.cumsum(-1)
    return torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True).squeeze(1)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Prompt],
    *,
    max_new_tokens: int,
    temperature: float,
    seeds: int | list[int],
    top_p: float = 1.0,
    with_logprobs: bool = False,
) -> Generation:
    """One batch of samples (pure temperature sampling by default, so log-probs at `temperature` are exact;
    greedy when temperature is 0).

    Every row draws from its own random stream, seeded by `seeds[i]` (or, for one int, by it and the row's
    position): its sample is the inverse CDF of the next-token distribution at a uniform draw of that stream,
    so a row's draw depends on its own logits and seed, not on which other rows share its batch or on the process
    it runs in. The logits agree between batch shapes, thread counts, CPUs and processes to float rounding only,
    so where a draw falls within that rounding of the boundary between two tokens' cumulative probabilities the
    token (and the rest of the response) can differ: measured about 1 draw in 800 with a tiny random model at
    temperature 0.7, whose logits differed by 2e-6; far fewer at lower temperatures.

    A row leaves the batch when it samples an end-of-sequence token (its keys/values are dropped from the
    cache), so the work is the total length of the responses rather than batch size x the longest one.
    `with_logprobs` keeps the log-prob of every sampled token under the sampling distribution, which saves a
    forward pass over the responses when they are needed (with top_p < 1 that distribution is truncated).
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    ids, prompt_attention = (t.to(device) for t in left_pad(encode_prompts(tokenizer, prompts), tokenizer.pad_token_id))
    was_training = model.training
    model.eval()
    row_seeds = seeds if isinstance(seeds, list) else [derive_seed(seeds, "row", i) for i in range(len(prompts))]
    streams = [torch.Generator(device).manual_seed(s) for s in row_seeds]
    eos_ids = eos_token_ids(model, tokenizer)
    eos = torch.tensor(sorted(eos_ids), device=device)
    tokens = torch.full((len(ids), max_new_tokens), tokenizer.pad_token_id, dtype=torch.long, device=device)
    token_logprobs = torch.zeros(tokens.shape, device=device)
    cache, logits, _ = prefill(model, ids, prompt_attention)
    logits, attention = logits[:, -1], prompt_attention
    active = torch.arange(len(ids), device=device)  # rows still generating
    for step in range(max_new_tokens):
        logprobs = sampling_logprobs(logits, temperature, top_p)
        if temperature > 0:
            uniform = torch.stack([torch.rand((), generator=streams[row], device=device) for row in active.tolist()])
            token = inverse_cdf_sample(logprobs.exp(), uniform)
        else:
            token = logprobs.argmax(-1)
        tokens[active, step] = token
        token_logprobs[active, step] = logprobs.gather(-1, token[:, None]).squeeze(1)
        running = ~torch.isin(token, eos)
        if step == max_new_tokens - 1 or not running.any():
            break
        if not running.all():
            keep = running.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            active, token, attention = active[keep], token[keep], attention[keep]
        attention = torch.cat([attention, attention.new_ones(len(active), 1)], 1)
        positions = attention.sum(1, keepdim=True) - 1
        logits = forward_logits(model, token[:, None], attention, positions, cache=cache, keep=1)[0][:, -1]
    model.train(was_training)
    responses = tokens[:, : step + 1]
    mask = response_mask(responses, eos_ids)
    return Generation(
        list(prompts), decode_responses(tokenizer, responses, mask), torch.cat([ids, responses], 1),
        torch.cat([prompt_attention, mask.long()], 1), ids.shape[1], mask,
        token_logprobs[:, : step + 1] if with_logprobs else None,
    )  # fmt: skip
