"""Checks that K models can be averaged at all, run before anything is written: one architecture, one tokenizer
vocabulary, the same tensor names, shapes and kinds."""

from __future__ import annotations

from pathlib import Path

from salsa.errors import SoupError
from salsa.io import read_json

# config.json keys that do not change what the weights mean: bookkeeping, runtime settings and generation
# settings (older configs carry them; mergekit merges models that differ in them too).
CONFIG_KEYS_IGNORED = {
    "_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache", "output_attentions",
    "output_hidden_states", "return_dict", "max_length", "min_length", "do_sample", "early_stopping", "num_beams",
    "num_beam_groups", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty",
    "no_repeat_ngram_size", "num_return_sequences", "diversity_penalty", "bad_words_ids", "output_scores",
    "return_dict_in_generate", "remove_invalid_values", "suppress_tokens", "begin_suppress_tokens",
}  # fmt: skip


def load_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise SoupError(f"{model_dir}: missing config.json; is this a model directory?")
    return read_json(path)


def check_configs(dirs: list[Path]) -> dict:
    first = load_config(dirs[0])
    for other_dir in dirs[1:]:
        other = load_config(other_dir)
        for key in sorted((set(first) | set(other)) - CONFIG_KEYS_IGNORED):
            if first.get(key) != other.get(key):
                raise SoupError(
                    f"{other_dir}/config.json differs from {dirs[0]}/config.json in '{key}' "
                    f"({other.get(key)!r} vs {first.get(key)!r}); soups need one architecture"
                )
    return first


def _vocabulary(model_dir: Path):
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    data = read_json(path)
    return data.get("model", {}).get("vocab"), [(t["id"], t["content"]) for t in data.get("added_tokens", [])]


def check_tokenizers(dirs: list[Path]) -> None:
    first_bytes = (dirs[0] / "tokenizer.json").read_bytes() if (dirs[0] / "tokenizer.json").is_file() else None
    first = None
    for other_dir in dirs[1:]:
        path = other_dir / "tokenizer.json"
        if first_bytes is not None and path.is_file() and path.read_bytes() == first_bytes:
            continue  # identical files: nothing to parse
        first = first if first is not None else _vocabulary(dirs[0])
        other = _vocabulary(other_dir)
        if first is not None and other is not None and first != other:
            raise SoupError(
                f"{other_dir} has a different tokenizer vocabulary from {dirs[0]}; soups need one tokenizer"
            )


def tied_names(config: dict) -> set[str]:
    # With tied embeddings the output projection is the input embedding; writers may or may not store it.
    tied = config.get("tie_word_embeddings", False) or config.get("text_config", {}).get("tie_word_embeddings")
    return {"lm_head.weight"} if tied else set()


def check_same_tensors(names, shapes: dict[str, tuple], other, label: str) -> None:
    other_names = set(other)
    missing, extra = sorted(set(names) - other_names), sorted(other_names - set(names))
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise SoupError(f"{label} has different tensor names from the first model ({detail})")
    for name in names:
        shape = tuple(other[name].shape)
        if shape != shapes[name]:
            raise SoupError(f"{label}: tensor '{name}' has shape {shape}, the first model has {shapes[name]}")
