import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eval as ev
from config import load_config
from data.tokenizer import GPT2Tokenizer, load_tokenizer
from engine.checkpoint import load_for_inference
from helpers import ROOT, tiny_overrides, write_char_dataset
from engine.trainer import train

TEXT = (ROOT / "data" / "corpora" / "tinyshakespeare.txt").read_text()[:3000]  # characters the tiny vocab knows


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_char_dataset(root / "data")
    train(load_config(None, tiny_overrides(root / "data", root / "run", **{"train.max_iters": 6})))
    return root / "run"


@pytest.fixture
def files(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text(TEXT[:1000])
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(json.dumps({"text": TEXT[1000:1500]}) + "\n\n" + json.dumps({"text": TEXT[1500:2011]}) + "\n")
    return [txt, jsonl], [TEXT[:1000], TEXT[1000:1500], TEXT[1500:2011]]


def reference_loss(model, ids: list[int], block_size: int) -> tuple[float, int]:
    """One window at a time, plain loop: windows [s, s+T) predicting [s+1, s+T+1), s = 0, T, 2T, ..."""
    total, count = 0.0, 0
    for s in range(0, len(ids) - 1, block_size):
        y = torch.tensor(ids[s + 1:s + 1 + block_size])
        x = torch.tensor(ids[s:s + len(y)])
        with torch.no_grad():
            logits, _ = model(x[None])
        total += F.cross_entropy(logits[0].double(), y, reduction="sum").item()
        count += len(y)
    return total / count, count


def test_loss_on_files_equals_a_plain_reference(run_dir, files, capsys):
    paths, docs = files
    assert ev.main(["--out_dir", str(run_dir), "--files", *map(str, paths), "--device", "cpu", "--batch_size", "3",
                    "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    model, cfg, meta = load_for_inference(str(run_dir), "cpu")
    tok = load_tokenizer(meta)
    ids = [i for doc in docs for i in tok.encode(doc)]  # char tokenizer: documents joined with nothing between
    want, count = reference_loss(model, ids, cfg.model.block_size)
    assert len(ids) % cfg.model.block_size != 1  # a shorter last window exists and is scored too
    assert got["tokens"] == count == len(ids) - 1
    assert got["loss"] == pytest.approx(want, rel=1e-5)
    assert got["perplexity"] == pytest.approx(np.exp(want), rel=1e-5)


class Spy(torch.nn.Module):
    """Records the positions it is asked to predict from (ids are positions here), returns uniform logits."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.seen = vocab, []

    def forward(self, idx, targets=None):
        self.seen.append(idx.clone())
        return torch.zeros(*idx.shape, self.vocab), None


@pytest.mark.parametrize("n,block,batch", [(100, 16, 3), (97, 16, 4), (17, 16, 2), (33, 16, 1), (2, 8, 8)])
def test_every_token_is_scored_exactly_once(n, block, batch):
    spy = Spy(vocab=128)
    ids = np.arange(n)
    total, count = ev.score_ids(spy, ids, block, batch, torch.device("cpu"))
    assert count == n - 1
    assert total == pytest.approx((n - 1) * np.log(128))  # uniform logits: ln V per scored token
    inputs = torch.cat([x.flatten() for x in spy.seen]).sort().values
    assert torch.equal(inputs, torch.arange(n - 1))  # every position 0..n-2 predicts its successor once
    assert all(x.shape[1] <= block for x in spy.seen)


def test_batching_does_not_change_the_loss(run_dir):
    model, cfg, meta = load_for_inference(str(run_dir), "cpu")
    ids = np.array(load_tokenizer(meta).encode(TEXT[:700]))
    one = ev.score_ids(model, ids, cfg.model.block_size, 1, torch.device("cpu"))
    many = ev.score_ids(model, ids, cfg.model.block_size, 5, torch.device("cpu"))
    assert one[1] == many[1] and one[0] == pytest.approx(many[0], rel=1e-6)


def test_gpt2_documents_are_joined_with_end_of_text_as_in_data_prep(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "Hello world"}) + "\n" + json.dumps({"text": "<|endoftext|> is text"}) + "\n")
    tok = GPT2Tokenizer()
    enc = tok.encoding.encode_ordinary
    want = enc("Hello world") + [tok.eot] + enc("<|endoftext|> is text") + [tok.eot]
    assert ev.read_ids([path], tok).tolist() == want


def test_block_size_beyond_the_model_and_missing_weights_are_clear_errors(run_dir, files, capsys, monkeypatch):
    paths, _ = files
    assert ev.main(["--out_dir", str(run_dir), "--files", str(paths[0]), "--device", "cpu", "--block_size", "999"]) == 1
    assert "exceeds the model's block_size" in capsys.readouterr().err
    import models.hf_gpt2 as hf

    def offline(model_type):
        raise hf.HFLoadError(f"could not download the {model_type} weights from the Hugging Face hub (offline)")
    monkeypatch.setattr(hf, "_download", offline)
    assert ev.main(["--init_from", "gpt2", "--files", str(paths[0]), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("eval.py: error: could not download the gpt2 weights") and "Traceback" not in err
