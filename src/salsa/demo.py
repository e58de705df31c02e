"""`salsa demo`: a quick offline run on the default model and the built-in task."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from salsa.config import SFTConfig
from salsa.data import render_prompt
from salsa.progress import console
from salsa.sft import train_sft
from salsa.tasks.reviews import make_prompt

DEMO_SFT = SFTConfig(max_steps=15, batch_size=8, learning_rate=3e-5, num_models=2, max_length=128)


def sample_reply(model_dir: Path, prompt: str, max_new_tokens: int = 40, seed: int = 0) -> str:
    """One sampled reply from a saved model directory, loaded with plain transformers."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    text = render_prompt(tokenizer, [{"role": "user", "content": prompt}])
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.7, top_p=0.95)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def run_demo(output_dir: str | Path = "runs/demo", show_progress: bool = True) -> list[Path]:
    """Fine-tune the default model twice (two seeds) on the built-in reviews data and show a reply of each."""
    config = dataclasses.replace(DEMO_SFT, output_dir=str(Path(output_dir) / "sft"))
    paths = train_sft(config, show_progress=show_progress)
    prompt = make_prompt("a neighbourhood bakery", "negative")
    console.print(f"\n[bold]prompt:[/] {prompt}")
    for path in paths:
        console.print(f"[bold]{path}:[/] {sample_reply(path, prompt)}")
    return paths
