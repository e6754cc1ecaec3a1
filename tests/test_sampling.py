"""sampling.py against plain references: Python loops for the filters, teacher forcing for generation."""
from __future__ import annotations

import math

import pytest
import torch

import models
from sampling import filter_logits, generate, sample_next

# ---------------------------------------------------------------- references


def ref_keep(x: list[float], temperature: float, top_k: int | None, top_p: float | None) -> list[bool]:
    """Which tokens survive the filters, by sorting and accumulating in plain Python floats."""
    V = len(x)
    if temperature == 0:
        best = max(range(V), key=lambda i: (x[i], -i))  # the first of the largest
        return [i == best for i in range(V)]
    z = [v / temperature for v in x]
    keep = [True] * V
    if top_k is not None and top_k < V:
        kth = sorted(z, reverse=True)[top_k - 1]
        keep = [v >= kth for v in z]  # ties with the k-th are kept
    if top_p is not None and top_p < 1:
        m = max(v for v, k in zip(z, keep) if k)
        e = [math.exp(v - m) if k else 0.0 for v, k in zip(z, keep)]
        p = [v / sum(e) for v in e]
        acc, last = 0.0, None
        for i in sorted(range(V), key=lambda i: -p[i]):
            if acc >= top_p:
                break
            acc, last = acc + p[i], p[i]
        keep = [k and pi >= last for k, pi in zip(keep, p)]  # ties with the last one kept are kept
    return keep


def ref_probs(x: list[float], temperature: float, top_k: int | None, top_p: float | None) -> list[float]:
    keep = ref_keep(x, temperature, top_k, top_p)
    if temperature == 0:
        return [float(k) for k in keep]
    e = [math.exp(v / temperature) if k else 0.0 for v, k in zip(x, keep)]
    return [v / sum(e) for v in e]


# ---------------------------------------------------------------- filter_logits

X = [1.5, -1.8, 0.9, -3.2]


@pytest.mark.parametrize("temperature, expected", [
    (1.0, [0.62704177, 0.02312729, 0.34412782, 0.00570312]),
    (0.5, [0.767673394, 0.00104431835, 0.231218783, 0.0000635050642]),
])
def test_softmax_check_values_from_the_study(temperature, expected):
    logits = torch.tensor([X], dtype=torch.float64)
    probs = torch.softmax(filter_logits(logits, temperature), dim=-1)[0]
    assert torch.allclose(probs, torch.tensor(expected, dtype=torch.float64), rtol=1e-7, atol=1e-8)


def random_rows(seed: int) -> torch.Tensor:
    """Float64 rows: continuous ones, and integer-valued ones full of ties."""
    g = torch.Generator().manual_seed(seed)
    continuous = torch.randn(6, 11, generator=g, dtype=torch.float64) * 2
    ties = torch.randint(-2, 3, (6, 11), generator=g).double()
    return torch.cat([continuous, ties, torch.zeros(1, 11, dtype=torch.float64)])  # last row: all tied


SETTINGS = [(1.0, None, None), (0.7, 1, None), (1.0, 3, None), (1.3, 11, None), (1.0, 50, None),
            (1.0, None, 0.3), (0.8, None, 0.63), (1.0, None, 0.9), (1.0, None, 1.0), (1.0, None, 1e-9),
            (0.5, 4, 0.5), (2.0, 7, 0.95), (0.0, None, None), (0.0, 3, 0.5)]


@pytest.mark.parametrize("temperature, top_k, top_p", SETTINGS)
def test_filter_matches_the_plain_loop(temperature, top_k, top_p):
    for seed in range(3):
        logits = random_rows(seed)
        before = logits.clone()
        out = filter_logits(logits, temperature, top_k, top_p)
        assert torch.equal(logits, before), "the caller's logits must not change"
        for row, out_row in zip(logits.tolist(), out):
            keep = ref_keep(row, temperature, top_k, top_p)
            assert torch.isfinite(out_row).tolist() == keep
            got = torch.softmax(out_row, dim=-1)
            assert torch.allclose(got, torch.tensor(ref_probs(row, temperature, top_k, top_p), dtype=torch.float64),
                                  rtol=1e-12, atol=1e-15)


def test_filter_edge_cases():
    x = torch.tensor([[0.0, -1000.0, 2.0, 2.0]], dtype=torch.float64)
    assert torch.isfinite(filter_logits(x, 1.0, None, 1.0)).all(), "p = 1 keeps even a probability of 0"
    assert torch.isfinite(filter_logits(x, 1.0, 4, None)).all(), "k = V keeps all"
    assert torch.isfinite(filter_logits(x, 1.0, 4000, None)).all(), "k > V keeps all"
    assert torch.isfinite(filter_logits(x, 1.0, 1, None)).tolist() == [[False, False, True, True]], "ties kept"
    assert torch.isfinite(filter_logits(x, 1.0, None, 1e-12)).tolist() == [[False, False, True, True]]
    y = torch.tensor([[0.1, 3.0, -2.0]], dtype=torch.float64)
    assert torch.isfinite(filter_logits(y, 1.0, None, 1e-12)).tolist() == [[False, True, False]]
    assert torch.isfinite(filter_logits(y, 0.0, None, None)).tolist() == [[False, True, False]]
    assert filter_logits(y.half(), 0.7, 2, 0.9).dtype == torch.float32  # half is upcast for the softmax


@pytest.mark.parametrize("kwargs", [dict(temperature=-0.1), dict(temperature=float("nan")),
                                    dict(top_k=0), dict(top_k=2.5), dict(top_p=0.0), dict(top_p=1.5),
                                    dict(top_p=-0.2)])
def test_bad_arguments_raise(kwargs):
    args = dict(temperature=1.0, top_k=None, top_p=None) | kwargs
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        filter_logits(torch.zeros(1, 5), **args)


# ---------------------------------------------------------------- sampling


def test_temperature_zero_is_argmax():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_next(logits, temperature=0.0), logits.argmax(-1))
    assert torch.equal(sample_next(logits, 0.0, top_k=5, top_p=0.5), logits.argmax(-1))


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.8, 6, 0.9), (1.5, None, 0.7)])
def test_sampling_frequencies_match_the_filtered_distribution(temperature, top_k, top_p):
    x = [1.2, 0.3, -0.5, 2.0, 0.0, -1.4, 0.8, -3.0]
    expected = torch.tensor(ref_probs(x, temperature, top_k, top_p), dtype=torch.float64)
    n = 200_000
    draws = sample_next(torch.tensor([x]).expand(n, -1), temperature, top_k, top_p,
                        torch.Generator().manual_seed(1234))  # (n,) one draw per row
    counts = torch.bincount(draws, minlength=len(x)).double()
    assert counts[expected == 0].sum() == 0, "a filtered-out token was drawn"
    kept = expected > 0
    chi2 = ((counts[kept] - n * expected[kept]) ** 2 / (n * expected[kept])).sum().item()
    assert chi2 < 40, f"chi-square {chi2:.1f} with {int(kept.sum()) - 1} degrees of freedom (p < 1e-6)"


# ---------------------------------------------------------------- generation with a tiny GPT


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    # float64 so that windows of different lengths cannot flip a near-tie argmax by rounding
    return models.build_model(models.tiny_config("gpt")).double().eval()


def prompt(T0: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (2, T0), generator=torch.Generator().manual_seed(seed))  # (2, T0)


def test_greedy_generation_equals_teacher_forced_argmax(gpt):
    idx = prompt(4)
    out = generate(gpt, idx, 12, temperature=0.0)  # fills the block exactly: 4 + 12 = 16
    assert out.shape == (2, 16) and torch.equal(out[:, :4], idx)
    logits, _ = gpt(out)  # (2, 16, V) one forward of the whole generated sequence
    assert torch.equal(logits[:, 3:-1].argmax(-1), out[:, 4:])


def test_generation_beyond_block_size_slides_the_window(gpt):
    B = gpt.cfg.block_size
    for T0 in (5, 20):  # a prompt that fits, and one already longer than the block
        out = generate(gpt, prompt(T0), 20, temperature=0.0)
        assert out.shape == (2, T0 + 20)
        for t in range(T0, T0 + 20):
            logits, _ = gpt(out[:, max(0, t - B):t])  # the last block_size tokens before t
            assert torch.equal(logits[:, -1].argmax(-1), out[:, t]), f"position {t}"
    sampled = generate(gpt, prompt(3), 40, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (2, 43) and int(sampled.max()) < 64


def test_vocab_size_masks_padding_ids(gpt):
    out = generate(gpt, prompt(3), 30, temperature=2.0, generator=torch.Generator().manual_seed(0), vocab_size=10)
    assert int(out[:, 3:].max()) < 10
    greedy = generate(gpt, prompt(3), 13, temperature=0.0, vocab_size=10)  # 16 tokens: one teacher-forced pass
    logits, _ = gpt(greedy)  # (2, 16, V)
    assert torch.equal(logits[:, 2:-1, :10].argmax(-1), greedy[:, 3:])


def test_same_seed_same_tokens_and_mode_kept(gpt):
    run = lambda seed: generate(gpt, prompt(3), 25, temperature=0.9, top_p=0.95,
                                generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))
    assert not gpt.training
    gpt.train()
    try:
        generate(gpt, prompt(3), 2)
        assert gpt.training, "generate must leave the mode the caller set"
    finally:
        gpt.eval()
    assert torch.equal(generate(gpt, prompt(3), 0), prompt(3))


# ---------------------------------------------------------------- the incremental decoder path


def windowed_generate(model, idx: torch.Tensor, new: int, generator: torch.Generator, **kw) -> torch.Tensor:
    """The plain reference: a full forward of the last block_size tokens before every draw."""
    for _ in range(new):
        logits, _ = model(idx[:, -model.cfg.block_size:])
        idx = torch.cat([idx, sample_next(logits[:, -1], generator=generator, **kw)[:, None]], dim=1)
    return idx


class CallCounter(torch.nn.Module):
    """Counts the wrapped model's calls: full forwards (no cache) and incremental ones (with a cache)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.cfg = model, model.cfg
        self.full = self.incremental = 0

    def forward(self, idx, targets=None, *, cache=None, start=0):
        if cache is None:
            self.full += 1
        else:
            self.incremental += 1
        return self.model(idx, targets, cache=cache, start=start)


@pytest.mark.parametrize("T0, new", [(3, 8), (3, 13), (3, 30), (16, 5), (20, 5)])
def test_incremental_decoding_gives_the_tokens_of_the_windowed_forward(gpt, T0, new):
    kw = dict(temperature=1.0, top_k=20)
    reference = windowed_generate(gpt, prompt(T0), new, torch.Generator().manual_seed(3), **kw)
    counted = CallCounter(gpt)
    fast = generate(counted, prompt(T0), new, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(reference, fast)
    B = gpt.cfg.block_size
    decoder_steps = max(0, min(new, B - T0 + 1))  # steps whose context (T0 + s tokens) fits the block
    assert counted.incremental == (decoder_steps > 0) + max(0, min(new - 1, B - T0))  # prompt, then one per push
    assert counted.full == new - decoder_steps  # the rest went through the windowed forward


# ---------------------------------------------------------------- sample.py: --start and the CLI

import sample  # noqa: E402  (the CLI module; its heavy imports happen inside main)


class CharTok:
    """A char tokenizer like data/tokenizer.py's, kept here so these tests depend on sample.py only."""

    def __init__(self, chars: str):
        self.chars, self.vocab_size, self.eot = chars, len(chars), None

    def encode(self, text: str) -> list[int]:
        bad = [c for c in text if c not in self.chars]
        if bad:
            raise ValueError(f"character {bad[0]!r} is not in this dataset's vocabulary")
        return [self.chars.index(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)


def test_read_start(tmp_path):
    assert sample.read_start("ROMEO:") == "ROMEO:"
    assert sample.read_start("\n") == "\n"
    (tmp_path / "p.txt").write_text("Once upon a time\n", encoding="utf-8")
    assert sample.read_start(f"FILE:{tmp_path / 'p.txt'}") == "Once upon a time\n"
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bin.dat").write_bytes(b"\xff\xfe\x00\x80")
    for bad, match in [("", "empty"), (f"FILE:{tmp_path / 'nope.txt'}", "there is no file"),
                       (f"FILE:{tmp_path / 'empty.txt'}", "file is empty"), (f"FILE:{tmp_path}", "no file"),
                       (f"FILE:{tmp_path / 'bin.dat'}", "UTF-8")]:
        with pytest.raises(sample.StartError, match=match):
            sample.read_start(bad)


def test_encode_start():
    tok = CharTok("\n !ABC")
    assert sample.encode_start(tok, "AB C!") == [3, 4, 1, 5, 2]
    with pytest.raises(sample.StartError, match="'z' is not in"):
        sample.encode_start(tok, "ABz")


def test_bad_start_is_one_line_and_exit_2(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(sample, "load_model", lambda args, device: (models.build_model(models.tiny_config("gpt")).eval(),
                                                                   CharTok("\n !ABC")))
    for argv in (["--start", ""], ["--start", f"FILE:{tmp_path / 'missing.txt'}"], ["--start", "ABz", "--device", "cpu"]):
        assert sample.main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("sample.py: error:")
    for argv in (["--top_p", "1.5"], ["--top_k", "0"], ["--temperature", "-1"], ["--num_samples", "0"]):
        with pytest.raises(SystemExit) as e:
            sample.parse_args(argv)
        assert e.value.code == 2
    assert sample.parse_args(["--top_k", "None", "--top_p", "0.9"]).top_k is None


def test_cli_prints_samples_separated_by_dashes(capsys, monkeypatch):
    torch.manual_seed(0)
    model = models.build_model(models.tiny_config("gpt")).eval()  # vocabulary 64, of which the tokenizer uses 6
    monkeypatch.setattr(sample, "load_model", lambda args, device: (model, CharTok("\n !ABC")))
    argv = ["--start", "AB", "--num_samples", "2", "--max_new_tokens", "30", "--device", "cpu", "--temperature", "2"]
    assert sample.main(argv) == 0
    first = capsys.readouterr().out
    samples = first.split("-" * 40 + "\n")
    assert len(samples) == 3 and samples[2] == ""
    assert all(s.startswith("AB") and len(s) == 2 + 30 + 1 for s in samples[:2])  # prompt, new text, newline
    assert sample.main(argv) == 0 and capsys.readouterr().out == first  # same seed, same text


def test_a_byte_model_prints_valid_text_from_any_prompt(capsys, monkeypatch):
    """An untrained byte model draws bytes that are often no valid UTF-8: each such sequence prints as
    U+FFFD, the prompt (characters no char vocabulary of the corpus holds) comes back intact."""
    from data.tokenizer import ByteTokenizer
    torch.manual_seed(0)
    model = models.build_model(models.tiny_config("gpt", vocab_size=256, block_size=32)).eval()
    monkeypatch.setattr(sample, "load_model", lambda args, device: (model, ByteTokenizer()))
    prompt = "Καλημέρα 日本 🙂"
    argv = ["--start", prompt, "--num_samples", "2", "--max_new_tokens", "60", "--device", "cpu", "--temperature", "2"]
    assert sample.main(argv) == 0
    samples = capsys.readouterr().out.split("-" * 40 + "\n")[:2]
    assert all(s.startswith(prompt) for s in samples)
    assert any("\ufffd" in s for s in samples)  # invalid sequences were drawn, and replaced
    assert all(s.encode("utf-8", "strict") for s in samples)  # valid text: no lone surrogates
