"""The n-gram reference losses against a plain dictionary-counting loop (on tiny Shakespeare as chars, and
on random ids of the GPT-2 sized vocabulary to prove the sparse path), and bytes per token and bits per
byte against their definitions."""
from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from reporting.references import (bigram_nll, bits_per_byte, count_bytes, ngram_counts, reference_losses,
                                 unigram_nll)
from data.tokenizer import CharTokenizer, GPT2Tokenizer
from helpers import write_char_dataset

GPT2_PADDED_VOCAB = 50304


def loop_nll(train: list[int], V: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unigram, bigram) nll per position, the formulas written out over Python dicts."""
    uni = Counter(train)
    pairs = Counter(zip(train[:-1], train[1:]))
    context, followers = Counter(), Counter()
    for (u, _), c in pairs.items():
        context[u] += c
        followers[u] += 1
    N = len(train)
    out_uni, out_bi = np.full(y.shape, np.nan), np.full(y.shape, np.nan)
    for pos in np.ndindex(y.shape):
        u, w = int(x[pos]), int(y[pos])
        if w == -1:
            continue
        p_uni = (uni[w] + 1) / (N + V)
        if context[u] == 0:
            p_bi = p_uni
        else:
            p_bi = (pairs[(u, w)] + followers[u] * p_uni) / (context[u] + followers[u])
        out_uni[pos], out_bi[pos] = -math.log(p_uni), -math.log(p_bi)
    return out_uni, out_bi


def windows(ids: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping (B, T) inputs and targets from a stream, the targets shifted by one."""
    B = (len(ids) - 1) // T
    return ids[:B * T].reshape(B, T), ids[1:B * T + 1].reshape(B, T)


def check_against_loop(train: np.ndarray, V: int, x: np.ndarray, y: np.ndarray) -> None:
    counts = ngram_counts(train, V)
    ref_uni, ref_bi = loop_nll(train.tolist(), V, x, y)
    np.testing.assert_allclose(unigram_nll(counts, x, y), ref_uni, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(bigram_nll(counts, x, y), ref_bi, rtol=1e-12, equal_nan=True)


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory) -> tuple[np.ndarray, np.ndarray, int]:
    """(train ids, val ids, V) of the first 5000 characters of tiny Shakespeare, as uint16 like train.bin."""
    folder = write_char_dataset(tmp_path_factory.mktemp("data"), n_chars=5000)
    V = json.loads((folder / "meta.json").read_text())["vocab_size"]
    return np.fromfile(folder / "train.bin", dtype=np.uint16), np.fromfile(folder / "val.bin", dtype=np.uint16), V


def test_shakespeare_equals_loop(shakespeare):
    train, val, V = shakespeare
    x, y = windows(val, 32)
    y = y.astype(np.int64)
    y[-1, -5:] = -1  # the positions a window does not score
    seen = set(zip(train[:-1].tolist(), train[1:].tolist()))
    found = [(int(u), int(w)) in seen for u, w in zip(x.ravel(), y.ravel())]
    assert 0 < sum(found) < len(found)  # both seen and unseen pairs are exercised
    check_against_loop(train, V, x, y)
    assert np.isnan(bigram_nll(ngram_counts(train, V), x, y)[-1, -5:]).all()


def test_bigram_beats_unigram_on_text(shakespeare):
    train, val, V = shakespeare
    x, y = windows(val, 32)
    losses = reference_losses(ngram_counts(train, V), x, y)
    assert losses["bigram"] < losses["unigram"] < losses["uniform"] == pytest.approx(math.log(V))


def test_gpt2_vocab_random_ids_equal_loop():
    """V = 50304: pair codes reach V^2 ~ 2.5e9 (they overflow uint16 and int32 alike), ids come in as
    uint16; positions include seen pairs, unseen pairs of seen contexts and unseen contexts."""
    V, rng = GPT2_PADDED_VOCAB, np.random.default_rng(0)
    frequent = rng.integers(V - 300, V, size=14_000)  # a skewed stream, so pairs repeat
    train = np.where(rng.random(14_000) < 0.7, frequent, rng.integers(0, V, size=14_000)).astype(np.uint16)
    at = rng.integers(0, len(train) - 1, size=(4, 25))
    x = np.where(rng.random((4, 25)) < 0.5, train[at], rng.integers(0, V, size=(4, 25)))
    y = np.where(rng.random((4, 25)) < 0.5, train[at + 1], rng.integers(0, V, size=(4, 25)))
    y[0, :3] = -1
    counts = ngram_counts(train, V)
    seen = counts.pair_codes[np.isin(counts.pair_codes, x.astype(np.int64) * V + y)]
    assert len(seen) > 0 and (counts.context_totals[x] == 0).any() and (counts.context_totals[x] > 0).any()
    assert len(counts.pair_codes) <= len(train) - 1  # sparse: nothing of size V x V
    check_against_loop(train, V, x, y)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_counts_equal_one_pass(chunk: int):
    train = np.random.default_rng(1).integers(0, 20, size=1000).astype(np.uint16)
    whole, parts = ngram_counts(train, 20), ngram_counts(train, 20, chunk=chunk)
    for field in ("unigram", "pair_codes", "pair_counts", "context_totals", "followers"):
        np.testing.assert_array_equal(getattr(parts, field), getattr(whole, field))
    assert whole.unigram.sum() == len(train) and whole.pair_counts.sum() == len(train) - 1


def test_rejects_bad_ids():
    counts = ngram_counts(np.array([0, 1, 2, 1]), 3)
    with pytest.raises(ValueError, match="outside"):
        ngram_counts(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="outside"):
        bigram_nll(counts, np.array([[-1, 0]]), np.array([[1, 2]]))  # a scored target needs a context
    with pytest.raises(ValueError, match="at least 2"):
        ngram_counts(np.array([1]), 3)


def test_char_token_bytes():
    text = "café — 💥 ok\n"
    tok = CharTokenizer.from_texts([text])
    lengths = tok.token_bytes()
    assert lengths.shape == (tok.vocab_size,)
    for c in "é—💥o":
        assert lengths[tok.encode(c)[0]] == len(c.encode("utf-8"))
    assert sorted({int(lengths[tok.encode(c)[0]]) for c in text}) == [1, 2, 3, 4]
    assert lengths[tok.encode(text)].sum() == len(text.encode("utf-8"))


def test_gpt2_token_bytes():
    tok = GPT2Tokenizer()
    lengths = tok.token_bytes()
    assert lengths.shape == (tok.vocab_size,) and lengths[tok.eot] == 0
    first, second = "The café — it went 💥 twice, naïvely.", " Ünïcode spans tokens: 漢字 and emoji 🙂🙂."
    ids = tok.encode(first + "<|endoftext|>" + second)
    assert tok.eot in ids
    assert lengths[ids].sum() == len((first + second).encode("utf-8"))  # <|endoftext|> is not text
    y = np.array([ids, [-1] * len(ids)])
    assert count_bytes(lengths, y) == len((first + second).encode("utf-8"))


def test_bits_per_byte():
    assert bits_per_byte(2.0, 100, 400) == pytest.approx(2.0 * 100 / (400 * math.log(2)), rel=1e-15)
    # One byte per token (ASCII characters): bits per byte is nats per token in bits.
    assert bits_per_byte(1.3, 50, 50) == pytest.approx(1.3 / math.log(2), rel=1e-15)
    with pytest.raises(ValueError, match="positive byte count"):
        bits_per_byte(1.0, 10, 0)
