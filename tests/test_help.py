"""Self-documenting commands: `train.py --help` shows every field of every config dataclass (every
registered model's included) with its default and meaning, `study.py --help` every field of the
study-file dataclasses; the commands that read a run say how to get one when there is none."""
import dataclasses
import subprocess
import sys
import tomllib
import typing

import pytest

import sample
from launch.spec import ArmSpec, BudgetSpec, SampleSpec, StudySpec
from config import DataConfig, OptimConfig, TrainConfig, WandbConfig
from helpers import ROOT
from models import MIXERS, MODELS
from models.cnn import TRUNKS


def help_of(script: str) -> str:
    result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def literal(value) -> str:
    """A default as TOML writes it (None, which TOML cannot write, as "(empty)")."""
    if value is None:
        return "(empty)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(map(literal, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def fields(cls: type, prefix: str) -> list[tuple[str, object, str]]:
    """(dotted key, default, meaning) of every field, nested dataclasses walked into."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += fields(hints[f.name], f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append((prefix + f.name, default, f.metadata["doc"]))
    return out


def check_listed(lines: list[str], key: str, default, doc: str) -> None:
    """The line of `key` shows its default (a literal that TOML reads back as the default) and meaning."""
    mine = [line for line in lines if line.split()[:1] == [key]]
    assert len(mine) >= 1, f"{key} is missing"
    shown = literal(default)
    if default is not None:
        assert tomllib.loads(f"v = {shown}")["v"] == default  # the literal is the default itself
    assert any(f" {shown} " in line and doc in line for line in mine), f"{key}: want default {shown}: {mine}"


def sections(text: str) -> dict[str, list[str]]:
    """The help's sections: the header line (e.g. `[data]`) -> the lines under it."""
    out: dict[str, list[str]] = {}
    for block in text.split("\n\n"):
        header, *lines = block.strip("\n").splitlines()
        out[header] = lines
    return out


def test_train_help_lists_every_field_of_every_config_dataclass_with_its_default():
    parts = sections(help_of("train.py"))
    for cls in (DataConfig, OptimConfig, TrainConfig, WandbConfig):
        name = cls.__name__.removesuffix("Config").lower()
        for key, default, doc in fields(cls, f"--{name}."):
            check_listed(parts[f"[{name}]"], key, default, doc)
    headers = {name: [h for h in parts if h.startswith(f'[model] with name = "{name}"')] for name in MODELS}
    backbone = parts[headers["lm"][0]]
    for name, entry in MODELS.items():
        (header,) = headers[name]
        for key, default, doc in fields(entry.config, "--model."):  # the preset's own line, or the backbone's
            own = [line for line in parts[header] if line.split()[:1] == [key]]
            check_listed(own or backbone, key, default, doc)
    model_keys = {f.name for entry in MODELS.values() for f in dataclasses.fields(entry.config)}
    assert {"image_heads", "cnn", "mixer", "n_chain", "mixers", "conv_kernel"} <= model_keys  # every preset walked
    for mixer in MIXERS:  # the registries' choices are listed, from the registries themselves
        assert f"{mixer}: " in " ".join(backbone)
    for trunk in TRUNKS:
        assert f"{trunk}: " in " ".join(backbone)


def test_study_help_lists_every_field_of_the_study_file_dataclasses_with_its_default():
    lines = help_of("study.py").split("study file keys")[1].splitlines()
    walked = (fields(StudySpec, "") + fields(BudgetSpec, "budget.") + fields(SampleSpec, "sample.")
              + fields(ArmSpec, "arm."))
    assert {"budget.flops", "sample.top_k", "arm.lrs", "seeds"} <= {key for key, _, _ in walked}
    for key, default, doc in walked:
        check_listed(lines, key, default, doc)


def test_eval_and_visualize_help_document_their_options():
    text = help_of("eval.py")
    for word in ("--stride", "--context", "--threads", "bits per byte", "Hugging Face perplexity recipe"):
        assert word in text, word
    text = help_of("visualize.py")
    for word in ("--out_dir", "--text", "--out", "--max_tokens", "painted.png", "mixed.png", "attention.png"):
        assert word in text, word


@pytest.mark.parametrize("missing", ["empty", "absent"])
def test_sample_without_a_checkpoint_says_to_train_one(tmp_path, capsys, missing):
    out = tmp_path / "run"
    if missing == "empty":
        out.mkdir()
    assert sample.main(["--out_dir", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    detail = "no ckpt_*.pt files" if missing == "empty" else "no such directory"
    assert err == (f"sample.py: error: no usable checkpoint in {out} ({detail}); train one first with "
                   f"`python train.py CONFIG --train.out_dir={out}`, or point --out_dir at a run\n")


def test_resuming_without_a_checkpoint_still_says_to_start_a_new_run(tmp_path):
    from engine.checkpoint import CheckpointError, load_checkpoint
    with pytest.raises(CheckpointError, match="no usable checkpoint .*; start a new run with --train.init_from=scr"):
        load_checkpoint(tmp_path)
