"""engine/setup.py: the one set-up sequence (data -> vocabulary -> model -> tokens per step) that the trainer,
the study's preflight, train.py --summary and bench.py share, under each of its data uses."""
import pytest
import torch

from config import ConfigError, load_config
from data import DataError
from engine.setup import set_up, tokens_per_step
from helpers import tiny_overrides, write_char_dataset
from models import build_model


def tiny(tmp_path, **extra):
    return load_config(None, tiny_overrides(tmp_path, tmp_path / "run", **extra))


def test_training_set_up_sizes_the_vocabulary_and_builds_the_seeded_model(tmp_path):
    write_char_dataset(tmp_path)
    s = set_up(tiny(tmp_path, **{"train.grad_accum": 3}))
    assert s.data.vocab_size == 59 and s.cfg.model.vocab_size >= 59 and s.cfg.model.vocab_size % 64 == 0
    assert s.tokens_per_step == tokens_per_step(4, 3, 32) == 4 * 3 * 32
    torch.manual_seed(s.cfg.train.seed)
    fresh = build_model(s.cfg.model)
    assert all(torch.equal(a, b) for a, b in zip(s.model.state_dict().values(), fresh.state_dict().values()))


def test_each_data_use_opens_the_data_only_where_it_needs_it(tmp_path):
    missing = tiny(tmp_path)  # no dataset written
    with pytest.raises(DataError, match="is not prepared"):
        set_up(missing)
    with pytest.raises(ConfigError, match="or pass --model.vocab_size=N"):
        set_up(missing, data="if_prepared")
    sized = tiny(tmp_path, **{"model.vocab_size": 64})
    assert set_up(sized, data="if_prepared").data is None and set_up(sized, data="vocab").data is None
    write_char_dataset(tmp_path)
    assert set_up(sized, data="if_prepared").data is not None  # bench.py trains on it when it is there
    assert set_up(sized, data="vocab").data is None  # --summary needs it only to size a vocabulary of 0
    with pytest.raises(DataError):  # training needs a block of the data
        set_up(tiny(tmp_path, **{"model.block_size": 10 ** 6}))


def test_shapes_only_on_the_meta_device(tmp_path):
    write_char_dataset(tmp_path)
    s = set_up(tiny(tmp_path), device="meta")
    assert all(p.is_meta for p in s.model.parameters()) and s.model.flops_per_token() > 0
