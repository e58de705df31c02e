"""Scoring responses for RL and evaluation: reward models and reward functions.

A reward model is a sequence-classification model with one output: a `salsa reward` directory (with its
normalisation), or any other such model, a directory or a hub id (what TRL's RewardTrainer writes), read the way
TRL reads it. A reward function is Python: `module:function` or `path/to/file.py:function`, called with the
prompts and the responses, returning one float per response.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from salsa import runtime
from salsa.data import Prompt, as_messages, prompt_text
from salsa.encoder_reward import SalsaEncoderRewardModel
from salsa.errors import ConfigError
from salsa.inputs import check_reward_model, import_function, is_function_spec
from salsa.io import REWARD_META, read_json


class RewardModel:
    """Batched scoring of (prompt, response) pairs by a sequence-classification model with one output.

    Two layouts: `pair` (salsa's encoder: prompt and response as a text pair, [CLS] prompt [SEP] response [SEP])
    and `conversation` (every other model: the chat template over the prompt's messages and the response as the
    assistant's turn, or prompt + response when the tokenizer has no template: what TRL scores). `score` is
    normalised: (r - mean) / std, with a `salsa reward` model's statistics over the distinct responses of its training
    pairs (a scale, not a centre on the policy's samples: RL normalises again on its starting policy).
    """

    def __init__(self, model, tokenizer, layout: str, max_length: int = 128, mean: float = 0.0, std: float = 1.0):
        self.model, self.tokenizer, self.layout = model, tokenizer, layout
        self.max_length, self.mean, self.std = max_length, mean, std

    @classmethod
    def load(cls, path: str, device: torch.device | None = None) -> RewardModel:
        """A `salsa reward` directory, or any sequence-classification model (directory or hub id) with one label;
        on `device` (default: the process's, from salsa.runtime)."""
        device = device if device is not None else runtime.accelerator().device
        check_reward_model(str(path), "reward model")
        meta_file = Path(path) / REWARD_META
        if meta_file.is_file():
            meta = read_json(meta_file)
            encoder = meta["backbone"] == "encoder"
            model = (SalsaEncoderRewardModel if encoder else AutoModelForSequenceClassification).from_pretrained(path)
            layout, stats = LAYOUTS[meta["backbone"]], (meta["max_length"], meta["mean"], meta["std"])
        else:  # a reward model from elsewhere (TRL's RewardTrainer, the hub): scored as TRL scores it
            model = AutoModelForSequenceClassification.from_pretrained(path)
            layout, stats = "conversation", (getattr(model.config, "max_position_embeddings", 2048), 0.0, 1.0)
        # With the model's own config: AutoTokenizer would otherwise read config.json again, and for salsa's
        # encoder (a remote-code class) ask on the terminal whether to trust its code.
        tokenizer = AutoTokenizer.from_pretrained(path, config=model.config)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
        return cls(model.to(device).eval(), tokenizer, layout, *stats)

    def encode(self, prompts: list[Prompt], responses: list[str]) -> dict[str, torch.Tensor]:
        limits = dict(truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        if self.layout == "pair":
            batch = self.tokenizer([prompt_text(p) for p in prompts], responses, **limits)
        else:
            batch = self.tokenizer(
                conversation_texts(self.tokenizer, prompts, responses), add_special_tokens=False,
                padding_side="right", **limits,
            )  # fmt: skip
        return {k: v.to(runtime.accelerator().device) for k, v in batch.items()}

    def forward(self, prompts: list[Prompt], responses: list[str]) -> torch.Tensor:
        return self.model(**self.encode(prompts, responses)).logits[:, 0].float()

    @torch.no_grad()
    def raw_scores(self, prompts: list[Prompt], responses: list[str], batch_size: int = 64) -> torch.Tensor:
        self.model.eval()
        out = [
            self.forward(prompts[i : i + batch_size], responses[i : i + batch_size]).cpu()
            for i in range(0, len(prompts), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0)

    def score(self, prompts: list[Prompt], responses: list[str], batch_size: int = 64) -> torch.Tensor:
        """Normalised rewards: (r - mean) / std, with the statistics the reward model was saved with."""
        return (self.raw_scores(prompts, responses, batch_size) - self.mean) / self.std


RewardFn = Callable[[list[Prompt], list[str]], torch.Tensor]


def reward_function(spec: str, device: torch.device | None = None) -> RewardFn:
    """Scores of responses from a reward model (`salsa reward` directory, any one-label sequence-classification
    model directory or hub id) or from a Python function (`module:function`, `path/to/file.py:function`) that
    takes (prompts, responses) and returns one float per response."""
    if is_function_spec(spec):
        function = import_function(spec)

        def scores(prompts: list[Prompt], responses: list[str]) -> torch.Tensor:
            values = torch.as_tensor([float(v) for v in function(prompts, responses)], dtype=torch.float32)
            if values.shape != (len(responses),):
                raise ConfigError(
                    f"reward function '{spec}' returned {len(values)} scores for {len(responses)} responses"
                )
            return values

        return scores
    return RewardModel.load(spec, device).score


def gold_reward(gold_score: Callable[[str, str], float]) -> RewardFn:
    """A task's gold judge as a reward (`rl.reward_model: gold`): the control that tells whether RL can optimise the
    true objective at all, apart from how good a proxy the reward model is."""
    return lambda prompts, responses: torch.tensor(
        [gold_score(prompt_text(p), r) for p, r in zip(prompts, responses, strict=True)], dtype=torch.float32
    )


# How each of salsa's backbones reads a (prompt, response).
LAYOUTS = {"encoder": "pair", "causal": "conversation"}


def conversation_texts(tokenizer, prompts: list[Prompt], responses: list[str]) -> list[str]:
    """The whole conversation through the chat template (the response as the assistant's turn), as TRL scores a
    reward model; prompt + response when the tokenizer has no template."""
    if not tokenizer.chat_template:
        return [prompt_text(p) + r for p, r in zip(prompts, responses, strict=True)]
    return [
        tokenizer.apply_chat_template([*as_messages(p), {"role": "assistant", "content": r}], tokenize=False)
        for p, r in zip(prompts, responses, strict=True)
    ]
