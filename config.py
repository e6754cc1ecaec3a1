"""Typed configuration: dataclass defaults < TOML file < dotted CLI overrides.

Configs are data. A file is parsed with tomllib and never executed; every key is checked against the
dataclass tree, so a typo or a wrong type is a ConfigError that names the key and the valid choices.
The model section's schema depends on `model.name`: each registered model brings its own dataclass.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A user mistake in a config file or on the command line; printed without a traceback."""


@dataclass
class DataConfig:
    dataset: str = "shakespeare_char"  # a folder data/<dataset> written by data/prepare.py, or a synthetic
                                       # task generated on the fly: "copy" or "mqar" (see data/synthetic.py)
    data_dir: str = "data"             # where prepared datasets live (relative to the repo root)
    task_vocab: int = 64               # synthetic tasks: vocabulary size
    task_pairs: int = 8                # mqar: key-value pairs per sequence; copy: tokens to copy


@dataclass
class OptimConfig:
    lr: float = 6e-4                   # peak learning rate, reached after warmup_iters
    min_lr: float = 6e-5               # cosine decay ends here (nanoGPT/Chinchilla: about lr / 10)
    warmup_iters: int = 100
    lr_decay_iters: int = 0            # 0: decay over the whole run (train.max_iters)
    weight_decay: float = 0.1          # applied to matrices only, never to biases, norms or embeddings
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0             # max global gradient norm; 0 disables clipping


@dataclass
class TrainConfig:
    out_dir: str = "out"
    init_from: str = "scratch"         # scratch | resume | auto (resume if out_dir has a checkpoint) | gpt2[-medium|-large|-xl]
    max_iters: int = 1000              # the budget in optimizer steps, unless one of the next three is set
    max_tokens: int = 0                # > 0: budget in tokens (all processes)
    max_flops: float = 0.0             # > 0: budget in training FLOPs (model.flops_per_token() per token)
    max_time_s: float = 0.0            # > 0: budget in training wall-clock seconds (evaluation excluded)
    batch_size: int = 12               # sequences per micro-batch per process
    grad_accum: int = 1                # micro-batches per optimizer step, summed over all processes
    eval_interval: int = 250           # evaluate (and checkpoint) every this many steps; 0: only at the end
    n_evals: int = 0                   # > 0: evaluate at n_evals even fractions of the budget instead
    eval_iters: int = 20               # batches per split per evaluation
    eval_batch_size: int = 0           # sequences per evaluation batch; 0: batch_size. Fix it to compare runs
                                       # with different batch sizes on exactly the same validation windows
    log_interval: int = 10
    checkpoint: bool = True            # write out_dir/ckpt.pt at every evaluation
    seed: int = 1337
    device: str = "auto"               # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"                # auto (bf16 autocast on GPUs that have it, else float32) | float32 | bfloat16
    compile: bool = False
    threads: int = 0                   # CPU intra-op threads; 0 keeps torch's default
    max_rollbacks: int = 3             # NaN/inf (or spiking) losses roll back to the last checkpoint this often
    spike_factor: float = 0.0          # > 0: a loss above this many times the recent mean also rolls back


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "token-to-image"
    run_name: str = ""
    group: str = ""
    mode: str = "online"               # online | offline | disabled


@dataclass
class Config:
    model: Any = None                  # the dataclass registered for model.name (see models/__init__.py)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Values that an option may only take from a fixed set; checked after the types.
CHOICES = {
    "train.init_from": ("scratch", "resume", "auto", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"),
    "train.dtype": ("auto", "float32", "bfloat16"),
    "wandb.mode": ("online", "offline", "disabled"),
}


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check (and for CLI strings, convert) one scalar against its annotated type."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(typ):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key} = {value!r} is not a valid {typ}")
    if typ is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key} must be empty")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(typ)[:1] or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if typ is Any:
        return value
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
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{prefix.rstrip('.')}] must be a table of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]}; valid keys{' in [' + prefix.rstrip('.') + ']' if prefix else ''}: "
            + ", ".join(names))
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        typ, key = hints[name], prefix + name
        if dataclasses.is_dataclass(typ):
            kwargs[name] = build(typ, data[name], key + ".")
        else:
            kwargs[name] = _coerce(data[name], typ, key)
            if key in CHOICES and kwargs[name] not in CHOICES[key]:
                raise ConfigError(f"{key} = {kwargs[name]!r}; valid choices: {', '.join(CHOICES[key])}")
    return cls(**kwargs)


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


def load_toml(path: str | Path, _seen: tuple = ()) -> dict:
    """A TOML config. A top-level `base = "other.toml"` (relative to this file) is loaded first and
    this file's keys are laid over it, so shared training settings live in one place."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; the ready-made ones are in configs/")
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
    return deep_merge(load_toml(path.parent / base, _seen + (path.resolve(),)), data)


def from_dict(data: dict) -> Config:
    """Validate a nested dict into a Config; the model section is checked against its registered schema."""
    from models import config_class  # the registry owns the per-model schemas

    data = dict(data)
    model_data = data.pop("model", None) or {}
    if not isinstance(model_data, dict):
        raise ConfigError(f"[model] must be a table of keys, got {model_data!r}")
    model_data = dict(model_data)
    if not isinstance(model_data.get("name", "gpt"), str):
        raise ConfigError(f"model.name must be a string, got {model_data['name']!r}")
    cfg = build(Config, data)
    cfg.model = build(config_class(model_data.get("name", "gpt")), model_data, "model.")
    validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    data = load_toml(path) if path else {}
    return from_dict(apply_overrides(data, list(overrides)))


def validate(cfg: Config) -> None:
    """Cross-field checks that a single type check cannot make; fail before any work starts."""
    t = cfg.train
    for key in ("max_iters", "batch_size", "grad_accum", "eval_iters", "log_interval"):
        if getattr(t, key) <= 0:
            raise ConfigError(f"train.{key} must be positive, got {getattr(t, key)}")
    budgets = [k for k in ("max_tokens", "max_flops", "max_time_s") if getattr(t, k) != 0]
    if len(budgets) > 1:
        raise ConfigError(f"give one budget, not {' and '.join('train.' + k for k in budgets)}")
    if any(getattr(t, k) < 0 for k in budgets):
        raise ConfigError(f"train.{budgets[0]} must be positive")
    if not 0 <= t.seed < 2 ** 63:
        raise ConfigError(f"train.seed must be in [0, 2**63), got {t.seed}")
    for key in ("threads", "max_rollbacks"):
        if getattr(t, key) < 0:
            raise ConfigError(f"train.{key} must be >= 0, got {getattr(t, key)}")
    if t.spike_factor < 0:
        raise ConfigError(f"train.spike_factor must be >= 0 (0 disables spike detection), got {t.spike_factor}")
    if t.eval_batch_size < 0:
        raise ConfigError(f"train.eval_batch_size must be >= 0 (0: train.batch_size), got {t.eval_batch_size}")
    if t.eval_interval < 0 or t.n_evals < 0:
        raise ConfigError("train.eval_interval and train.n_evals must be >= 0 (0 evaluates only at the end)")
    o = cfg.optim
    if o.lr <= 0 or o.min_lr < 0 or o.min_lr > o.lr:
        raise ConfigError(f"need 0 <= optim.min_lr <= optim.lr and optim.lr > 0, got lr={o.lr}, min_lr={o.min_lr}")
    for key in ("beta1", "beta2"):
        if not 0 <= getattr(o, key) < 1:
            raise ConfigError(f"optim.{key} must be in [0, 1), got {getattr(o, key)}")
    if o.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    if o.warmup_iters < 0 or o.lr_decay_iters < 0 or o.grad_clip < 0:
        raise ConfigError("optim.warmup_iters, optim.lr_decay_iters and optim.grad_clip must be >= 0")
    if hasattr(cfg.model, "validate"):
        cfg.model.validate()


def save_json(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
