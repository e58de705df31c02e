"""Shared fixtures: a real tokenizer (the default model's) and tiny random Llama models built in code."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer():
    from salsa.models import load_tokenizer

    # Converts the shipped GGUF once per cache; later runs reuse the safetensors directory.
    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    from salsa.models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "base", tokenizer, seed=0)


@pytest.fixture()
def tiny_sft_config(tiny_model_dir, tmp_path):
    from salsa import SFTConfig

    return SFTConfig(
        model=str(tiny_model_dir),
        output_dir=str(tmp_path / "sft"),
        max_steps=6,
        batch_size=4,
        learning_rate=3e-3,
        warmup_ratio=0.0,
        max_length=64,
        num_models=1,
    )
