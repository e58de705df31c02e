"""LoRA ingredients: an adapter directory becomes the full model it stands for (base + B A * scale)."""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel

from salsa.errors import naming
from salsa.io import read_json
from salsa.models import load_causal_lm, load_tokenizer, resolve_model


def is_lora_dir(path: Path) -> bool:
    """An adapter directory (adapter_config.json, no config.json of its own)."""
    return (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()


def lora_base(adapter_dir: Path) -> str:
    """The base model an adapter was trained on, as `from_pretrained` takes it (a GGUF base as salsa converted it,
    a local directory as an absolute path, a hub id as it is)."""
    base = resolve_model(read_json(adapter_dir / "adapter_config.json")["base_model_name_or_path"])
    return str(Path(base).resolve()) if Path(base).is_dir() else base


def merge_lora_ingredient(adapter_dir: Path, out: Path) -> Path:
    """A LoRA adapter directory becomes the full merged model (base + B A * scale), written to `out`."""
    base = lora_base(adapter_dir)
    model = PeftModel.from_pretrained(load_causal_lm(base), str(adapter_dir)).merge_and_unload()
    with naming(out):
        model.save_pretrained(out)
        load_tokenizer(base).save_pretrained(out)
    return out
