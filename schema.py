"""Typed schemas for data files: dataclasses filled from TOML and dotted CLI overrides, never executed.

Every field is declared with `option(default, doc, choices)`, so the schema carries its own help: the
one-line meaning and the valid values that `--help` prints (`describe`) and that `build` enforces. A
typo or a wrong type is a ConfigError naming the key and the valid keys or choices. This module knows
no particular schema: config.py (training runs), the model registry and launch/spec.py (study
files) declare theirs with it.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Iterator


class ConfigError(ValueError):
    """A user mistake in a config file or on the command line; printed without a traceback."""


def option(default: Any, doc: str, choices: tuple = ()) -> Any:
    """A dataclass field with its one-line meaning and, optionally, the only values it may take."""
    meta = {"doc": doc, "choices": tuple(choices)}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check (and for CLI strings, convert) one scalar against its annotated type."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        for choice in typing.get_args(typ):
            try:
                return _coerce(value, choice, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key} = {value!r} is not a valid {typ}")
    if typ is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key} must be empty")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, e.g. {{name = value}}, got {value!r}")
        _, item = typing.get_args(typ)
        return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(typ)[:1] or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if typ is Any:
        return value
    if getattr(typ, "_is_runtime_protocol", False):  # a section built by the caller (config.Config.model)
        if isinstance(value, typ):
            return value
        raise ConfigError(f"{key} must be a {typ.__name__}, got {value!r}")
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if typ is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                raise ConfigError(f"{key} = {value} is too large for a number") from None
            if not math.isfinite(number):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
            return number
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {typ}")


def build(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys, wrong types and values
    outside a field's choices."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{prefix.rstrip('.')}] must be a table of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in [{prefix.rstrip('.')}]" if prefix else ""
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; valid keys{where}: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        typ, key = hints[name], prefix + name
        if dataclasses.is_dataclass(typ):
            kwargs[name] = build(typ, data[name], key + ".")
            continue
        kwargs[name] = _coerce(data[name], typ, key)
        choices = f.metadata.get("choices")
        if choices and kwargs[name] not in choices:
            raise ConfigError(f"{key} = {kwargs[name]!r}; valid choices: {', '.join(map(str, choices))}")
    return cls(**kwargs)


def describe(cls: type, prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """(dotted key, type, default, meaning) for every field of `cls`, nested dataclasses flattened:
    the help of a schema, read from the schema itself so it cannot drift from it."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            yield from describe(typ, prefix + f.name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        doc = f.metadata.get("doc", "")
        if f.metadata.get("choices"):
            doc += f" [{' | '.join(map(str, f.metadata['choices']))}]"
        name = getattr(typ, "__name__", str(typ).replace("typing.", ""))
        yield prefix + f.name, name, toml_literal(default), doc


def toml_literal(value: Any, key: str = "") -> str:
    """A value written so that parse_value reads back exactly the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if value != value else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v, key) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r} = {toml_literal(v, key)}" for k, v in value.items()) + "}"
    if value is None:
        return "(empty)"
    raise ConfigError(f"{key}: cannot pass {value!r} on the command line (tables are not overrides)")


def parse_value(text: str) -> Any:
    """A CLI value: TOML syntax when it parses (1e-3, true, [1, 2], "x"), else the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (ValueError, RecursionError):  # TOMLDecodeError, ints over 4300 digits, deep nesting
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `--a.b=value` strings to a nested dict (in place) and return it."""
    for item in overrides:
        if not item.startswith("--") or "=" not in item:
            raise ConfigError(f"cannot read override {item!r}; write it as --section.key=value, e.g. --train.max_iters=100")
        dotted, text = item[2:].split("=", 1)
        *path, last = dotted.split(".")
        node = data
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--{dotted}: {part} is a value, not a section")
        node[last] = parse_value(text)
    return data


def deep_merge(base: dict, top: dict) -> dict:
    """base with top's keys laid over it, tables merged key by key."""
    out = dict(base)
    for key, value in top.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def load_toml(path: str | Path, where: str = "configs/", _seen: tuple = ()) -> dict:
    """A TOML file. A top-level `base = "other.toml"` (relative to this file) is loaded first and
    this file's keys are laid over it, so shared settings live in one place. `where` names the
    folder of ready-made files for the error message."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"file {path} not found; the ready-made ones are in {where}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path} is its own base (base = ... chain: {' -> '.join(map(str, _seen))})")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # TOMLDecodeError, UnicodeDecodeError, int limits, deep nesting
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a file name, got {base!r}")
    return deep_merge(load_toml(path.parent / base, where, _seen + (path.resolve(),)), data)
