"""The KL reference, the one thing SALSA changes: sft | soup | ema | none.

- sft:  a frozen SFT model (the standard RLHF baseline).
- soup: a frozen model soup, from a soup directory (by default the init, which must then be a soup) or averaged
        in memory from SFT models (SALSA).
  When the policy trains LoRA adapters on the model that is also the reference (sft, or a soup directory), the
  reference is the policy with its adapters switched off: no second copy (as TRL and verl do).
- ema:  a moving average of the policy, updated after every step (as in WARP); starts at the policy init.
- none: no reference and no KL penalty (ablation).

A `Reference` owns its state: the training loops call `update` after each optimizer step, and checkpoint and
restore it with `state` / `restore` (a frozen reference has no state to keep).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from salsa import runtime
from salsa.config import RLConfig
from salsa.models import base_model, load_causal_lm

STATE_PREFIX = "reference."


class Reference:
    """The KL anchor: a frozen model, the (LoRA) policy itself with its adapters switched off, or a moving average
    of the policy (`ema_decay` set)."""

    def __init__(self, model: nn.Module, adapters_off: bool = False, ema_decay: float | None = None):
        self.model, self.adapters_off, self.ema_decay = model, adapters_off, ema_decay

    def scoring(self):
        """The context in which `model` is the reference (adapters off, when it is the policy)."""
        return self.model.disable_adapter() if self.adapters_off else contextlib.nullcontext()

    def logprobs(self, sequences, attention_mask, prompt_length: int, temperature: float) -> torch.Tensor:
        from salsa.rl.policy import response_forward

        with self.scoring():
            return response_forward(self.model, sequences, attention_mask, prompt_length, temperature).logprobs

    @property
    def moving(self) -> bool:
        return self.ema_decay is not None

    def update(self, policy: nn.Module) -> None:
        """After an optimizer step: an EMA reference moves towards the policy; a frozen one stays."""
        if self.moving:
            ema_update(self.model, policy, self.ema_decay)

    def state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must keep to resume this reference exactly: a moving reference's weights, as
        `reference.<name>`; nothing for a frozen one (it is read again from its files)."""
        if not self.moving:
            return {}
        return {f"{STATE_PREFIX}{name}": p.detach() for name, p in self.model.named_parameters()}

    @torch.no_grad()
    def restore(self, weights: dict[str, torch.Tensor]) -> None:
        """Load the `reference.<name>` entries of a checkpoint back into a moving reference."""
        for name, value in weights.items():
            if name.startswith(STATE_PREFIX) and self.moving:
                self.model.get_parameter(name.removeprefix(STATE_PREFIX)).copy_(value)


def reference_dir(config: RLConfig) -> str:
    """The model directory (or hub id) of a frozen sft or soup reference: reference_model, else the init (for a soup
    reference, input validation made sure the init is a soup)."""
    return config.reference_model or config.init


def shares_the_policy_base(config: RLConfig) -> bool:
    """LoRA on the model that is also the reference (sft, or a soup directory): the base under the adapters is the
    reference."""
    from_a_directory = config.reference in ("sft", "soup") and not config.reference_models
    same_model = Path(reference_dir(config)).resolve() == Path(config.init).resolve()
    return config.use_lora and from_a_directory and same_model


def load_reference(config: RLConfig, policy: nn.Module, device: torch.device) -> Reference | None:
    """The reference, frozen and in eval mode; None for `reference: none`."""
    if config.reference == "none":
        return None
    if shares_the_policy_base(config):
        return Reference(policy, adapters_off=True)
    # A frozen reference is only run forward: it is held in the compute precision (half the memory in bf16).
    # An EMA reference accumulates small updates, so it stays in float32.
    dtype = runtime.forward_dtype(config.mixed_precision)
    if config.reference == "soup" and config.reference_models:
        from salsa.weights.in_memory import soup_model

        model = soup_model(config.reference_models, config.reference_weights).to(dtype)
    elif config.reference == "ema":
        model = load_causal_lm(config.init)
    else:
        model = load_causal_lm(reference_dir(config), dtype)
    model.eval().requires_grad_(False)
    # An EMA reference is updated in place from the policy's full weights, so it stays whole on every process.
    sharding = config.sharding if config.reference != "ema" else "none"
    ema_decay = config.ema_decay if config.reference == "ema" else None
    return Reference(runtime.place(model, device, sharding), ema_decay=ema_decay)


def _policy_weights(policy: nn.Module) -> dict[str, torch.Tensor]:
    """The policy's full weights by plain model names (LoRA adapters must be merged by the caller)."""
    weights = base_model(policy).named_parameters()
    return {name.replace(".base_layer", ""): p for name, p in weights if "lora_" not in name}


@torch.no_grad()
def ema_update(reference: nn.Module, policy: nn.Module, decay: float) -> None:
    """reference <- decay * reference + (1 - decay) * policy (LoRA policies: with adapters merged)."""
    lora = hasattr(policy, "merge_adapter")
    if lora:
        policy.merge_adapter()
    try:
        weights = _policy_weights(policy)
        for name, ref_param in reference.named_parameters():
            ref_param.mul_(decay).add_(weights[name].to(ref_param.dtype), alpha=1.0 - decay)
    finally:
        if lora:
            policy.unmerge_adapter()
