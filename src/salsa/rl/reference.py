"""The KL reference, the one thing SALSA changes: where it starts (sft | soup | ema | none) and how it moves.

Where it starts (`reference`):
- sft:  an SFT model (the standard RLHF baseline).
- soup: a model soup, from a soup directory (by default the init, which must then be a soup) or averaged in memory
        from SFT models (SALSA).
- ema:  the policy init, moving by the ema schedule (as before schedules existed: an alias of the init as an sft
        reference with `reference_schedule: ema`).
- none: no reference and no KL penalty (ablation).

How it moves (`reference_schedule`; see docs/methods/reference-schedules.md), after optimizer step `step`:
- fixed: never (a frozen reference).
- ema:   every step,      reference <- decay * reference + (1 - decay) * policy           (WARP's EMA anchor)
- soft:  every N steps,   reference <- (1 - w) * reference + w * policy                  (TR-DPO, soft update)
- hard:  every N steps,   reference <- policy                                             (TR-DPO, hard update)
A moving reference is a copy of its own in float32 (small updates must not round away). When the policy trains
LoRA adapters on the model that is also a fixed reference (sft, or a soup directory), the reference is the policy
with its adapters switched off: no second copy (as TRL and verl do).

A `Reference` owns its state: the training loops (online RL and DPO alike) call `update` after a step that updated
the policy, never after a step skipped for a non-finite value, and checkpoint and restore it with `state` / `restore`
(a fixed reference has no state to keep).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from salsa import runtime
from salsa.config import PolicyConfig
from salsa.models import base_model, load_causal_lm
from salsa.policy import response_forward
from salsa.weights.in_memory import soup_model

STATE_PREFIX = "reference."


@dataclass(frozen=True)
class Schedule:
    """How a moving reference follows the policy: after every `every`-th step,
    reference <- (1 - weight) * reference + weight * policy."""

    every: int
    weight: float


def reference_schedule(config: PolicyConfig) -> Schedule | None:
    """The schedule `reference_schedule` names (`reference: ema` is the ema schedule); None for a fixed reference."""
    kind = "ema" if config.reference == "ema" else config.reference_schedule
    schedules = {
        "fixed": None,
        "ema": Schedule(every=1, weight=1.0 - config.ema_decay),
        "soft": Schedule(every=config.reference_update_steps, weight=config.reference_update_weight),
        "hard": Schedule(every=config.reference_update_steps, weight=1.0),
    }
    return schedules[kind]


class Reference:
    """The KL anchor: a frozen model, the (LoRA) policy itself with its adapters switched off, or a copy that follows
    the policy on a `schedule`."""

    def __init__(self, model: nn.Module, adapters_off: bool = False, schedule: Schedule | None = None):
        self.model, self.adapters_off, self.schedule = model, adapters_off, schedule

    def scoring(self):
        """The context in which `model` is the reference (adapters off, when it is the policy)."""
        return self.model.disable_adapter() if self.adapters_off else contextlib.nullcontext()

    def logprobs(self, sequences, attention_mask, prompt_length: int, temperature: float) -> torch.Tensor:
        with self.scoring():
            return response_forward(self.model, sequences, attention_mask, prompt_length, temperature).logprobs

    @property
    def moving(self) -> bool:
        return self.schedule is not None

    def update(self, policy: nn.Module, step: int) -> None:
        """After optimizer step `step` (counted from 1): a moving reference follows the policy when its schedule is
        due; a fixed one stays."""
        if self.schedule is not None and step % self.schedule.every == 0:
            move_towards(self.model, policy, self.schedule.weight)

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


def reference_dir(config: PolicyConfig) -> str:
    """The model directory (or hub id) of a frozen sft or soup reference: reference_model, else the init (for a soup
    reference, input validation made sure the init is a soup)."""
    return config.reference_model or config.init


def shares_the_policy_base(config: PolicyConfig) -> bool:
    """LoRA on the model that is also a fixed reference (sft, or a soup directory): the base under the adapters is
    the reference."""
    from_a_directory = config.reference in ("sft", "soup") and not config.reference_models
    same_model = Path(reference_dir(config)).resolve() == Path(config.init).resolve()
    return config.use_lora and from_a_directory and same_model and reference_schedule(config) is None


def load_reference(
    config: PolicyConfig, policy: nn.Module, device: torch.device, sharding: str = "none"
) -> Reference | None:
    """The reference, in eval mode, at its start, placed by `sharding` when it is fixed; None for `reference: none`."""
    if config.reference == "none":
        return None
    if shares_the_policy_base(config):
        return Reference(policy, adapters_off=True)
    schedule = reference_schedule(config)
    # A fixed reference is only run forward: it is held in the compute precision (half the memory in bf16).
    # A moving one accumulates small updates, so it stays in float32.
    dtype = runtime.forward_dtype(config.mixed_precision) if schedule is None else torch.float32
    if config.reference == "soup" and config.reference_models:
        model = soup_model(config.reference_models, config.reference_weights).to(dtype)
    else:
        model = load_causal_lm(reference_dir(config), dtype)  # reference ema: the init
    model.eval().requires_grad_(False)
    # A moving reference is updated in place from the policy's full weights, so it stays whole on every process.
    return Reference(runtime.place(model, device, sharding if schedule is None else "none"), schedule=schedule)


@torch.no_grad()
def move_towards(reference: nn.Module, policy: nn.Module, weight: float) -> None:
    """reference <- (1 - weight) * reference + weight * policy, one tensor at a time (weight 1: the policy's weights).

    A LoRA layer's full weight is its base plus its adapters' delta (B A * scale), computed apart: merging the
    adapters into the frozen base and back would round the base a little at every update, which a resumed run,
    reading the base afresh, could not repeat."""
    model = base_model(policy)
    lora_layers = {name: m for name, m in model.named_modules() if hasattr(m, "get_delta_weight")}
    own = dict(model.named_parameters())
    for name, ref_param in reference.named_parameters():
        module_name, _, kind = name.rpartition(".")
        layer = lora_layers.get(module_name)
        if layer is None:
            full = own[name]
        else:
            full = getattr(layer.base_layer, kind)
            if kind == "weight":
                for adapter in layer.active_adapters:
                    full = full + layer.get_delta_weight(adapter)
        ref_param.lerp_(full.to(ref_param.dtype), weight)
