"""The backbone's FLOP counts and incremental decoders (every variant of test_registry.py), and the image
blocks' chunked CNN, idea 2's head layout and configs. Causality, gradients, overfitting and parameter
counts of every model are in test_registry.py."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

import models
from config import ConfigError, from_dict
from helpers import model_variants, variant_id
from models.conv import FFT_FLOP_FORMULAS
from models.decoding import Decoder
from models.image import ImageAttention, ImageMixer, RunningSum

IMAGE_MODELS = [name for name in models.MODELS if name.startswith("image_")]
VARIANTS = model_variants()
each_model = pytest.mark.parametrize("variant", VARIANTS, ids=list(map(variant_id, VARIANTS)))


def build(name: str, seed: int = 0, **overrides) -> models.LM:
    torch.manual_seed(seed)
    return models.build_model(models.tiny_config(name, **overrides))


def tokens(cfg, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), generator=g)


def grouped_conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                                _output_padding, groups, output_mask, out_shape, **kwargs) -> int:
    """torch's count of a convolution's backward with its groups (torch 2.14 forgets them for the weight
    gradient, counting a depthwise convolution's C times over): the input gradient is a convolution of
    the output gradient with the weight, the weight gradient one of the input with the output gradient,
    each of the forward's cost."""
    t = lambda shape: [shape[1], shape[0], *shape[2:]]  # noqa: E731
    total = 0
    if output_mask[0]:
        total += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:
        total += conv_flop_count(t(x_shape), t(grad_out_shape), t(out_shape[1]), transposed=False) // groups
    return total


COUNTER_FIXES = {**FFT_FLOP_FORMULAS, torch.ops.aten.convolution_backward: grouped_conv_backward_flops}


def test_the_counter_fix_agrees_with_torch_where_torch_is_right():
    """Ungrouped convolutions: the fixed backward count equals torch's own."""
    conv = torch.nn.Conv1d(6, 4, 3)
    x = torch.randn(2, 6, 10, requires_grad=True)
    counts = []
    for mapping in ({}, COUNTER_FIXES):
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            conv(x).sum().backward()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 3 * 2 * 2 * 4 * 8 * 6 * 3  # forward + 2 gradients, 2 per multiply-add


@each_model
def test_flops_per_token_matches_flop_counter(variant):
    """flops_per_token == FlopCounterMode on one forward + backward of one sequence at T = block_size, exactly.

    Both count matmuls, convolutions and FFTs only (2 FLOPs per multiply-add; models/conv.py registers the
    FFTs' count with the counter). One sequence: Hyena's filter is made once per call, and its per-token
    share is stated for a batch of one. The math SDPA backend is forced so that attention is counted at
    all: on CPU the fused flash kernel (taken when the head sizes are equal) has no FLOP formula in
    FlopCounterMode. Left out by both: elementwise work (running sum, gates, softmax, LayerNorm, GELU,
    ReLU, biases, pooling), estimated below for the image blocks at well under 1% of the total -- for a
    conv the bias and ReLU cost 2 FLOPs per output against 2 * 9 * C_in per output for the conv itself.
    """
    model = build(variant[0], **variant[1])
    cfg = model.cfg
    idx = tokens(cfg, batch=1)
    with FlopCounterMode(display=False, custom_mapping=COUNTER_FIXES) as counter, sdpa_kernel(SDPBackend.MATH):
        _, loss = model(idx, idx)
        loss.backward()
    counted = counter.get_total_flops() / idx.numel()
    assert counted == pytest.approx(model.flops_per_token(), rel=1e-12)
    images = [m for m in model.modules() if isinstance(m, ImageMixer)]
    if not images:
        return
    D, d, pixels = cfg.channels * cfg.height * cfg.width, cfg.n_embd, cfg.height * cfg.width
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in images[0].reader.modules())
    elementwise_fwd = len(images) * (D + 3 * convs * 64 * pixels) + 20 * d * (cfg.n_layer + 2) + 5 * cfg.vocab_size
    assert 3 * elementwise_fwd < 0.01 * model.flops_per_token()


@pytest.mark.parametrize("name", ["image_sum", "image_attn_chain"])
def test_chunked_cnn_equals_unchunked(name: str):
    """Chunks of 5 images (not a divisor of B*T = 32), with and without checkpointing: same logits
    and same gradients as the CNN over all B*T images at once (float64)."""
    ref = build(name).double()
    idx = tokens(ref.cfg)
    logits_ref, loss_ref = ref(idx, idx)
    grads_ref = torch.autograd.grad(loss_ref, list(ref.parameters()))
    for checkpointed in (False, True):
        model = build(name, cnn_chunk=5, cnn_checkpoint=checkpointed).double()
        model.load_state_dict(ref.state_dict())
        logits, loss = model(idx, idx)
        torch.testing.assert_close(logits, logits_ref, rtol=1e-12, atol=1e-12)
        for g, g_ref in zip(torch.autograd.grad(loss, list(model.parameters())), grads_ref):
            torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_channels_last_equals_default():
    ref = build("image_sum")
    model = build("image_sum", channels_last=True)
    model.load_state_dict(ref.state_dict())
    idx = tokens(ref.cfg)
    torch.testing.assert_close(model(idx)[0], ref(idx)[0], rtol=1e-4, atol=1e-5)


@each_model
def test_decoder_equals_forward(variant):
    """Prompt of 3 tokens, then one push per token up to block_size: the decoder's logits equal the
    parallel forward's at every position (float32, 1e-5)."""
    model = build(variant[0], **variant[1]).eval()
    idx = tokens(model.cfg, batch=3, seed=1)
    with torch.no_grad():
        full, _ = model(idx)  # (B, T, V)
    decoder = Decoder(model, idx[:, :3])
    torch.testing.assert_close(decoder.logits, full[:, 2], rtol=1e-5, atol=1e-5)
    for t in range(3, idx.size(1)):
        decoder.push(idx[:, t])
        torch.testing.assert_close(decoder.logits, full[:, t], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="block_size"):
        decoder.push(idx[:, 0])


def test_running_sum_is_the_whole_decoder_state():
    """Idea 1's mixing state does not grow with the context: one (B, D) running sum per stage."""
    model = build("image_sum_chain").eval()
    decoder = Decoder(model, tokens(model.cfg)[:, :4])
    D = model.cfg.channels * model.cfg.height * model.cfg.width
    sums = [state for owner, state in decoder.cache.items() if isinstance(owner, RunningSum)]
    assert len(sums) == len(image_mixers(model)) == 2 and all(s.shape == (2, D) for s in sums)


def image_mixers(model: torch.nn.Module) -> list[ImageMixer]:
    return [m for m in model.modules() if isinstance(m, ImageMixer)]


def loop_image_heads(mix: ImageAttention, x: torch.Tensor, cfg) -> torch.Tensor:
    """Per channel c: the causal softmax weights of head c // (C / nh), times that channel's values."""
    B, T, d = x.shape
    nh, per_head = mix.heads, cfg.channels // mix.heads
    q, k = mix.c_attn(x).split(d, dim=2)
    v = mix.paint(x).view(B, T, cfg.channels, cfg.height * cfg.width)  # (B, T, C, H*W)
    out = torch.empty_like(v)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for c in range(cfg.channels):
        h = c // per_head
        hs = d // nh
        qh, kh = q[..., h * hs:(h + 1) * hs], k[..., h * hs:(h + 1) * hs]  # (B, T, hs)
        scores = (qh @ kh.transpose(1, 2) / math.sqrt(hs)).masked_fill(~causal, float("-inf"))
        out[:, :, c] = scores.softmax(-1) @ v[:, :, c]  # (B, T, H*W)
    return out.view(B, T, -1)


@pytest.mark.parametrize("image_heads", [0, 2, 1])
def test_image_heads_own_channel_groups(image_heads: int):
    model = build("image_attn", image_heads=image_heads).double()
    mix = image_mixers(model)[0].mixing
    x = torch.randn(2, model.cfg.block_size, model.cfg.n_embd, dtype=torch.float64)
    torch.testing.assert_close(mix(x, None, 0)[1], loop_image_heads(mix, x, model.cfg), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("model_section,message", [
    ({"name": "image_sum", "image_heads": 2}, "image_heads applies to model.mixer"),
    ({"name": "image_sum", "heads": 2}, "unknown key model.heads"),
    ({"name": "image_attn", "mixer": "max"}, "valid choices: sum, mean, attn, none"),
    ({"name": "image_sum", "warmup": "lstm"}, "valid choices: gpt, mlp"),
    ({"name": "image_attn", "image_heads": 3}, "must divide model.channels"),
    ({"name": "image_sum_chain", "n_chain": -1}, "n_chain must be >= 0"),
    ({"name": "image_attn", "cnn_norm": "batch"}, "unknown cnn_norm"),
    ({"name": "image_sum", "cnn": "vgg19"}, "unknown cnn"),
    ({"name": "image_sum", "cnn_chunk": -1}, "cnn_chunk must be >= 0"),
    ({"name": "image_sum", "channels": 0}, "channels must be positive"),
])
def test_config_errors_name_the_key(model_section: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        from_dict({"model": model_section})


def test_config_files_load_and_build():
    """Every configs/tiny_image_*.toml builds and runs; the owt_* files build (on the meta device: no
    memory) with the original study's data and shapes."""
    from pathlib import Path

    from config import load_config
    root = Path(__file__).resolve().parent.parent / "configs"
    tiny = sorted(root.glob("tiny_image_*.toml"))
    assert {p.stem.removeprefix("tiny_") for p in tiny} == set(IMAGE_MODELS)
    for path in tiny:
        cfg = load_config(path, ["--model.vocab_size=64"]).model  # train.py fills it in from the dataset
        logits, _ = models.build_model(cfg)(tokens(cfg, batch=1))
        assert logits.shape == (1, cfg.block_size, 64)
    owt = sorted(root.glob("owt_idea*.toml"))
    assert len(owt) == 6
    for path in owt:
        cfg = load_config(path, ["--model.vocab_size=50304"])
        assert cfg.data.dataset == "openwebtext" and cfg.model.block_size == 1024
        with torch.device("meta"):
            model = models.build_model(cfg.model)
        assert model.flops_per_token() > 3 * 0.6e9  # at least the VGG's 0.6 GFLOP forward, x3 for training
