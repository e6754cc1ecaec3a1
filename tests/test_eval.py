import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eval as ev
from config import load_config, resolve_vocab
from data import open_dataset
from data.tokenizer import GPT2Tokenizer, load_tokenizer
from engine import runtime
from engine.checkpoint import load_for_inference
from engine.evaluation import eval_batch, evaluate, score_ids, token_nll, windows
from engine.trainer import train
from helpers import ROOT, tiny_overrides, write_byte_dataset, write_char_dataset

TEXT = (ROOT / "data" / "corpora" / "tinyshakespeare.txt").read_text()[:3000]  # characters the tiny vocab knows
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_char_dataset(root / "data")
    train(load_config(None, tiny_overrides(root / "data", root / "run", **{"train.max_iters": 6})))
    return root / "run"


@pytest.fixture(scope="module")
def trained(run_dir):
    model, cfg, meta = load_for_inference(str(run_dir), "cpu")
    return model, cfg, load_tokenizer(meta)


@pytest.fixture
def files(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text(TEXT[:1000])
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(json.dumps({"text": TEXT[1000:1500]}) + "\n\n" + json.dumps({"text": TEXT[1500:2011]}) + "\n")
    return [txt, jsonl], [TEXT[:1000], TEXT[1000:1500] + TEXT[1500:2011]]


def plain_losses(model, ids: list[int], block_size: int, stride: int) -> tuple[dict[int, float], dict[int, int]]:
    """The sliding-window recipe as a plain loop, one window at a time: windows start at 0, S, 2S, ...,
    read ids[b:e] and predict ids[b+1:e+1]; a target is scored by the first window that reaches it.
    Returns {target position: nll} and {target position: tokens of context it was scored with}."""
    nll, context, prev_end = {}, {}, 0
    for b in range(0, len(ids) - 1, stride):
        e = min(b + block_size, len(ids) - 1)
        with torch.no_grad():
            logits, _ = model(torch.tensor(ids[b:e])[None])
        for i in range(e - b):
            p = b + 1 + i
            if p > prev_end:
                assert p not in nll
                nll[p] = F.cross_entropy(logits[0, i].double(), torch.tensor(ids[p])).item()
                context[p] = i + 1
        prev_end = e
        if e == len(ids) - 1:
            break
    return nll, context


def test_per_file_and_overall_figures_equal_a_plain_loop(run_dir, trained, files, capsys):
    (a, b), texts = files
    assert ev.main(["--out_dir", str(run_dir), "--files", str(a), str(b), "--device", "cpu", "--batch_size", "3",
                    "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    model, cfg, tok = trained
    T = cfg.model.block_size
    ids = tok.encode(texts[0]) + tok.encode(texts[1])  # char tokenizer: documents joined with nothing between
    assert len(ids) % T != 1  # a shorter last window exists and is scored too
    nll, _ = plain_losses(model, ids, T, T)
    first, second = [p for p in nll if p < len(texts[0])], [p for p in nll if p >= len(texts[0])]
    want = [(sum(nll[p] for p in ps), len(ps), len("".join(TEXT[p] for p in ps).encode("utf-8")))
            for ps in (first, second)]  # (nats, tokens, UTF-8 bytes of the scored characters): ids[p] is TEXT[p]
    assert [f["path"] for f in got["files"]] == [str(a), str(b)]
    for f, (nats, count, n_bytes) in zip(got["files"] + [got], want + [tuple(map(sum, zip(*want)))]):
        assert f["tokens"] == count and f["bytes"] == n_bytes
        assert f["loss"] == pytest.approx(nats / count, rel=1e-5)
        assert f["perplexity"] == pytest.approx(math.exp(nats / count), rel=1e-5)
        assert f["bits_per_byte"] == pytest.approx(nats / (n_bytes * math.log(2)), rel=1e-5)
    assert got["tokens"] == len(ids) - 1 and got["files"][1]["tokens"] == len(texts[1])  # the first token: no context


def test_the_text_report_has_a_row_per_file_and_names_the_context(run_dir, files, capsys):
    (a, b), _ = files
    assert ev.main(["--out_dir", str(run_dir), "--files", str(a), str(b), "--device", "cpu", "--stride", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["file", "tokens", "bytes", "loss", "perplexity", "bits/byte"]
    assert [line.split()[0] for line in lines[1:4]] == [str(a), str(b), "all"]
    assert lines[4] == "(windows of 32 tokens sliding by 8: each token scored once, with at least 24 tokens of context)"
    assert ev.main(["--out_dir", str(run_dir), "--files", str(a), str(b), "--device", "cpu", "--context", "24"]) == 0
    assert capsys.readouterr().out.splitlines() == lines  # --context C is --stride T - C


def uniform(vocab: int):
    class Uniform(torch.nn.Module):
        def forward(self, idx, targets=None):
            return torch.zeros(*idx.shape, vocab), None
    return Uniform()


def test_bits_per_byte_by_hand_with_gpt2_bpe(tmp_path, monkeypatch, capsys):
    """ln V nats per token (uniform logits): bits/byte = tokens ln V / (bytes ln 2), with the bytes
    counted from the text itself (multi-byte characters; <|endoftext|> is no text)."""
    docs = ["naïve café, 12 °C", "日本語 and 😀 emoji"]
    (tmp_path / "a.txt").write_text("Hello there.")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tok, V = GPT2Tokenizer(), 50304
    monkeypatch.setattr(ev, "load_model", lambda *args: (uniform(V), tok, 64))
    assert ev.main(["--files", str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["files"][1]  # the second file: every token of it is scored
    tokens = sum(len(tok.encoding.encode_ordinary(d)) + 1 for d in docs)  # + <|endoftext|> per document
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    assert (got["tokens"], got["bytes"]) == (tokens, n_bytes)
    assert got["bits_per_byte"] == pytest.approx(tokens * math.log(V) / (n_bytes * math.log(2)), rel=1e-6)


@pytest.mark.parametrize("n,stride,batch", [(200, 8, 3), (200, 31, 4), (97, 1, 16), (33, 32, 2), (20, 5, 2),
                                            (65, 16, 2)])
def test_sliding_window_equals_a_plain_loop(trained, n, stride, batch):
    model, cfg, tok = trained
    T = cfg.model.block_size
    ids = tok.encode(TEXT[500:500 + n])
    want, context = plain_losses(model, ids, T, stride)
    got = score_ids(model, np.array(ids), T, batch, CPU, stride=stride)
    assert sorted(want) == list(range(1, n))  # every target once
    assert got == pytest.approx([want[p] for p in range(1, n)], abs=1e-5)
    assert all(context[p] >= T - stride + 1 for p in range(T + 1, n))  # past the first window: >= T - S before it
    assert all(context[p] == p for p in range(1, min(T, n - 1) + 1))  # the first window: all it has


class Spy(torch.nn.Module):
    """Records the positions it is asked to predict from (ids are positions here), returns uniform logits."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.seen = vocab, []

    def forward(self, idx, targets=None):
        self.seen.append(idx.clone())
        return torch.zeros(*idx.shape, self.vocab), None


@pytest.mark.parametrize("n,block,batch", [(100, 16, 3), (97, 16, 4), (17, 16, 2), (33, 16, 1), (2, 8, 8)])
def test_every_token_is_scored_exactly_once_in_batches_of_at_most_batch_size(n, block, batch):
    spy = Spy(vocab=128)
    nll = score_ids(spy, np.arange(n), block, batch, CPU)
    assert nll.shape == (n - 1,) and nll == pytest.approx(np.log(128))  # uniform logits: ln V per scored token
    inputs = torch.cat([x.flatten() for x in spy.seen]).sort().values
    assert torch.equal(inputs, torch.arange(n - 1))  # every position 0..n-2 predicts its successor once
    assert all(x.shape[0] <= batch and x.shape[1] <= block for x in spy.seen)  # memory: one batch at a time
    assert windows(n, block).tolist() == [[s, min(block, n - 1 - s), 0] for s in range(0, n - 1, block)]


def test_batching_does_not_change_the_loss(trained):
    model, cfg, tok = trained
    ids = np.array(tok.encode(TEXT[:700]))
    one = score_ids(model, ids, cfg.model.block_size, 1, CPU)
    many = score_ids(model, ids, cfg.model.block_size, 5, CPU)
    assert one == pytest.approx(many, abs=1e-6)


def test_scoring_the_trainers_validation_windows_gives_its_val_loss(run_dir, trained):
    """eval.py's machinery on evaluate()'s own windows: each window through score_ids (as eval.py scores
    a file) gives token_nll's losses, and their mean is evaluate()'s val_loss."""
    model, cfg, _ = trained
    data = open_dataset(cfg.data)
    cfg = resolve_vocab(cfg, data.vocab_size)
    want = evaluate(model, data, cfg, runtime.Runtime(CPU, torch.float32))["val_loss"]
    model.eval()  # evaluate() leaves the model in train mode
    losses = []
    for i in range(cfg.train.eval_iters):
        x, y = eval_batch(data, "val", i, cfg.train.eval_batch_size or cfg.train.batch_size, cfg.model.block_size)
        nll = token_nll(model, x, y)  # (B, T)
        for b in range(x.size(0)):
            stream = torch.cat([x[b], y[b, -1:]]).numpy()  # the window as a text of T + 1 tokens
            assert score_ids(model, stream, cfg.model.block_size, 4, CPU) == pytest.approx(nll[b].numpy(), abs=1e-6)
        losses.append(nll.double())
    assert torch.cat(losses).mean().item() == pytest.approx(want, rel=1e-6)
    assert json.loads((run_dir / "result.json").read_text())["val_loss"] == pytest.approx(want, rel=1e-6)


def test_gpt2_documents_are_joined_with_end_of_text_as_in_data_prep(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "d.jsonl"
    a.write_text("One")
    b.write_text(json.dumps({"text": "Hello world"}) + "\n" + json.dumps({"text": "<|endoftext|> is text"}) + "\n")
    tok = GPT2Tokenizer()
    enc = tok.encoding.encode_ordinary
    ids, offsets = ev.read_files([a, b], tok)
    docs = ["One", "Hello world", "<|endoftext|> is text"]  # the last is text, not the special token
    assert ids.tolist() == [i for doc in docs for i in enc(doc) + [tok.eot]]
    assert offsets.tolist() == [0, len(enc("One")) + 1, len(ids)]


UNSEEN = "Καλημέρα κόσμε — 日本語のテキスト, emoji 🙂🚀 and ½ °C\n"  # none of it in (ASCII) tiny Shakespeare


@pytest.fixture(scope="module")
def byte_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("byte_eval")
    write_byte_dataset(root / "data")
    train(load_config(None, tiny_overrides(root / "data", root / "run", **{"data.dataset": '"tiny_byte"',
                                                                           "train.max_iters": 6})))
    return root / "run"


def test_a_byte_model_scores_text_with_characters_it_never_saw(byte_run, tmp_path, capsys):
    """Every UTF-8 byte of the file is a token the model can score: tokens = bytes - 1 (the first has no
    context), bits per byte = loss / ln 2, and the loss is the plain loop's over the bytes."""
    (tmp_path / "unseen.txt").write_text(UNSEEN, encoding="utf-8")
    assert ev.main(["--out_dir", str(byte_run), "--files", str(tmp_path / "unseen.txt"), "--device", "cpu",
                    "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    model, cfg, meta = load_for_inference(str(byte_run), "cpu")
    assert meta["tokenizer"] == "byte" and cfg.model.vocab_size == 256
    ids = list(UNSEEN.encode("utf-8"))
    nll, _ = plain_losses(model, ids, cfg.model.block_size, cfg.model.block_size)
    assert got["tokens"] == got["bytes"] == len(ids) - 1 == len(nll)
    assert got["loss"] == pytest.approx(sum(nll.values()) / len(nll), rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(got["loss"] / math.log(2), rel=1e-9)


def test_errors_are_one_line_and_name_the_fix(run_dir, files, tmp_path, capsys, monkeypatch):
    (a, _), _ = files
    assert ev.main(["--out_dir", str(run_dir), "--files", str(a), "--device", "cpu", "--block_size", "999"]) == 1
    assert "exceeds the model's block_size 32; give at most 32" in capsys.readouterr().err
    assert ev.main(["--out_dir", str(run_dir), "--files", str(a), "--device", "cpu", "--stride", "33"]) == 1
    assert "--stride 33 must be below the window length 32; leave it out" in capsys.readouterr().err
    assert ev.main(["--out_dir", str(run_dir), "--files", str(a), "--device", "cpu", "--context", "40"]) == 1
    assert "--context 40 must be below the window length 32; leave it out" in capsys.readouterr().err
    (tmp_path / "odd.txt").write_text("plain text, then ½")
    assert ev.main(["--out_dir", str(run_dir), "--files", str(tmp_path / "odd.txt"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert f"odd.txt: character '½' (U+00BD) is not in this dataset's vocabulary" in err and "remove or replace" in err
    assert ev.main(["--out_dir", str(tmp_path / "nothing"), "--files", str(a), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err == (f"eval.py: error: no usable checkpoint in {tmp_path / 'nothing'} (no such directory); train one "
                   f"first with `python train.py CONFIG --train.out_dir={tmp_path / 'nothing'}`, or point --out_dir "
                   f"at a run\n")
    import models.hf_gpt2 as hf

    def offline(model_type):
        raise hf.HFLoadError(f"could not download the {model_type} weights from the Hugging Face hub (offline)")
    monkeypatch.setattr(hf, "_download", offline)
    assert ev.main(["--init_from", "gpt2", "--files", str(a), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("eval.py: error: could not download the gpt2 weights") and "Traceback" not in err
