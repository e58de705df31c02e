"""LoRA ingredients: an adapter directory becomes the full model it stands for (base + B A * scale)."""

from __future__ import annotations

from pathlib import Path


def merge_lora_ingredient(adapter_dir: Path, out: Path) -> Path:
    """A LoRA adapter directory becomes the full merged model (base + B A * scale), written to `out`."""
    from peft import PeftConfig, PeftModel

    from salsa.models import load_causal_lm, load_tokenizer

    base_name = PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    model = PeftModel.from_pretrained(load_causal_lm(base_name), str(adapter_dir)).merge_and_unload()
    model.save_pretrained(out)
    load_tokenizer(base_name).save_pretrained(out)
    return out
