"""What RL trains: the policy and its value function (a head on the policy trunk, or a separate critic).

The value function has its own learning rate: a value head starts untrained and must move far, the policy little.
With `value_init: reward_model` the critic starts as the reward model (InstructGPT): the reward model's trunk, and
a value head that outputs the RL reward the reward model would give (`calibrate_value`).

With `sharding: fsdp2` the policy (and critic) are sharded over the processes with torch's FSDP2; otherwise
every process holds a replica and the update averages the gradients (`runtime.average_gradients`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from salsa import runtime
from salsa.config import RLConfig
from salsa.errors import ConfigError
from salsa.io import REWARD_META, read_json
from salsa.models import load_causal_lm
from salsa.policy import fresh_policy, response_forward


class ValueHead(nn.Module):
    """V(s_t) = w . h_t + b on the hidden state that predicts token t."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)


class Learner:
    """The policy with its value function: a head on the policy trunk, or a separate critic model."""

    def __init__(self, config: RLConfig, device: torch.device):
        self.config = config
        policy = fresh_policy(config, config.gradient_checkpointing)
        self.policy = runtime.place(policy, device, config.sharding)
        self.critic = None
        self.value_head = None
        self.reward_scale: tuple[float, float] | None = None  # (mean, std) of the reward model the critic came from
        if config.algorithm == "ppo":
            self.value_head = ValueHead(policy.config.hidden_size).to(device)
            if config.value_head == "separate":
                critic_from = config.init if config.value_init == "zero" else config.reward_model
                critic = load_causal_lm(critic_from)
                if config.value_init == "reward_model":
                    self.reward_scale = _value_head_from_reward_model(self.value_head, critic, policy, critic_from)
                self.critic = runtime.place(critic, device, config.sharding)
        modules = {"policy": self.policy, "critic": self.critic, "value_head": self.value_head}
        # Everything trained, as one module: its weights are `policy.<name>`, `value_head.<name>`, ...
        self.trained = torch.nn.ModuleDict({name: m for name, m in modules.items() if m is not None})

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.trained.parameters() if p.requires_grad]

    def value_parameters(self) -> list[torch.nn.Parameter]:
        """The value function's own weights (the value head, and a separate critic's)."""
        modules = [m for m in (self.critic, self.value_head) if m is not None]
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    def policy_parameters(self) -> list[torch.nn.Parameter]:
        own = {id(p) for p in self.value_parameters()}
        return [p for p in self.parameters() if id(p) not in own]

    def optimizer(self) -> torch.optim.Optimizer:
        """AdamW with the policy at `learning_rate` and the value function at `value_learning_rate`."""
        groups = [{"params": self.policy_parameters(), "lr": self.config.learning_rate}]
        if self.value_head is not None:
            groups.append({"params": self.value_parameters(), "lr": self.config.value_learning_rate})
        return torch.optim.AdamW(groups)

    @torch.no_grad()
    def calibrate_value(self, mean: float, std: float) -> None:
        """A critic from the reward model predicts the RL reward: its raw score, normalised as the reward model
        normalises it and then as RL does, (((raw - m0) / s0) - mean) / std."""
        if self.reward_scale is None:
            return
        m0, s0 = self.reward_scale
        linear = self.value_head.linear
        linear.weight.div_(s0 * std)
        linear.bias.fill_(-(m0 + mean * s0) / (s0 * std))

    def evaluate(self, rollout, rows: torch.Tensor, with_entropy: bool = False, value_only: bool = False):
        """Log-probs, values and entropy of the rollout's responses `rows` under the current weights.

        `value_only` (the value warm-up): the policy's outputs carry no gradient, so the loss moves the value
        function alone, also when its head sits on the policy's trunk.
        """
        args = (rollout.sequences[rows], rollout.attention_mask[rows], rollout.prompt_length, self.config.temperature)
        with torch.no_grad() if value_only else contextlib.nullcontext():
            out = response_forward(self.policy, *args, with_entropy=with_entropy)
        values = None
        if self.value_head is not None:
            hidden = out.hidden if self.critic is None else response_forward(self.critic, *args).hidden
            values = self.value_head(hidden.detach() if value_only and self.critic is None else hidden)
        return out.logprobs, values, out.entropy

    @torch.no_grad()
    def measure(self, rollout, chunk: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """`evaluate` of every response of the rollout without gradients, `chunk` rows at a time: the memory of a
        forward pass then does not grow with the rollout (the logits alone are rows x length x vocabulary)."""
        parts = [self.evaluate(rollout, torch.arange(start, min(start + chunk, len(rollout.rows))), with_entropy=True)
                 for start in range(0, len(rollout.rows), chunk)]  # fmt: skip
        logprobs, values, entropy = zip(*parts, strict=True)
        return torch.cat(logprobs), None if values[0] is None else torch.cat(values), torch.cat(entropy)

    def weights(self) -> dict[str, torch.Tensor]:
        """The trained tensors, whole (gathered from the shards: every process calls this), by name."""
        return runtime.trainable_state(self.trained)


def _value_head_from_reward_model(head: ValueHead, critic: torch.nn.Module, policy, path: str) -> tuple[float, float]:
    """Copy a causal `salsa reward` model's score layer into the value head; returns the model's (mean, std)."""
    meta_file = Path(path) / REWARD_META
    meta = read_json(meta_file) if meta_file.is_file() else {}
    if meta.get("backbone") != "causal" or critic.config.hidden_size != policy.config.hidden_size:
        raise ConfigError(
            f"rl.value_init reward_model: {path} is not a causal `salsa reward` model with the policy's hidden size "
            f"({policy.config.hidden_size}); train one with `salsa reward --set backbone=causal`, or use zero"
        )
    with safe_open(str(Path(path) / "model.safetensors"), "pt") as weights:
        score = weights.get_tensor("score.weight")
    with torch.no_grad():
        head.linear.weight.copy_(score.reshape(head.linear.weight.shape))
        head.linear.bias.zero_()
    return float(meta["mean"]), float(meta["std"])
