import subprocess
import sys

import pytest

from config import ConfigError, apply_overrides, from_dict, load_config
from helpers import ROOT


def test_defaults_file_and_overrides_layer_in_order(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nmax_iters = 7\nbatch_size = 3\n[model]\nn_layer = 2\n')
    cfg = load_config(path, ["--train.batch_size=5", "--optim.lr=1e-3", "--model.dropout=0.1"])
    assert cfg.train.max_iters == 7          # from the file
    assert cfg.train.batch_size == 5         # CLI beats file
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.model.n_layer == 2 and cfg.model.dropout == 0.1
    assert cfg.train.eval_iters == 20        # untouched default


@pytest.mark.parametrize("overrides, words", [
    (["--train.max_iter=3"], ["train.max_iter", "max_iters"]),              # typo: names the valid keys
    (["--trian.max_iters=3"], ["trian", "train"]),                          # unknown section
    (["--train.batch_size=1.5"], ["train.batch_size", "integer"]),
    (["--train.compile=yes"], ["train.compile", "true or false"]),
    (["--optim.lr=fast"], ["optim.lr", "number"]),
    (["--train.dtype=fp8"], ["train.dtype", "bfloat16"]),                   # names the choices
    (["--model.name=transformer"], ["transformer", "gpt"]),                 # lists known models
    (["--model.n_embd=30", "--model.n_head=4"], ["divisible"]),
    (["--train.batch_size=0"], ["train.batch_size", "positive"]),
    (["--optim.min_lr=1.0", "--optim.lr=0.1"], ["min_lr"]),
    (["train.max_iters=3"], ["--section.key=value"]),                       # missing dashes
])
def test_bad_input_is_a_config_error_naming_the_key(overrides, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    for word in words:
        assert word in str(err.value)


def test_model_section_is_checked_against_the_registered_schema():
    """Every model has the backbone's keys; a preset's own keys belong to it alone."""
    with pytest.raises(ConfigError, match="unknown key model.n_chain"):
        from_dict({"model": {"name": "gpt", "n_chain": 1}})
    with pytest.raises(ConfigError, match="name = \"gpt\" has attention and an MLP in every layer"):
        from_dict({"model": {"name": "gpt", "mixers": ["hyena"]}})
    with pytest.raises(ConfigError, match="mixers and model.mlp are derived"):
        from_dict({"model": {"name": "image_sum", "mixers": ["hyena"]}})
    assert from_dict({"model": {"name": "lm", "mixers": ["attn", "hyena"], "n_layer": 2}}).model.layers() == \
        [("attn", True), ("hyena", True)]


def test_cli_values_parse_as_toml_with_string_fallback():
    data = apply_overrides({}, ["--a.b=3", "--a.c=2e-4", "--a.d=true", "--a.e=out/run1", '--a.f="7"'])
    assert data == {"a": {"b": 3, "c": 2e-4, "d": True, "e": "out/run1", "f": "7"}}


def test_malformed_toml_is_reported_with_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train\nmax_iters = 3\n")
    with pytest.raises(ConfigError, match="bad.toml is not valid TOML"):
        load_config(path)


def test_train_cli_reports_config_errors_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "configs/shakespeare_char_cpu.toml", "--train.max_iter=5"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown key train.max_iter" in result.stderr and "Traceback" not in result.stderr


def test_every_shipped_config_validates():
    paths = sorted((ROOT / "configs").glob("*.toml"))
    assert paths
    for path in paths:
        load_config(path)


def test_base_file_is_laid_under_the_config_and_cycles_are_refused(tmp_path):
    (tmp_path / "base.toml").write_text('[train]\nmax_iters = 7\nbatch_size = 3\n[optim]\nlr = 1e-3\n')
    (tmp_path / "run.toml").write_text('base = "base.toml"\n[train]\nbatch_size = 5\n')
    cfg = load_config(tmp_path / "run.toml", ["--optim.lr=2e-3"])
    assert (cfg.train.max_iters, cfg.train.batch_size, cfg.optim.lr) == (7, 5, 2e-3)
    (tmp_path / "a.toml").write_text('base = "b.toml"\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\n')
    with pytest.raises(ConfigError, match="its own base"):
        load_config(tmp_path / "a.toml")
