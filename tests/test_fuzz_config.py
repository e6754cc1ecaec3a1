"""Fuzzing the config loader and the CLI: every malformed input ends in a ConfigError that names the key.

Documents are drawn from the real schema (sections, keys, types of config.py and the model registry),
then damaged: mutated key names, values of other types, huge and negative numbers, NaN and infinities,
unicode, lists and tables where scalars belong; overrides are drawn as `--a.b=c` strings with missing
parts, stray dots and TOML fragments.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import typing

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import train as train_module
from config import Config, ConfigError, load_config
from engine import runtime
from helpers import ROOT, tiny_overrides, write_char_dataset
from models import MODELS

SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
HINTS = {name: typing.get_type_hints(cls) for name, cls in typing.get_type_hints(Config).items() if name != "model"}
MODEL_HINTS = {name: typing.get_type_hints(entry.config) for name, entry in MODELS.items()}
# the values a field may only take from a fixed set (schema.option's choices), by dotted key
CHOICES = {f"{section}.{f.name}": f.metadata["choices"]
           for section, cls in [*((s, typing.get_type_hints(Config)[s]) for s in HINTS),
                                *(("model", entry.config) for entry in MODELS.values())]
           for f in dataclasses.fields(cls) if f.metadata.get("choices")}
HUGE = [2 ** 63 - 1, -2 ** 63, 10 ** 30, 10 ** 400, -10 ** 400]
TOML_FRAGMENTS = ["[1,", "{a=", '"open', "'x'", "1e400", "-1e400", "nan", "-inf", "+inf", "0x10", "0o7", "1_000",
                  "True", "tru", "1979-05-27", "07:32:00", "[]", "{}", "[[1], [2]]", "{a = {b = 1}}", '"\\u00e9"',
                  "1 # comment", "a b", "=", "", " ", "3\nx = 4", "\x00", "é", "💥"]
COUNTS = {"valid": 0, "config_error": 0}


# ------------------------------------------------------------------------------------------- TOML writing

def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_str(key)


def toml_str(s: str) -> str:
    esc = {'"': '\\"', "\\": "\\\\"}
    return '"' + "".join(esc.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c) for c in s) + '"'


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(map(toml_value, v)) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_document(doc: dict) -> str:
    top = [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    tables = [f"[{toml_key(k)}]\n" + "".join(f"{toml_key(kk)} = {toml_value(vv)}\n" for kk, vv in v.items())
              for k, v in doc.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n" + "\n".join(tables)


# ------------------------------------------------------------------------------------------- strategies

scalars = st.one_of(st.integers(-10 ** 6, 10 ** 6), st.sampled_from(HUGE),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.booleans())
any_value = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                         max_leaves=6)


def plausible(typ, key: str):
    """A value of the annotated type, mostly in a sensible range, so that valid configs come out too."""
    if key in CHOICES:
        return st.sampled_from(CHOICES[key])
    return {int: st.sampled_from([1, 2, 4, 8, 16, 64, 1000]), float: st.sampled_from([1e-4, 1e-3, 0.1, 0.5]),
            bool: st.booleans(),
            str: st.text(max_size=8)}.get(typ, any_value)


def value_for(typ, key: str):
    return st.integers(0, 4).flatmap(lambda i: any_value if i == 0 else plausible(typ, key))  # 4/5 well typed


@st.composite
def mutated(draw, name: str) -> str:
    how = draw(st.sampled_from(["drop", "double", "upper", "suffix", "dot", "unicode", "empty"]))
    i = draw(st.integers(0, max(len(name) - 1, 0)))
    return {"drop": name[:i] + name[i + 1:], "double": name[:i] + name[i:i + 1] * 2 + name[i + 1:],
            "upper": name.upper(), "suffix": name + "s", "dot": name + ".x", "empty": "",
            "unicode": name + draw(st.text(min_size=1, max_size=3))}[how]


@st.composite
def section(draw, hints: dict, prefix: str, fixed: dict | None = None) -> dict:
    keys = draw(st.lists(st.sampled_from(sorted(hints)), max_size=4, unique=True))
    out = dict(fixed or {})
    for k in keys:
        if k not in out:
            out[k] = draw(value_for(hints[k], prefix + k))
    if draw(st.integers(0, 5)) == 0:  # now and then a misspelt or foreign key
        out.setdefault(draw(st.one_of(mutated(draw(st.sampled_from(sorted(hints)))), st.text(max_size=6))),
                       draw(any_value))
    return out


@st.composite
def documents(draw) -> dict:
    doc = {}
    for name in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=5, unique=True)):
        if draw(st.integers(0, 9)) == 0:  # a section that is not a table
            doc[name] = draw(scalars)
        elif name == "model":
            model = draw(st.sampled_from(sorted(MODELS)))
            doc[name] = draw(section(MODEL_HINTS[model], "model.", {"name": model}))
        else:
            doc[name] = draw(section(HINTS[name], name + "."))
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.one_of(st.sampled_from(sorted(SECTIONS)).flatmap(mutated), st.text(max_size=6)))] = draw(any_value)
    return doc


@st.composite
def overrides(draw) -> str:
    sec = draw(st.sampled_from(sorted(SECTIONS)))
    hints = MODEL_HINTS["gpt"] if sec == "model" else HINTS[sec]
    key = draw(st.sampled_from(sorted(hints)))
    if draw(st.integers(0, 2)):  # 2/3: a real key with a value of its type (or not: value_for)
        return f"--{sec}.{key}={toml_value(draw(value_for(hints[key], f'{sec}.{key}')))}"
    dotted = draw(st.one_of(st.just(f"{sec}.{key}"), mutated(f"{sec}.{key}"), st.just(sec), st.just(""),
                            st.just(f"{sec}..{key}"), st.just(f".{sec}.{key}"), st.just(f"{sec}.{key}.x"),
                            st.text(max_size=8)))
    value = draw(st.one_of(value_for(hints[key], f"{sec}.{key}").map(toml_value), st.sampled_from(TOML_FRAGMENTS),
                           st.text(max_size=8)))
    form = draw(st.sampled_from(["ok", "ok", "ok", "no equals", "no dashes", "one dash"]))
    return {"ok": f"--{dotted}={value}", "no equals": f"--{dotted}{value}", "no dashes": f"{dotted}={value}",
            "one dash": f"-{dotted}={value}"}[form]


def named_keys(doc: dict, items: list[str]) -> set[str]:
    """Every dotted key the input sets, with its prefixes of two parts or more (a message about
    train.max_iters names the key that train.max_iters.x set): the keys an error may be about."""
    def walk(node, path):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                yield from walk(v, path + [k])
        else:
            yield path
    paths = list(walk(doc, []))
    for item in items:  # an override that cannot be read is named as written (repr)
        paths += [item[2:].split("=", 1)[0].split("."), [repr(item)]]
    keys = {".".join(p[:n]) for p in paths for n in range(1 if len(p) == 1 else 2, len(p) + 1)}
    return keys | {p[0] for p in paths if p and p[0] not in SECTIONS}  # an unknown section is named alone


def names_a_key(msg: str, keys: set[str]) -> bool:
    """The message holds a dotted key of the input, or the last part of one as a word ("unknown cnn 'x'")."""
    return any(k in msg for k in keys) or any(
        re.search(rf"(?<![\w.]){re.escape(k.rsplit('.', 1)[-1])}(?!\w)", msg) for k in keys if "." in k)


# ------------------------------------------------------------------------------------------- the property

def check_loaded(cfg: Config) -> None:
    for name, hints in [*HINTS.items(), ("model", MODEL_HINTS[cfg.model.name])]:
        sec = getattr(cfg, name)
        for key, typ in hints.items():
            value = getattr(sec, key)
            if typing.get_origin(typ) is list:  # a list of the item type
                assert type(value) is list and all(type(v) is typing.get_args(typ)[0] for v in value), (key, value)
            elif typing.get_origin(typ) is dict:  # a table of str keys and values of the item type
                assert type(value) is dict and all(type(k) is str and type(v) is typing.get_args(typ)[1]
                                                   for k, v in value.items()), (key, value)
            else:
                assert type(value) is typ, (f"{name}.{key}", value, typ)


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "fuzz.toml"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(doc=documents(), items=st.lists(overrides(), max_size=2))
def load_one(config_path, doc, items):
    """The property, for one drawn document and override list."""
    text = toml_document(doc)
    config_path.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(config_path, items)
    except ConfigError as e:
        msg = str(e)
        assert msg and "\n\n" not in msg.strip() or "\n\n" in "".join(items) + json.dumps(doc), msg
        if "is not valid TOML" in msg:
            assert config_path.name in msg
        else:
            keys = named_keys(doc, items)
            assert names_a_key(msg, keys), (msg, keys)
        COUNTS["config_error"] += 1
        event("ConfigError")
        return
    check_loaded(cfg)
    COUNTS["valid"] += 1
    event("valid Config")


def test_any_document_and_overrides_give_a_config_or_a_config_error_naming_the_key(config_path):
    COUNTS.update(valid=0, config_error=0)
    load_one(config_path)
    print(f"\nfuzz cases: {COUNTS}")
    # a generator that only ever produced errors (or only valid configs) would prove little
    assert COUNTS["valid"] > 0 and COUNTS["config_error"] > 0


# ------------------------------------------------------------------------------------------- the CLI

@pytest.mark.slow
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(item=overrides())
def test_cli_prints_one_error_paragraph_and_exits_2(tmp_path, item):
    assume("\x00" not in item)  # no command line can carry a NUL byte (execve ends strings there)
    (tmp_path / "empty.toml").write_text("")
    try:
        load_config(tmp_path / "empty.toml", [item])
    except ConfigError:
        pass
    else:
        assume(False)  # a valid override would start a training run
    result = subprocess.run([sys.executable, "train.py", str(tmp_path / "empty.toml"), item], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("error: ") == 1 and "\n\n" not in result.stderr.strip(), result.stderr


# ------------------------------------------------------------------------------------------- known bugs, pinned

NAN_INF = "config._coerce accepts NaN and infinities for float keys; it should refuse non-finite numbers"


@pytest.mark.parametrize("items", [
    pytest.param(["--optim.lr=nan"]),
    pytest.param(["--optim.lr=inf"]),
    pytest.param(["--train.max_time_s=nan"]),
    pytest.param(["--train.max_flops=inf"]),
    pytest.param(["--optim.lr=" + "9" * 400]),
    pytest.param(["--train.max_iters=" + "9" * 5000]),
    pytest.param(["--train.max_iters=" + "[" * 2000]),
    pytest.param(["--model=3"]),
    pytest.param(['--model="ab"']),
    pytest.param(['--model.name=[1]']),
    # values that pass validation and then crash the run (or make it misbehave) far from the config
    pytest.param(["--train.seed=-1"]),
    pytest.param([f"--train.seed={2 ** 64}"]),
    pytest.param(["--train.threads=-1"]),
    pytest.param(["--optim.beta1=5"]),
    pytest.param(["--optim.weight_decay=-0.1"]),
    pytest.param(["--train.spike_factor=-1"]),
])
def test_malformed_values_are_config_errors_naming_the_key(items):
    with pytest.raises(ConfigError) as err:
        load_config(None, items)
    key = items[0][2:].split("=")[0]
    assert key in str(err.value)


def test_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[train]\nout_dir = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.toml"):
        load_config(path)


def test_toml_file_with_a_huge_integer_is_a_config_error(tmp_path):
    path = tmp_path / "huge.toml"
    path.write_text("[train]\nmax_iters = " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match="huge.toml"):
        load_config(path)


# ------------------------------------------------------------------------------------------- refused before any work

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_char_dataset(root, n_chars=2000)  # 1800 train / 200 val tokens
    return root


def run_main(data_dir, out_dir, capsys, **extra) -> tuple[int, str]:
    cfg = out_dir.parent / "empty.toml"
    cfg.write_text("")
    code = train_module.main([str(cfg), *tiny_overrides(data_dir, out_dir, **extra)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("extra, words", [
    ({"train.max_iters": 0}, ["train.max_iters", "positive"]),
    ({"train.max_tokens": -1}, ["train.max_tokens", "positive"]),
    ({"train.max_iters": 5}, ["optim.warmup_iters=5", "raise the budget"]),             # budget = warm-up
    ({"train.max_tokens": 600}, ["5 steps", "optim.warmup_iters=5"]),                   # tokens inside warm-up
    ({"train.max_flops": 1e6}, ["1 steps", "optim.warmup_iters=5"]),                    # FLOPs inside warm-up
    ({"model.block_size": 256}, ["val split", "200 tokens", "block_size=256"]),         # longer than the data
])
def test_impossible_runs_are_refused_before_any_work(data_dir, tmp_path, capsys, extra, words):
    code, err = run_main(data_dir, tmp_path / "r", capsys, **extra)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err
    assert not (tmp_path / "r").exists()  # no out_dir, no metrics.jsonl, no config.json


def test_batch_that_does_not_split_over_the_ranks_is_refused_before_any_work(data_dir, tmp_path, capsys,
                                                                             monkeypatch):
    import torch
    monkeypatch.setattr(runtime, "setup", lambda *a: runtime.Runtime(torch.device("cpu"), torch.float32,
                                                                     rank=0, world_size=2))
    code, err = run_main(data_dir, tmp_path / "r", capsys, **{"train.grad_accum": 3})
    assert code == 2 and "train.grad_accum=3" in err and "multiple of 2" in err, err
    assert not (tmp_path / "r").exists()


CRASH_LATER = {
    "seed": "a negative seed passes validation; the first batch raises numpy's ValueError, after out_dir and "
            "metrics.jsonl were written",
    "device": "runtime.pick_device accepts any torch device type; 'meta' fails at the first .item() with a "
              "RuntimeError, after out_dir was written",
    "flops": "an infinite budget passes validation; engine.budget.Budget raises OverflowError",
}


@pytest.mark.parametrize("extra", [
    pytest.param({"train.seed": -1}),
    pytest.param({"train.device": '"meta"'}),
    pytest.param({"train.max_flops": "inf"}),
])
def test_values_that_would_crash_the_run_later_are_refused_up_front(data_dir, tmp_path, capsys, extra):
    code, err = run_main(data_dir, tmp_path / "r", capsys, **extra)
    assert code == 2 and err.startswith("error: "), err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("key", ["cnn", "cnn_norm", "cnn_pool"])
def test_cnn_choice_errors_name_the_model_key(key):
    with pytest.raises(ConfigError, match=rf"model\.{key}\b"):
        load_config(None, ['--model.name="image_sum"', f'--model.{key}="x"'])
