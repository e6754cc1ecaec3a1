"""Typed configuration of a training run: dataclass defaults < TOML file < dotted CLI overrides.

Configs are data. A file is parsed with tomllib and never executed; every key is checked against the
dataclass tree (schema.py), so a typo or a wrong type is a ConfigError that names the key and the
valid choices. The model section's schema depends on `model.name`: each registered model brings its
own dataclass (models/__init__.py), which is why this module imports the registry and not the reverse.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from data.loader import VAL_HALVES
from schema import ConfigError, apply_overrides, build, describe, load_toml, option

__all__ = ["Config", "ConfigError", "DataConfig", "ModelConfig", "OptimConfig", "TrainConfig", "WandbConfig",
           "from_dict", "load_config", "padded_vocab", "resolve_vocab", "save_json", "help_text"]


@runtime_checkable
class ModelConfig(Protocol):
    """What the trainer reads of any registered model's config (each model adds its own fields)."""
    name: str
    block_size: int
    vocab_size: int

    def validate(self) -> None: ...


@dataclass
class DataConfig:
    dataset: str = option("shakespeare_char", "a folder data/<dataset> written by data/prepare.py, or a synthetic "
                          "task generated on the fly: copy | mqar (data/synthetic.py)")
    data_dir: str = option("data", "where prepared datasets live (relative to the repository root)")
    task_vocab: int = option(64, "synthetic tasks: vocabulary size")
    task_pairs: int = option(8, "synthetic tasks: key-value pairs per sequence (mqar) or tokens to copy (copy)")


@dataclass
class OptimConfig:
    lr: float = option(6e-4, "peak learning rate, reached after warmup_iters")
    min_lr: float = option(6e-5, "the schedule decays to this (nanoGPT/Chinchilla: about lr / 10)")
    warmup_iters: int = option(100, "linear warm-up steps")
    schedule: str = option("cosine", "cosine: warm-up, then cosine decay to min_lr at the end of the budget; wsd: "
                           "warm-up, constant, then a linear decay over the last decay_frac of the budget (Hagele et "
                           "al. 2024), so a run's stable phase is shared by every shorter budget", ("cosine", "wsd"))
    decay_frac: float = option(0.2, "wsd: share of the budget spent decaying to min_lr")
    lr_decay_iters: int = option(0, "cosine: decay over this many steps; 0: over the whole budget")
    weight_decay: float = option(0.1, "AdamW decay of matrices only, never of biases, norms or gains")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    grad_clip: float = option(1.0, "max global gradient norm; 0 disables clipping")
    lr_mult: dict[str, float] = option({}, "{part = multiplier}: these parts of every layer (model.components() names without the "
                          "layer, e.g. route, cnn, attn, embedding) train at the scheduled lr times the multiplier")


@dataclass
class TrainConfig:
    out_dir: str = option("out", "run directory: checkpoints, metrics.jsonl, config.json, result.json")
    init_from: str = option("scratch", "scratch | resume | auto (resume if out_dir has a checkpoint) | OpenAI's "
                            "GPT-2 weights", ("scratch", "resume", "auto", "gpt2", "gpt2-medium", "gpt2-large",
                                              "gpt2-xl"))
    max_iters: int = option(1000, "the budget in optimizer steps, unless max_tokens, max_flops or max_time_s is set")
    max_tokens: int = option(0, "> 0: budget in training tokens (all processes)")
    max_flops: float = option(0.0, "> 0: budget in training FLOPs (the model's flops_per_token per token)")
    max_time_s: float = option(0.0, "> 0: budget in training wall-clock seconds (evaluation excluded)")
    batch_size: int = option(12, "sequences per micro-batch per process")
    grad_accum: int = option(1, "micro-batches per optimizer step, summed over all processes")
    eval_interval: int = option(250, "evaluate (and checkpoint) every this many steps; 0: only at the end")
    n_evals: int = option(0, "> 0: evaluate at n_evals even fractions of the budget instead of eval_interval")
    eval_iters: int = option(20, "batches per split per evaluation")
    eval_batch_size: int = option(0, "sequences per evaluation batch; 0: batch_size. Fix it to score runs with "
                                  "different batch sizes on the same validation windows")
    log_interval: int = option(10, "steps between metrics lines (loss, lr, throughput, gradient norms)")
    checkpoint: bool = option(True, "write a checkpoint at every evaluation")
    fork_steps: list[int] = option([], "also checkpoint after these steps into out_dir/forks/<step>/: a run with a "
                                   "smaller budget continues from there (study budgets under the wsd schedule)")
    train_eval_iters: int = option(-1, "batches of the train split per evaluation; -1: eval_iters; 0: none")
    eval_split: str = option("val", "the validation windows scored (reported as val_*): val (the whole split), or one "
                             "half of its documents: val_tune (studies choose learning rates on it) or val_report "
                             "(studies report it)", ("val", *VAL_HALVES))
    seed: int = option(1337, "initial weights, data order and dropout")
    device: str = option("auto", "auto | cpu | cuda | cuda:N | mps")
    dtype: str = option("auto", "auto: bf16 autocast on GPUs that have it, else float32",
                        ("auto", "float32", "bfloat16"))
    compile: bool = option(False, "torch.compile the model")
    threads: int = option(0, "CPU intra-op threads; 0 keeps torch's default")
    max_rollbacks: int = option(3, "NaN/inf (or spiking) losses roll back to the last checkpoint this often")
    spike_factor: float = option(0.0, "> 0: a loss above this many times the recent mean also rolls back")


@dataclass
class WandbConfig:
    enabled: bool = option(False, "log to Weights & Biases")
    project: str = option("token-to-image", "wandb project")
    run_name: str = option("", "wandb run name and id; empty: wandb picks one")
    group: str = option("", "wandb group (a study puts its runs in one)")
    mode: str = option("online", "online | offline | disabled", ("online", "offline", "disabled"))


@dataclass
class Config:
    model: ModelConfig  # the dataclass registered for model.name (models/__init__.py)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def padded_vocab(n: int, multiple: int = 64) -> int:
    """Round the vocabulary up (50257 -> 50304) so the head's matmul tiles evenly on GPUs."""
    return -(-n // multiple) * multiple


def resolve_vocab(cfg: Config, dataset_vocab: int) -> Config:
    """The config with model.vocab_size sized from the data when it is 0 (a new Config: the validated
    one is never changed in place)."""
    if cfg.model.vocab_size == 0:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=padded_vocab(dataset_vocab)))
    if cfg.model.vocab_size < dataset_vocab:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the dataset's vocabulary "
                          f"({dataset_vocab}); set it to 0 to size it from the data")
    return cfg


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
    data["model"] = build(config_class(model_data.get("name", "gpt")), model_data, "model.")
    cfg = build(Config, data)
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
    if not 0 < o.decay_frac <= 1:
        raise ConfigError(f"optim.decay_frac must be in (0, 1], got {o.decay_frac}")
    if any(s <= 0 for s in t.fork_steps) or t.train_eval_iters < -1:
        raise ConfigError("train.fork_steps must be positive steps and train.train_eval_iters >= -1")
    if not all(v > 0 for v in o.lr_mult.values()):
        raise ConfigError(f"optim.lr_mult must be a table of positive numbers, e.g. {{route = 10}}, got {o.lr_mult!r}")
    if o.warmup_iters < 0 or o.lr_decay_iters < 0 or o.grad_clip < 0:
        raise ConfigError("optim.warmup_iters, optim.lr_decay_iters and optim.grad_clip must be >= 0")
    cfg.model.validate()


def changed_keys(then: dict, now: dict) -> list[str]:
    """The keys of a config section (a dict, as config.json and checkpoints store it) whose values differ."""
    return sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k))


def save_json(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")


def help_text() -> str:
    """Every config key with its type, default and meaning, read from the dataclasses themselves (so
    the help cannot drift from what is accepted): the backbone's [model] keys once, then what each
    registered preset adds or sets differently."""
    from models import MODELS, LMConfig

    def rows(cls: type, prefix: str, skip: set[tuple] = frozenset()) -> list[str]:
        return [f"  --{key:<26} {typ:<6} {default:<12} {doc}" for key, typ, default, doc in describe(cls, prefix)
                if (key, typ, default, doc) not in skip]

    lines = ["config keys: a TOML file's [section] key = value, or --section.key=value on the command line",
             "(key, type, default, meaning)"]
    for section in (DataConfig, OptimConfig, TrainConfig, WandbConfig):
        name = section.__name__.removesuffix("Config").lower()
        lines += ["", f"[{name}]", *rows(section, name + ".")]
    backbone = set(describe(LMConfig, "model."))
    lines += ["", f"[model] with name = \"lm\": {MODELS['lm'].summary} (the keys of every model)",
              *rows(LMConfig, "model.")]
    for name, entry in MODELS.items():
        if entry.config is not LMConfig:
            lines += ["", f"[model] with name = \"{name}\": {entry.summary}; the lm keys, and these:",
                      *rows(entry.config, "model.", backbone)]
    return "\n".join(lines)
