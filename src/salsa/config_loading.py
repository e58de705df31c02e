"""Stage configs from YAML files and `--set` overrides; their checks, fingerprints and saved copies.

A YAML file holds either one stage's keys at top level, or a whole-run config with one section per
stage (`sft:`, `soup:`, ...). Overrides are `key=value` strings; the key may carry the section prefix
(`sft.learning_rate=1e-5`). Unknown keys are errors that name the key and suggest the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from salsa.config import STAGES
from salsa.errors import ConfigError
from salsa.io import atomic_write_text

C = TypeVar("C")


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _unknown_key(cls: type, key: str) -> str:
    """Why `key` is no key of the stage `cls`: moved to another stage's config (`MOVED`), else the closest key."""
    moved = getattr(cls, "MOVED", {}).get(key)
    if moved:
        section = moved.partition(".")[0]
        return f"unknown key '{key}'; it is {moved} now, in the config of `salsa {section}`"
    return f"unknown key '{key}'{_suggest(key, _field_names(cls))}"


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], where)
    if origin is dict:
        if isinstance(value, str):
            value = _yaml_value(value, where)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of name: value, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}[{k}]") for k, v in value.items()}
    if origin is list:
        if isinstance(value, str):
            value = _yaml_value(value, where) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, list):
            value = [value]
        return [_coerce(v, args[0] if args else str, where) for v in value]
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes", "on"):
                return True
            if str(value).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(value)
        if annotation is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if annotation is float:
            if isinstance(value, bool) or not math.isfinite(float(value)):
                raise ValueError(value)
            return float(value)
        if annotation is str:
            if isinstance(value, dict | list):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        name = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string"}
        expected = name.get(getattr(annotation, "__name__", ""), str(annotation))
        raise ConfigError(f"{where}: expected {expected}, got {value!r}") from None
    return value


def _yaml_value(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"{where}: {text!r} is not a valid YAML value") from None


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def build_config(cls: type[C], values: dict[str, Any], where: str = "config") -> C:
    """Instantiate a stage dataclass from a mapping, checking every key and type."""
    hints = typing.get_type_hints(cls)
    names = _field_names(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where}: {_unknown_key(cls, key)}")
        kwargs[key] = _coerce(value, hints[key], f"{where}: key '{key}'")
    return cls(**kwargs)


def parse_overrides(cls: type, overrides: list[str], section: str) -> dict[str, Any]:
    """Turn `key=value` / `section.key=value` strings into a mapping for one stage.

    Every item is checked, also one that a later item overrides, so a typo never hides behind another value.
    """
    out: dict[str, Any] = {}
    hints, names = typing.get_type_hints(cls), _field_names(cls)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, for example {section}.seed=1")
        key, value = item.split("=", 1)
        key = key.strip()
        prefix, _, rest = key.partition(".")
        if rest:
            if prefix not in STAGES:
                raise ConfigError(f"--set {item!r}: unknown section '{prefix}'{_suggest(prefix, list(STAGES))}")
            if prefix != section:
                continue  # meant for another stage of a whole-run config
            key = rest
        if key not in names:
            raise ConfigError(f"--set {item!r}: {_unknown_key(cls, key)}")
        out[key] = _coerce(value, hints[key], f"--set {item!r}")
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML ({e.__class__.__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at top level")
    return raw


def load_stage_config(
    cls: type[C],
    section: str,
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    recorded: bool = False,
) -> C:
    """Load one stage's config from an optional YAML file plus `--set` overrides.

    The file holds this stage's keys at top level, or sections named after stages (`sft:`, `rl:`, ...).
    `recorded`: the file is one salsa wrote (a run's config.yaml, a job's spec); keys that have since moved to
    another stage's config (`MOVED`: DPO's, out of rl) were that stage's then and are left out, not refused.
    """
    values: dict[str, Any] = {}
    where = ""
    if path is not None:
        path = Path(path)
        raw = _read_yaml(path)
        names = _field_names(cls)
        sectioned = any(k in STAGES for k in raw)
        for key, value in raw.items():
            # A mapping under a key that is neither a section nor a key of this stage is a misspelled section.
            if key not in STAGES and (sectioned or (isinstance(value, dict) and key not in names)):
                raise ConfigError(f"{path}: unknown section '{key}'{_suggest(key, list(STAGES))}")
        if sectioned:
            raw = raw.get(section) or {}
            if not isinstance(raw, dict):
                raise ConfigError(f"{path}: section '{section}' must be a mapping of keys to values")
            where = f"{path} [{section}]"
        else:
            where = str(path)
        if recorded:
            raw = {k: v for k, v in raw.items() if k not in getattr(cls, "MOVED", {})}
        values = dataclasses.asdict(build_config(cls, raw, where))
    values.update(parse_overrides(cls, overrides or [], section))
    if overrides:
        where = f"{where} / --set" if where else "--set"
    return build_config(cls, values, where or "config")


def validate_values(config: Any) -> None:
    """Every declared rule of every field, then the stage's own cross-field rules (`check`)."""
    stage = getattr(config, "STAGE", "config")
    for f in dataclasses.fields(config):
        rule, value = f.metadata.get("check"), getattr(config, f.name)
        if rule is None or value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            problem = rule(item)
            if problem:
                raise ConfigError(f"{stage}.{f.name} {problem}, got {value!r}")
    if hasattr(config, "check"):
        config.check()


def describe_fields(cls: type) -> str:
    """One line per config key: name, default and help, for the CLI's --help."""
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"{f.name} = {default!r}: {f.metadata.get('help', '')}")
    return "\n".join(lines)


def config_to_yaml(config: Any, section: str | None = None) -> str:
    data = dataclasses.asdict(config)
    return yaml.safe_dump({section: data} if section else data, sort_keys=False)


def result_values(config: Any, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields that decide what a stage produces: all but `result=False` ones, the output path and `ignore`."""
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.metadata.get("result", True) and f.name != "output_dir" and f.name not in ignore
    }


def fingerprint(config: Any, ignore: tuple[str, ...] = ()) -> str:
    """A short hash of `result_values`: equal fingerprints, equal outputs."""
    text = yaml.safe_dump(result_values(config, ignore), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_config(config: Any, path: str | Path, section: str | None = None) -> None:
    """Write the resolved config next to a stage's outputs."""
    atomic_write_text(path, config_to_yaml(config, section))
