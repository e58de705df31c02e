"""From conversations to token ids: the chat template, prompt masking and padded batches."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from salsa.data import Conversation
from salsa.errors import DataError

IGNORE_INDEX = -100


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """The text the model sees before it answers: the chat template with a generation prompt, if any."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n".join(m["content"] for m in messages) + "\n"


def render_completion(tokenizer: PreTrainedTokenizerBase, conversation: Conversation, prompt_text: str) -> str:
    """The completion text including the template's end-of-turn (or EOS without a template)."""
    if tokenizer.chat_template:
        full = tokenizer.apply_chat_template(
            [*conversation.prompt_messages, {"role": "assistant", "content": conversation.completion}],
            tokenize=False,
        )
        if full.startswith(prompt_text):
            return full[len(prompt_text) :]
    return conversation.completion + (tokenizer.eos_token or "")


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase,
    conversation: Conversation,
    max_length: int,
    completion_only_loss: bool = True,
) -> dict[str, list[int]]:
    """Token ids and labels; labels are IGNORE_INDEX on prompt tokens when `completion_only_loss`.

    Prompt and completion are tokenized separately and concatenated, so the boundary is exact. A plain-text row
    (language modelling) is the tokenizer's ids of the text, with EOS, every token a target.
    """
    if conversation.plain_text:
        ids = tokenizer(conversation.completion + (tokenizer.eos_token or ""))["input_ids"][:max_length]
        return {"input_ids": ids, "labels": list(ids)}
    prompt_text = render_prompt(tokenizer, conversation.prompt_messages)
    completion_text = render_completion(tokenizer, conversation, prompt_text)
    add_special = not tokenizer.chat_template  # a chat template already writes BOS when the model uses one
    prompt_ids = tokenizer(prompt_text, add_special_tokens=add_special)["input_ids"]
    completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    input_ids = (prompt_ids + completion_ids)[:max_length]
    prompt_labels = [IGNORE_INDEX] * len(prompt_ids) if completion_only_loss else list(prompt_ids)
    labels = (prompt_labels + completion_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def tokenize_sft_rows(
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[Conversation],
    max_length: int,
    completion_only_loss: bool = True,
) -> list[dict[str, list[int]]]:
    """Tokenize every conversation; drop the ones whose completion was truncated away entirely."""
    examples = [tokenize_conversation(tokenizer, c, max_length, completion_only_loss) for c in conversations]
    kept = [e for e in examples if any(label != IGNORE_INDEX for label in e["labels"])]
    if not kept:
        raise DataError(f"every example lost its completion to truncation; raise max_length (now {max_length})")
    return kept


def collate(examples: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest sequence; padding gets label IGNORE_INDEX and mask 0."""
    length = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
