"""What RL trains: the policy and its value function (a head on the policy trunk, or a separate critic).

With `sharding: fsdp2` the policy (and critic) are sharded over the processes with torch's FSDP2; otherwise
every process holds a replica and the update averages the gradients (`runtime.average_gradients`).
"""

from __future__ import annotations

import torch

from salsa import runtime
from salsa.config import RLConfig
from salsa.models import load_causal_lm
from salsa.rl.policy import ValueHead, fresh_policy, response_forward


class Learner:
    """The policy with its value function: a head on the policy trunk, or a separate critic model."""

    def __init__(self, config: RLConfig, device: torch.device):
        self.config = config
        policy = fresh_policy(config, config.gradient_checkpointing)
        self.policy = runtime.place(policy, device, config.sharding)
        self.critic = None
        self.value_head = None
        if config.algorithm == "ppo":
            if config.value_head == "separate":
                self.critic = runtime.place(load_causal_lm(config.init), device, config.sharding)
            self.value_head = ValueHead(policy.config.hidden_size).to(device)
        modules = {"policy": self.policy, "critic": self.critic, "value_head": self.value_head}
        # Everything trained, as one module: its weights are `policy.<name>`, `value_head.<name>`, ...
        self.trained = torch.nn.ModuleDict({name: m for name, m in modules.items() if m is not None})

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.trained.parameters() if p.requires_grad]

    def evaluate(self, rollout, rows: torch.Tensor, with_entropy: bool = False):
        """Log-probs, values and entropy of the rollout's responses `rows` under the current weights."""
        args = (rollout.sequences[rows], rollout.attention_mask[rows], rollout.prompt_length, self.config.temperature)
        out = response_forward(self.policy, *args, with_entropy=with_entropy)
        values = None
        if self.value_head is not None:
            hidden = out.hidden if self.critic is None else response_forward(self.critic, *args).hidden
            values = self.value_head(hidden)
        return out.logprobs, values, out.entropy

    def weights(self) -> dict[str, torch.Tensor]:
        """The trained tensors, whole (gathered from the shards: every process calls this), by name."""
        return runtime.trainable_state(self.trained)

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        runtime.load_trainable_state(self.trained, {k: v for k, v in weights.items() if not k.startswith("reference.")})
