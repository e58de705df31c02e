"""salsa: soup-referenced RLHF (SALSA, arXiv 2411.01798).

The public API is imported lazily, so `salsa --help` and config errors answer without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_API = {
    "SFTConfig": "salsa.config",
    "SoupConfig": "salsa.config",
    "SalsaError": "salsa.errors",
    "train_sft": "salsa.sft",
    "build_soup": "salsa.soup",
    "soup_state_dict": "salsa.soup",
    "load_causal_lm": "salsa.models",
    "load_tokenizer": "salsa.models",
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
    "__version__",
]

if TYPE_CHECKING:
    from salsa.config import SFTConfig, SoupConfig
    from salsa.errors import SalsaError
    from salsa.models import load_causal_lm, load_tokenizer
    from salsa.sft import train_sft
    from salsa.soup import build_soup, soup_state_dict


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'salsa' has no attribute {name!r}")
