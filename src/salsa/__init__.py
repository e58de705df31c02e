"""salsa: soup-referenced RLHF (SALSA, arXiv 2411.01798).

The public API is imported lazily, so `salsa --help` and config errors answer without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from salsa.version import __version__

_API = {
    "SFTConfig": "salsa.config",
    "SoupConfig": "salsa.config",
    "SalsaError": "salsa.errors",
    "train_sft": "salsa.sft",
    "build_soup": "salsa.soup",
    "soup_state_dict": "salsa.weights.in_memory",
    "load_causal_lm": "salsa.models",
    "load_tokenizer": "salsa.models",
    "RLConfig": "salsa.config",
    "DataConfig": "salsa.config",
    "RewardConfig": "salsa.config",
    "train_rl": "salsa.rl.ppo",
    "DPOConfig": "salsa.config",
    "train_dpo": "salsa.rl.dpo",
    "train_reward": "salsa.reward",
    "RewardModel": "salsa.scoring",
    "make_task_data": "salsa.task_data",
}

__all__ = [
    "SFTConfig",
    "SoupConfig",
    "SalsaError",
    "train_sft",
    "build_soup",
    "soup_state_dict",
    "load_causal_lm",
    "load_tokenizer",
    "RLConfig",
    "DataConfig",
    "RewardConfig",
    "train_rl",
    "DPOConfig",
    "train_dpo",
    "train_reward",
    "RewardModel",
    "make_task_data",
    "__version__",
]

if TYPE_CHECKING:
    from salsa.config import DataConfig, DPOConfig, RewardConfig, RLConfig, SFTConfig, SoupConfig
    from salsa.errors import SalsaError
    from salsa.models import load_causal_lm, load_tokenizer
    from salsa.reward import train_reward
    from salsa.rl.dpo import train_dpo
    from salsa.rl.ppo import train_rl
    from salsa.scoring import RewardModel
    from salsa.sft import train_sft
    from salsa.soup import build_soup
    from salsa.task_data import make_task_data
    from salsa.weights.in_memory import soup_state_dict


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'salsa' has no attribute {name!r}")
