"""Registry-wide tests: every entry of models.MODELS, built from its tiny preset, honours the contract.

Causality (GUIDE point 9) is tested three ways, in train and eval mode, batch of 2: (a) changing the
tokens after t leaves logits up to t unchanged; (b) the gradient of logits at t with respect to the
token embeddings after t (and of the other sequence) is exactly zero; (c) NaN in the last position's
embedding leaves earlier logits finite. Float64 where exactness matters.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import models
import models.conv
from helpers import model_variants, variant_id
from models.layers import Embedding

VARIANTS = model_variants()
each_model = pytest.mark.parametrize("variant", VARIANTS, ids=list(map(variant_id, VARIANTS)))


def build(variant: tuple[str, dict], seed: int = 0) -> torch.nn.Module:
    name, overrides = variant
    torch.manual_seed(seed)
    return models.build_model(models.tiny_config(name, **overrides))


def tokens(cfg, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), generator=g)


def embedding_of(model: torch.nn.Module) -> Embedding:
    return next(m for m in model.modules() if isinstance(m, Embedding))


@pytest.mark.parametrize("train", [True, False])
@each_model
def test_changing_the_future_leaves_the_past(variant, train: bool):
    model = build(variant).double().train(train)
    idx = tokens(model.cfg)
    logits, _ = model(idx)
    assert logits.shape == (2, model.cfg.block_size, model.cfg.vocab_size)
    for t in (0, 7, model.cfg.block_size - 2):
        changed = idx.clone()
        changed[:, t + 1:] = tokens(model.cfg, seed=t + 1)[:, t + 1:]
        torch.testing.assert_close(model(changed)[0][:, : t + 1], logits[:, : t + 1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("train", [True, False])
@each_model
def test_no_gradient_from_the_future_or_other_sequences(variant, train: bool):
    """d logits[0, t] / d embedding[b, s] is zero for s > t, and for the other sequence b = 1: exactly, for
    every mixer but Hyena, whose FFT convolution carries rounding (1e-16 relative in float64) from every
    position into every other; the bound, 1e-12 of the gradient from the past, allows that and no leak."""
    model = build(variant).double().train(train)
    captured = []
    handle = embedding_of(model).register_forward_hook(lambda m, args, out: captured.append(out))
    logits, _ = model(tokens(model.cfg))
    handle.remove()
    (emb,) = captured  # (B, T, d)
    weights = torch.randn(logits.shape[-1], dtype=logits.dtype)
    for t in (0, 7, model.cfg.block_size - 2):
        (grad,) = torch.autograd.grad((logits[0, t] * weights).sum(), emb, retain_graph=True)
        past = grad[0, : t + 1].abs().max()
        assert past > 0
        assert grad[0, t + 1:].abs().max() <= 1e-12 * past and grad[1].abs().max() <= 1e-12 * past


def sliced_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    """Causal attention that never reads keys or values after the query: row t uses k[:t+1], v[:t+1]."""
    assert is_causal and attn_mask is None and dropout_p == 0.0
    scale = 1 / math.sqrt(q.size(-1)) if scale is None else scale
    rows = []
    for t in range(q.size(-2)):
        w = (q[..., t: t + 1, :] @ k[..., : t + 1, :].transpose(-1, -2) * scale).softmax(-1)  # (..., 1, t+1)
        rows.append(w @ v[..., : t + 1, :])  # (..., 1, Dv)
    return torch.cat(rows, dim=-2)


def direct_causal_conv(z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """y_t = sum_{s <= t} h_{t-s} z_s, row by row: never reads a position after t."""
    rows = [(z[:, : t + 1] * h[:, : t + 1].flip(-1).t()).sum(1) for t in range(z.size(1))]  # each (B, C)
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("train", [True, False])
@each_model
def test_nan_in_the_last_position_stays_there(variant, train: bool, monkeypatch):
    """NaN written into the last position's embedding must not reach earlier logits.

    The fused attention kernels are swapped for sliced_attention while this runs: they multiply the
    masked weights (exact zeros) by the future values, and 0 * NaN = NaN, so with them NaN reaches every
    row although no information does ((a) and (b) cover the kernels; test_mixers.py pins the kernels to
    a per-row loop). Hyena's FFT convolution is swapped for a direct sum for the same reason (an FFT
    spreads a NaN to every position; test_mixers.py pins the FFT to the direct sum). What this test catches is any other path: statistics over the batch of token images
    (BatchNorm), a norm or pooling across tokens, a mixer that reads ahead.
    """
    monkeypatch.setattr(F, "scaled_dot_product_attention", sliced_attention)
    monkeypatch.setattr(models.conv, "fft_causal_conv", direct_causal_conv)
    model = build(variant).double().train(train)

    def poison(module, args, out):
        out = out.clone()
        out[:, -1] = float("nan")
        return out

    embedding_of(model).register_forward_hook(poison)
    logits, _ = model(tokens(model.cfg))
    assert torch.isfinite(logits[:, :-1]).all() and torch.isnan(logits[:, -1]).all()


@each_model
def test_initial_loss_and_every_parameter_learns(variant):
    """At init the logits are small (N(0, 0.02) heads on normalised features, std ~0.02 * sqrt(width)
    ~0.15 here), so the loss on random targets is ln V + O(std^2) (a uniform guess): we allow 0.25,
    which a head with logits of std ~1 would exceed. Then one backward reaches every parameter."""
    model = build(variant)
    idx, targets = tokens(model.cfg), tokens(model.cfg, seed=1)
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(model.cfg.vocab_size)) < 0.25
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{pname} received no gradient"


@each_model
def test_one_batch_overfits(variant):
    """Memorising one batch of 2 x 16 random tokens: the loss halves within 300 Adam steps (each model
    takes 33-69 at lr 1e-3 on a Zen 4 CPU: a margin of 4x; the loop stops as soon as it halves). At lr
    3e-3 or more the plain image models (no norm in the 9-conv VGG) collapse to predicting the batch's
    unigram distribution (loss ln 24 ~ 3.19) and stay there."""
    model = build(variant)
    idx, targets = tokens(model.cfg), tokens(model.cfg, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(300):
        _, loss = model(idx, targets)
        first = first if first is not None else loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if loss.item() < 0.5 * first:
            break
    assert loss.item() < 0.5 * first


@each_model
def test_param_counts_cover_every_parameter_once(variant):
    model = build(variant)
    counts = model.param_counts()
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())  # parameters() is unique
    assert all(n >= 0 for n in counts.values())


def vgg_params(c_in: int, cfg) -> int:
    """The 9-conv VGG at width 64 after the input's per-image GroupNorm (2 C': a gain and a shift per
    channel, img_norm "group" or "layer"): conv C'->64 (9*64*C' + 64) and eight 64->64 (9*64*64 + 64); with
    cnn_norm each conv drops its bias (the norm's shift replaces it) and its norm adds 2*64."""
    convs = 9 * 64 * c_in + 64 + 8 * (9 * 64 * 64 + 64)
    return convs + (2 * c_in if cfg.img_norm != "none" else 0) + (9 * 64 if cfg.cnn_norm != "none" else 0)


def layer_closed_forms(cfg, mixer: str, mlp: bool, projected: bool) -> dict[str, int]:
    """Parameters of one layer's parts (bias=True), from the architecture; ln_1 (2d) with the part that reads
    the block's input (the first, but Hyena's filter, which reads positions)."""
    d, D, k = cfg.n_embd, cfg.channels * cfg.height * cfg.width, cfg.conv_kernel
    linear = lambda i, o: i * o + o  # noqa: E731
    depthwise = lambda c: c * k + c  # noqa: E731
    w, e = cfg.filter_width, 1 + 2 * 8  # hyena's filter MLP: 8 frequency bands, sin and cos, and t
    parts = {
        "attn": {"attn": 2 * d + linear(d, 3 * d) + linear(d, d)},
        "none": {},
        "conv": {"conv": 2 * d + linear(d, d) + depthwise(d) + linear(d, d)},
        "gated_conv": {"conv": 2 * d + linear(d, 2 * d) + depthwise(2 * d) + linear(d, d)},
        "hyena": {"filter": linear(e, w) + linear(w, w) + linear(w, d),
                  "conv": 2 * d + linear(d, 3 * d) + depthwise(3 * d) + d + linear(d, d)},  # + the skip, d
    }.get(mixer)
    if parts is None:  # an image block: paint (idea 2's with a bias), its q and k, the CNN, c_proj
        attn = mixer == "image_attn"
        c_in = cfg.channels * (2 if cfg.own_image else 1)
        parts = {"paint": 2 * d + d * D + (D if attn else 0), "route": linear(d, 2 * d) if attn else 0,
                 "cnn": vgg_params(c_in, cfg), "proj": linear(64, d) if projected else 0}
    if mlp:
        parts["mlp"] = 2 * d + linear(d, 4 * d) + linear(4 * d, d)
    return parts


def closed_forms(cfg) -> dict[str, int]:
    """Parameters per component of any model with bias=True and cnn="vgg": the embedding (wte, the tied
    head, and wpe), each layer's parts, and the head (ln_f, and an untied lm_head on the 64 CNN features)."""
    layers, head = cfg.layers(), cfg.output_head()
    counts = {"embedding": cfg.vocab_size * cfg.n_embd + cfg.block_size * cfg.n_embd}
    for i, layer in enumerate(layers):
        projected = not (head == "plain" and i == len(layers) - 1)
        counts.update({f"h{i}.{part}": n for part, n in layer_closed_forms(cfg, *layer, projected).items() if n})
    counts["head"] = 2 * 64 + 64 * cfg.vocab_size if head == "plain" else 2 * cfg.n_embd
    return counts


@each_model
def test_param_counts_match_closed_forms(variant):
    model = build(variant)
    assert model.param_counts() == closed_forms(model.cfg)


@pytest.mark.parametrize("variant", [("lm", {"mixers": ["none"]}), ("image_sum", {"warmup": "mlp", "mixer": "none"})],
                         ids=["backbone-none", "image-control-without-attention-or-mixing"])
def test_without_mixing_each_position_reads_only_its_own_token(variant):
    """No token mixer anywhere (the backbone's none; the image preset's convolution-only control with no mixer):
    the logits at t depend on token t alone (and the position)."""
    model = build(variant).double()
    idx = tokens(model.cfg)
    logits, _ = model(idx)
    for t in (0, 5, model.cfg.block_size - 1):
        changed = tokens(model.cfg, seed=t + 7)
        changed[:, t] = idx[:, t]
        torch.testing.assert_close(model(changed)[0][:, t], logits[:, t], rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def shakespeare_chars(tmp_path_factory):
    """(train ids, val ids, V, the add-one unigram loss of the val windows under train counts)."""
    import numpy as np

    from reporting.references import ngram_counts, unigram_nll
    from helpers import write_char_dataset
    folder = write_char_dataset(tmp_path_factory.mktemp("data"), n_chars=50_000)
    V = json.loads((folder / "meta.json").read_text())["vocab_size"]
    train, val = (np.fromfile(folder / f"{s}.bin", dtype=np.uint16).astype(np.int64) for s in ("train", "val"))
    T = models.tiny_config("gpt").block_size
    n = (len(val) - 1) // T
    x, y = val[:n * T].reshape(n, T), val[1:n * T + 1].reshape(n, T)
    unigram = float(np.nanmean(unigram_nll(ngram_counts(train, V), x, y)))
    return torch.from_numpy(train), (torch.from_numpy(x), torch.from_numpy(y)), V, unigram


def train_on_text(variant, shakespeare_chars, steps: int = 150) -> tuple[torch.nn.Module, float]:
    """(model, held-out loss) after `steps` AdamW steps (lr 2e-3, batch 16) on tiny Shakespeare."""
    train, (x_val, y_val), V, _ = shakespeare_chars
    name, overrides = variant
    torch.manual_seed(0)
    model = models.build_model(models.tiny_config(name, **overrides, vocab_size=V))
    T = model.cfg.block_size
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(train) - T - 1, (16,), generator=g)
        batch = torch.stack([train[s:s + T + 1] for s in starts.tolist()])  # (16, T + 1)
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        _, val_loss = model(x_val, y_val)
    return model, val_loss.item()


PLAIN_FORM = [v for v in VARIANTS if v[1].get("n_chain") == 0]  # the image stage's features feed the head
LEARNERS = [v for v in VARIANTS if v not in PLAIN_FORM]


@pytest.mark.slow
@pytest.mark.parametrize("variant", LEARNERS, ids=list(map(variant_id, LEARNERS)))
def test_learns_real_text_beyond_the_unigram(variant, shakespeare_chars):
    """Causal but unable to learn is broken too: 150 steps (a few seconds) on the first 45,000 characters
    of tiny Shakespeare take every model below the unigram model of that text, scored on the same
    held-out windows (every model, mixing or not, can use the current character)."""
    unigram = shakespeare_chars[3]
    _, val_loss = train_on_text(variant, shakespeare_chars)
    assert val_loss < unigram - 0.1, f"val loss {val_loss:.3f}, unigram {unigram:.3f}"


def front_gradient_norm(model: torch.nn.Module, train: torch.Tensor) -> float:
    """The gradient norm reaching the front (the blocks before the image block the head reads) on 16 fixed
    windows of the training text."""
    T = model.cfg.block_size
    batch = torch.stack([train[s:s + T + 1] for s in range(0, 16 * T, T)])  # (16, T + 1)
    model.train()
    model.zero_grad(set_to_none=True)
    _, loss = model(batch[:, :-1], batch[:, 1:])
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.h[:-1].parameters()]).norm().item()


@pytest.mark.slow
@pytest.mark.parametrize("variant", PLAIN_FORM, ids=list(map(variant_id, PLAIN_FORM)))
def test_the_plain_form_collapses_to_the_unigram(variant, shakespeare_chars):
    """The pathology docs/image_block.md describes, kept as configured and pinned down here: in
    the plain form (the head reads the CNN's features; the original wiring, or with the projected tied
    head) the same 150 steps end at the unigram level, and the gradient reaching the front has all but
    vanished. Both are stated against what the learners do, with margin for other CPUs' kernels: measured
    on a Zen 4 CPU, the plain forms end 0.0005-0.006 nats from the unigram (the learners 0.61-0.65 below it;
    the test allows 0.15) and their front's gradient at 0.04 and 0.0015 of its value at initialisation (the
    test allows 0.25). If this starts failing, the plain form learns: update the docstring, the configs'
    comments and this test."""
    train, _, V, unigram = shakespeare_chars
    torch.manual_seed(0)
    at_init = front_gradient_norm(models.build_model(models.tiny_config(variant[0], **variant[1], vocab_size=V)), train)
    model, val_loss = train_on_text(variant, shakespeare_chars)
    assert abs(val_loss - unigram) < 0.15, f"val loss {val_loss:.3f}, unigram {unigram:.3f}"
    after = front_gradient_norm(model, train)
    assert after < 0.25 * at_init, f"front gradient {after:.3g} after training, {at_init:.3g} at init"
