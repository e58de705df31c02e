"""salsa's encoder reward model as a Hugging Face sequence-classification model.

    score = w . mean_t(h_t) + b        h: the BERT encoder's states over the non-padding tokens of (prompt, response)

A BERT `ForSequenceClassification` reads the [CLS] state through a pooler; all-MiniLM-L6-v2 was trained to embed
text by the mean of its token states, which scores preferences better, so this is its own small architecture.
`salsa reward` copies this file into the model directory and names it in config.json (`auto_map`), so plain
transformers, and TRL, load the whole model, head included, with

    AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)

and refuse to load it without `trust_remote_code` (rather than loading a BERT classifier with a random head).
This file imports only torch and transformers: it runs where salsa is not installed.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class SalsaEncoderRewardConfig(BertConfig):
    model_type = "salsa_encoder_reward"


class SalsaEncoderRewardModel(BertPreTrainedModel):
    """A BERT encoder, mean pooling over the attended tokens, and a linear head with one output."""

    config_class = SalsaEncoderRewardConfig

    def __init__(self, config: BertConfig, bert: BertModel | None = None):
        config.num_labels = 1  # one score per sequence, as its config must say: TRL checks for one label
        super().__init__(config)
        self.bert = bert if bert is not None else BertModel(config, add_pooling_layer=False)
        self.score = nn.Linear(config.hidden_size, 1)
        if bert is None:
            self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        states = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return SequenceClassifierOutput(logits=self.score((states * mask).sum(1) / mask.sum(1)))
