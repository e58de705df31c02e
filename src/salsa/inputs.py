"""Every input a stage names, checked before any model loads.

A config field declares the kind of input it names (`option(..., input="prompts")`); `check_inputs` checks
each kind the same way for every stage and returns what it parsed (data rows), so the stage does not read
its data twice. Nothing here loads model weights or converts the default model: a mistake in row 900 of a
data file, or a model path with a typo, is reported in a second, not after a model has loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from salsa import data, standard_sets
from salsa.config import REFERENCES, REWARD_BACKBONES
from salsa.config_loading import validate_values
from salsa.errors import ConfigError, DataError, SalsaError
from salsa.io import REWARD_META, SOUP_RECORD, is_soup_directory
from salsa.judge_prompt import check_template
from salsa.shipped import DEFAULT_MODEL, default_gguf_path


def _looks_like_path(ref: str) -> bool:
    # A hub id is `name` or `org/name`; anything else with a slash, or starting like a path, is a path.
    return ref.startswith(("/", "./", "../", "~", ".\\")) or ref.count("/") > 1 or "\\" in ref


def check_model_reference(ref: str, where: str, download: bool = False) -> None:
    """A model salsa can load: the default alias, a .gguf file, a local model directory or a hub id (in the local
    cache when the hub is offline, unless `download`: a dry run checks what a run would fetch)."""
    if ref == DEFAULT_MODEL:
        default_gguf_path()
        return
    path = Path(ref).expanduser()
    if ref.endswith(".gguf"):
        if not path.is_file():
            raise ConfigError(f"{where}: GGUF file {ref} does not exist")
        return
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{where}: {ref} is a file, not a model directory")
        if not (path / "config.json").is_file():
            raise ConfigError(f"{where}: {ref} is not a model directory (no config.json)")
        return
    if _looks_like_path(ref):
        raise ConfigError(f"{where}: model directory {ref} does not exist")
    # huggingface_hub loads httpx (a second of start-up): only a hub id needs it.
    from huggingface_hub import is_offline_mode, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(ref)
    except HFValidationError:
        raise ConfigError(f"{where}: '{ref}' is neither a local model directory nor a hub id (org/name)") from None
    if not download and is_offline_mode() and not isinstance(try_to_load_from_cache(ref, "config.json"), str):
        raise ConfigError(
            f"{where}: '{ref}' is not a local directory and not in the Hugging Face cache, and the hub is offline "
            "(HF_HUB_OFFLINE); download it first or pass a local model directory"
        )


def check_model_directory(ref: str, where: str, adapters: bool = False) -> None:
    """A local directory holding a model (or, with `adapters`, a LoRA adapter directory)."""
    path = Path(ref)
    if not path.is_dir():
        raise ConfigError(f"{where}: {ref} {'is a file, not' if path.exists() else 'is not'} a model directory")
    markers = ("config.json", "adapter_config.json") if adapters else ("config.json",)
    if not any((path / m).is_file() for m in markers):
        raise ConfigError(f"{where}: {ref} is not a model directory (no {' or '.join(markers)})")


def is_function_spec(spec: str) -> bool:
    """`module:function` or `path/to/file.py:function` (a Windows drive letter aside)."""
    left, sep, right = spec.rpartition(":")
    module = left.endswith(".py") or left.replace(".", "").isidentifier()
    return bool(sep and left and right.isidentifier() and module)


def import_function(spec: str) -> Callable:
    """The function a spec names, imported (a file by its path); a mistake is a one-line error."""
    location, _, name = spec.rpartition(":")
    if location.endswith(".py"):
        if not Path(location).is_file():
            raise ConfigError(f"reward function file {location} does not exist")
        location = str(Path(location).resolve())  # one file, however its path is written (and whatever the cwd)
    try:
        module = _import_module(location)
    except ImportError as e:
        raise ConfigError(f"reward function '{spec}': cannot import {location} ({e})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"reward function '{spec}': {location} has no function '{name}'")
    return function


@functools.cache  # validation imports it before any model loads, then the stage: a reward file runs once
def _import_module(location: str):
    """A module by name, or a Python file by its (absolute) path."""
    if not location.endswith(".py"):
        return importlib.import_module(location)
    module_spec = importlib.util.spec_from_file_location(Path(location).stem, location)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


# `rl.reward_model: gold`: the task's gold judge is the RL reward (a control experiment).
GOLD_REWARD = "gold"


def check_reward_model(ref: str, where: str, download: bool = False) -> None:
    """A reward: a `salsa reward` directory, a sequence-classification model with one label (a directory or a hub
    id), or a Python function `module:function` / `path/to/file.py:function` (imported to check it exists)."""
    if is_function_spec(ref):
        import_function(ref)
        return
    path = Path(ref)
    if not path.exists():
        # A bare name with a dot is a file or directory (rewards.py, model.pt); org/name is a hub id, dots and all
        # (Skywork/Skywork-Reward-V2-Qwen3-0.6B).
        if _looks_like_path(ref) or ("/" not in ref and "." in ref):
            raise ConfigError(f"{where}: reward model directory {ref} does not exist")
        check_model_reference(ref, where, download)  # a hub id
        return
    if not path.is_dir():
        raise ConfigError(f"{where}: {ref} is a file, not a reward model directory")
    meta_file = path / REWARD_META
    if meta_file.is_file():
        _check_salsa_reward(path, meta_file)
        return
    config_file = path / "config.json"
    if not config_file.is_file():
        raise DataError(f"{where}: {ref} is not a reward model (no config.json); train one with `salsa reward`")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{config_file}: not valid JSON") from None
    labels = len(config.get("id2label") or {}) or config.get("num_labels", 2)
    classifier = any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])
    if not classifier or labels != 1:
        raise DataError(
            f"{where}: {ref} is not a reward model: give a `salsa reward` directory, a sequence-classification "
            f"model with one label (this one: {', '.join(config.get('architectures') or ['no architecture'])}, "
            f"{labels} labels), or a Python function module:function"
        )


def _check_salsa_reward(path: Path, meta_file: Path) -> None:
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        problems = [
            meta["backbone"] not in REWARD_BACKBONES,
            not isinstance(meta["max_length"], int),
            not all(isinstance(meta[k], int | float) and math.isfinite(meta[k]) for k in ("mean", "std")),
            meta["std"] <= 0,
        ]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        problems = [True]
    if any(problems):
        raise DataError(
            f"{meta_file}: corrupt (expects backbone, max_length and a finite mean and std > 0); "
            "retrain it with `salsa reward`"
        )
    if (path / "score_head.safetensors").is_file():
        raise DataError(f"{path}: written by an older salsa (score_head.safetensors); retrain it with `salsa reward`")


def check_judge_template(ref: str, where: str) -> str:
    """A judge prompt template file holding every placeholder; returns its text."""
    path = Path(ref)
    if not path.is_file():
        raise ConfigError(f"{where}: judge template {ref} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        return check_template(path.read_text(encoding="utf-8"), f"{where} ({ref})")
    except UnicodeDecodeError:
        raise DataError(f"{where}: {ref} is not UTF-8 text; save it as UTF-8") from None


def check_eval_directory(ref: str, where: str) -> dict:
    """A directory written by `salsa eval`; returns its results."""
    results_file = Path(ref) / "results.json"
    if not results_file.is_file():
        raise DataError(f"{where}: {results_file} does not exist; run `salsa eval` first")
    try:
        results = json.loads(results_file.read_text(encoding="utf-8"))
        if not all(k in results for k in ("settings", "policies", "comparisons", "judges")):
            raise KeyError
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise DataError(f"{results_file}: corrupt results; run `salsa eval` again") from None
    if "verdict_min_seeds" not in results["settings"]:  # the report reads each comparison's verdict by the rule
        raise DataError(
            f"{results_file}: written before verdicts by the rule and bootstraps over subjects; run `salsa eval` again"
        )
    return results


def check_normalisation_file(ref: str, where: str) -> tuple[float, float]:
    """A reward normalisation (`salsa run`'s normalisation/reward_normalisation.json): a JSON object with a finite
    mean and a finite std > 0; returns them."""
    path = Path(ref)
    if not path.is_file():
        raise ConfigError(f"{where}: {ref} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        mean, std = recorded["mean"], recorded["std"]
        valid = all(isinstance(v, int | float) and math.isfinite(v) for v in (mean, std)) and std > 0
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        valid = False
    if not valid:
        raise DataError(
            f"{where}: {ref} is corrupt (expects a finite mean and std > 0); remove its folder and rerun `salsa run`, "
            "which measures it again"
        )
    return float(mean), float(std)


def is_hub_dataset(source: str) -> bool:
    """A data source that names a hub dataset (downloaded by `datasets`) rather than a local file or directory."""
    return source.startswith("hub:") or (
        not source.startswith("builtin:") and not Path(source).exists() and not _looks_like_path(source)
        and "." not in Path(source).name
    )  # fmt: skip


def _parse_data(kind: str, source: str, split: str, download: bool) -> Any:
    if download and is_hub_dataset(source):  # a dry run: the name's form only, nothing fetched
        if source.startswith("hub:"):
            name = data.hub_source(source)[0]
        else:
            name = source
        from huggingface_hub.utils import HFValidationError, validate_repo_id  # as above: a hub name only

        try:
            validate_repo_id(name)
        except HFValidationError:
            raise DataError(f"'{source}' is neither a local data file nor a hub dataset id (org/name)") from None
        return None
    if kind == "prompts":
        return data.load_prompts(source)
    rows, name = data.load_records(source, split)
    return data.parse_sft_rows(rows, name) if kind == "sft_data" else data.parse_preference_rows(rows, name)


def _check_one(kind: str, value: str, where: str, split: str, download: bool) -> Any:
    if kind == "model":
        return check_model_reference(value, where, download)
    if kind in ("model_dir", "ingredient"):
        return check_model_directory(value, where, adapters=kind == "ingredient")
    if kind == "reward_model" or (kind == "rl_reward" and value != GOLD_REWARD):
        return check_reward_model(value, where, download)
    if kind == "rl_reward":  # the task's gold judge as the reward: RLConfig.check asks for the task
        return None
    if kind == "eval_dir":
        return check_eval_directory(value, where)
    if kind == "judge_template":
        return check_judge_template(value, where)
    if kind == "normalisation":
        return check_normalisation_file(value, where)
    if kind == "prompts" and value in standard_sets.SETS:  # a benchmark's prompts, from its installed package
        return standard_sets.load_set(value)[0]
    return _parse_data(kind, value, split, download)


def _values(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [v for paths in value.values() for v in paths]
    return list(value) if isinstance(value, list) else [value]


_last: tuple[Any, tuple, dict[str, Any]] | None = None


def validate(config: Any, out: Path | None = None) -> dict[str, Any]:
    """Check the config's values and every input it names (before any model loads); returns the parsed inputs.

    The command line validates before it imports torch and the stage's module (so a mistake is reported in
    about a second); the stage then asks again with the same config object and gets the same answer without
    reading its data twice.
    """
    global _last
    key = (dataclasses.asdict(config), out)
    if _last is not None and _last[0] is config and _last[1] == key:
        return _last[2]
    validate_values(config)
    parsed = check_inputs(config, out)
    _last = (config, key, parsed)
    return parsed


def check_inputs(
    config: Any, out: Path | None = None, made_in: Path | None = None, download: bool = False
) -> dict[str, Any]:
    """Check every input field of `config` that its stage will read; returns {field: parsed} for data fields.

    A dry run of a whole pipeline skips the inputs that earlier stages will write (under `made_in`) and, with
    `download`, checks hub models and datasets by the form of their names only.
    """
    stage = type(config).STAGE
    parsed: dict[str, Any] = {}
    local: list[tuple[str, Path]] = []
    if stage in ("rl", "dpo"):  # first: which model anchors the run matters more than a data row
        check_soup_reference(config, made_in, download)
    if stage == "eval":
        check_reference_answers(config)
    for f in dataclasses.fields(config):
        kind, value = f.metadata.get("input"), getattr(config, f.name)
        needed = f.metadata.get("needed")
        if kind is None or value is None or (needed is not None and not needed(config)):
            continue
        split = getattr(config, f"{f.name}_split", "train")
        values = [v for v in _values(value) if made_in is None or made_in not in Path(v).resolve().parents]
        results = [_check_one(kind, v, f"{stage}.{f.name}", split, download) for v in values]
        if kind in ("sft_data", "preferences", "prompts", "eval_dir", "judge_template") and results:
            parsed[f.name] = results[0]
        local += [(f"{stage}.{f.name}", Path(v)) for v in _values(value) if Path(v).exists()]
    if out is not None:
        check_output_apart(out, local)
    return parsed


def check_reference_answers(config: Any) -> None:
    """`eval.comparisons` `a:references` needs a split whose prompts are a standard set with reference answers."""
    item = next((c for c in config.comparisons or [] if c.endswith(f":{REFERENCES}")), None)
    if item is None:
        return
    if not standard_sets.has_references(config.prompts) and not standard_sets.has_references(config.ood_prompts):
        with_references = ", ".join(name for name in standard_sets.SETS if standard_sets.has_references(name))
        raise ConfigError(
            f"eval.comparisons: '{item}' needs the reference answers of a standard set, but neither "
            f"eval.prompts ({config.prompts}) nor eval.ood_prompts ({config.ood_prompts or 'null'}) has any; sets "
            f"with references: {with_references}"
        )


def check_soup_reference(config: Any, made_in: Path | None = None, download: bool = False) -> None:
    """`reference: soup` without reference_model or reference_models: the init is the reference, so it must be a
    soup (SALSA's own setting: start from the soup, anchor to it); any other init would silently stand in for one."""
    if config.reference != "soup" or config.reference_model or config.reference_models:
        return
    if made_in is not None and made_in in Path(config.init).resolve().parents:
        return  # an earlier stage of the run writes it
    stage = type(config).STAGE
    check_model_reference(config.init, f"{stage}.init", download)  # a missing init is reported as missing
    if not is_soup_directory(config.init):
        raise ConfigError(
            f"{stage}.reference is soup but {stage}.init ({config.init}) is not a soup directory (no {SOUP_RECORD} "
            "from `salsa soup`); pass a soup directory as --init or --reference-model, or models to average as "
            "--set reference_models=[A,B]"
        )


def check_output_apart(out: Path, inputs: list[tuple[str, Path]]) -> None:
    """The output directory may not be an input, hold one, or lie inside one: writing it would touch the input."""
    target = out.resolve()
    for where, path in inputs:
        source = path.resolve()
        if target == source or source in target.parents or target in source.parents:
            relation = "is" if target == source else "lies inside" if source in target.parents else "holds"
            raise SalsaError(f"the output directory {out} {relation} the input {where} ({path}); choose another")
