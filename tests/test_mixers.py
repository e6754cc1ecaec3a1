"""The vectorised causal mixers equal plain sequential references, gradients included (float64), and
their incremental forms (a carry, a KV cache, the last inputs of a convolution) equal the full sequence
computed at once."""
from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from models.attention import causal_attention
from models.conv import CausalDepthwiseConv, GatedConv, Hyena, ImplicitFilter, fft_causal_conv
from models.image import causal_cumsum


def cumsum(a: torch.Tensor, mean: bool = False) -> torch.Tensor:
    return causal_cumsum(a, mean)[0]


def image_value_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return causal_attention(q, k, v, cache=None, owner=None)


def loop_cumsum(a: torch.Tensor, mean: bool = False) -> torch.Tensor:
    """The original study's loop over the time axis (on a clone), optionally divided by t + 1."""
    act = a.clone()
    for i in range(1, act.size(1)):
        act[:, i] += act[:, i - 1]
    if mean:
        act = torch.stack([act[:, t] / (t + 1) for t in range(act.size(1))], dim=1)
    return act


def loop_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """For each t: softmax over s <= t of q_t . k_s / sqrt(hs), then the weighted sum of v_s."""
    hs, T = q.size(-1), q.size(2)
    out = []
    for t in range(T):
        scores = torch.einsum("bhd,bhsd->bhs", q[:, :, t], k[:, :, : t + 1]) / math.sqrt(hs)  # (B, nh, t+1)
        out.append(torch.einsum("bhs,bhsd->bhd", scores.softmax(-1), v[:, :, : t + 1]))      # (B, nh, Dv)
    return torch.stack(out, dim=2)  # (B, nh, T, Dv)


def grads(fn, inputs: tuple[torch.Tensor, ...], weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gradients of a random weighted sum of fn's outputs with respect to every input."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    return (out.detach(), *torch.autograd.grad((out * weight).sum(), leaves))


@pytest.mark.parametrize("mean", [False, True])
@pytest.mark.parametrize("shape", [(2, 13, 5), (3, 7, 2, 3, 3)])  # vectors, and images (C, H, W)
def test_cumsum_equals_loop_with_gradients(mean: bool, shape: tuple[int, ...]):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(shape, generator=g, dtype=torch.float64)
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    ours = grads(lambda x: cumsum(x, mean=mean), (a,), w)
    ref = grads(lambda x: loop_cumsum(x, mean=mean), (a,), w)
    for x, y in zip(ours, ref):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_cumsum_is_causal_and_keeps_dtype():
    a = torch.randn(2, 9, 4, dtype=torch.float64)
    b = a.clone()
    b[:, 5:] = torch.randn(2, 4, 4, dtype=torch.float64)
    assert torch.equal(cumsum(a)[:, :5], cumsum(b)[:, :5])
    assert cumsum(a.to(torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("mean", [False, True])
def test_cumsum_bf16_accumulates_in_float32(mean: bool):
    """bf16 input at T = 1024: only the final rounding to bf16 remains.

    Reference: the exact running sum of the same bf16 values, in float64. Bound per element:
    the bf16 cast of the result errs by at most a half-ulp, 2^-8 relative (8 significant bits);
    float32 accumulation adds at most T * 2^-24 * sum|a_s| (a standard bound, here ~1e-4 of the
    partial sums of |a|). A bf16 accumulation would round at each of the 1024 steps and fails this
    bound, which the test checks too, so it proves that the float32 path is taken.
    """
    g = torch.Generator().manual_seed(0)
    T = 1024
    a = torch.randn(2, T, 64, generator=g).to(torch.bfloat16)
    ref = loop_cumsum(a.double(), mean=mean)            # exact: bf16 values are exact in float64
    abs_sum = loop_cumsum(a.double().abs(), mean=mean)
    bound = 2.0 ** -8 * ref.abs() + T * 2.0 ** -24 * abs_sum * 2  # x2: slack, and the cast of that error
    out = cumsum(a, mean=mean)
    assert out.dtype == torch.bfloat16
    assert ((out.double() - ref).abs() <= bound).all()
    naive = loop_cumsum(a, mean=mean)  # the original loop in bf16 rounds at every step
    assert ((naive.double() - ref).abs() > bound).any()


def test_cumsum_bf16_under_autocast():
    a = torch.randn(1, 256, 8).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cumsum(a)
    torch.testing.assert_close(out.double(), torch.cumsum(a.double(), 1), rtol=2.0 ** -8, atol=1e-3)


@pytest.mark.parametrize("hs,dv", [(4, 4), (3, 2 * 5 * 5)])  # equal sizes, and image values (Dv >> hs)
def test_image_value_attention_equals_loop_with_gradients(hs: int, dv: int):
    g = torch.Generator().manual_seed(0)
    B, nh, T = 2, 3, 11
    q, k = (torch.randn(B, nh, T, hs, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, nh, T, dv, generator=g, dtype=torch.float64)
    w = torch.randn(B, nh, T, dv, generator=g, dtype=torch.float64)
    ours = grads(image_value_attention, (q, k, v), w)
    ref = grads(loop_attention, (q, k, v), w)
    assert ours[0].shape == (B, nh, T, dv)
    for x, y in zip(ours, ref):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_image_value_attention_is_causal():
    """Changing keys and values after t leaves outputs up to t unchanged. (Not NaN: the fused kernel
    multiplies masked weights, exact zeros, by the future values, and 0 * NaN is NaN.)"""
    q, k, v = torch.randn(2, 2, 8, 4), torch.randn(2, 2, 8, 4), torch.randn(2, 2, 8, 20)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 6:], v2[:, :, 6:] = 1e3 * torch.randn(2, 2, 2, 4), 1e3 * torch.randn(2, 2, 2, 20)
    out, out2 = image_value_attention(q, k, v), image_value_attention(q, k2, v2)
    assert torch.equal(out[:, :, :6], out2[:, :, :6])


@pytest.mark.parametrize("mean", [False, True])
def test_cumsum_in_pieces_with_a_carry_equals_the_whole(mean: bool):
    """Decoding feeds the running sum a few positions at a time: carry + start reproduce the whole."""
    a = torch.randn(2, 12, 6, dtype=torch.float64)
    whole = cumsum(a, mean)
    pieces, carry = [], None
    for lo, hi in [(0, 5), (5, 6), (6, 12)]:
        out, carry = causal_cumsum(a[:, lo:hi], mean, carry, start=lo)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-12, atol=1e-12)


def test_attention_in_pieces_with_a_cache_equals_the_whole():
    q, k = torch.randn(2, 3, 10, 4, dtype=torch.float64), torch.randn(2, 3, 10, 4, dtype=torch.float64)
    v = torch.randn(2, 3, 10, 7, dtype=torch.float64)
    whole = image_value_attention(q, k, v)
    cache, owner, pieces = {}, torch.nn.Identity(), []
    for lo, hi in [(0, 4), (4, 5), (5, 10)]:
        pieces.append(causal_attention(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], cache, owner))
    torch.testing.assert_close(torch.cat(pieces, dim=2), whole, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- 1-D convolutions


def loop_depthwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """y[b, t, c] = bias[c] + sum_j weight[c, j] x[b, t - k + 1 + j, c], positions before 0 being zero."""
    B, T, C = x.shape
    k = weight.size(-1)
    y = torch.zeros(B, T, C, dtype=x.dtype)
    for t in range(T):
        for j in range(k):
            s = t - k + 1 + j
            if s >= 0:
                y[:, t] = y[:, t] + weight[:, j] * x[:, s]
    return y + bias


def loop_long_conv(z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """y[b, t, c] = sum_{s <= t} h[c, t - s] z[b, s, c]."""
    B, T, C = z.shape
    y = torch.zeros_like(z)
    for t in range(T):
        for s in range(t + 1):
            y[:, t] = y[:, t] + h[:, t - s] * z[:, s]
    return y


@pytest.mark.parametrize("kernel", [1, 4])
def test_causal_depthwise_conv_equals_loop_with_gradients(kernel: int):
    g = torch.Generator().manual_seed(0)
    conv = CausalDepthwiseConv(5, kernel).double()
    x = torch.randn(2, 9, 5, generator=g, dtype=torch.float64)
    w = torch.randn(2, 9, 5, generator=g, dtype=torch.float64)
    weight, bias = conv.weight[:, 0], conv.bias  # (C, k), (C,)
    module = lambda x, weight, bias: functional_call(conv, {"weight": weight[:, None], "bias": bias}, (x,))  # noqa: E731
    for a, b in zip(grads(module, (x, weight, bias), w), grads(loop_depthwise, (x, weight, bias), w)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_conv_in_pieces_with_a_cache_equals_the_whole():
    conv = CausalDepthwiseConv(3, 4).double()
    x = torch.randn(2, 10, 3, dtype=torch.float64)
    cache, pieces = {}, []
    for lo, hi in [(0, 2), (2, 3), (3, 10)]:
        pieces.append(conv(x[:, lo:hi], cache))
    torch.testing.assert_close(torch.cat(pieces, dim=1), conv(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("T", [1, 7, 16])
def test_fft_long_conv_equals_loop_with_gradients(T: int):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, T, 3, generator=g, dtype=torch.float64)
    h = torch.randn(3, T, generator=g, dtype=torch.float64)
    w = torch.randn(2, T, 3, generator=g, dtype=torch.float64)
    for a, b in zip(grads(fft_causal_conv, (z, h), w), grads(loop_long_conv, (z, h), w)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_hyena_equals_its_definition_written_as_loops():
    """y_t = c_proj(q_t * (sum_{s <= t} h_{t-s} z_s + skip * z_t)), z = k * v, q, k, v the short convolution
    of in_proj(x): every piece by the loops above, against the module (float64)."""
    torch.manual_seed(0)
    mixer = Hyena(6, 3, 12, 8, True, 0.0).double()
    x = torch.randn(2, 12, 6, dtype=torch.float64)
    u = mixer.in_proj(x)
    q, k, v = loop_depthwise(u, mixer.short.weight[:, 0], mixer.short.bias).chunk(3, dim=-1)
    z = k * v
    y = q * (loop_long_conv(z, mixer.filter(12)) + mixer.skip * z)
    torch.testing.assert_close(mixer(x), mixer.c_proj(y), rtol=1e-10, atol=1e-12)


def test_gated_conv_gates_the_convolved_values():
    torch.manual_seed(0)
    mixer = GatedConv(4, 3, True, 0.0).double()
    x = torch.randn(2, 8, 4, dtype=torch.float64)
    a, g = loop_depthwise(mixer.in_proj(x), mixer.conv.weight[:, 0], mixer.conv.bias).chunk(2, dim=-1)
    torch.testing.assert_close(mixer(x), mixer.c_proj(a * torch.sigmoid(g)), rtol=1e-12, atol=1e-12)


def test_the_implicit_filters_windows_decay_as_documented():
    """Channel 0 keeps 1% of its weight after 1.5 blocks, the last channel after a tenth of a block."""
    f = ImplicitFilter(16, 1000, 8)
    slow, fast = f.window[0], f.window[-1]
    assert f.window.shape == (16, 1000) and torch.all(f.window[:, 0] == 1)
    torch.testing.assert_close(slow[100] ** 15, torch.tensor(0.01), rtol=1e-3, atol=0)  # 0.01 at t = 1.5 L
    torch.testing.assert_close(fast[100], torch.tensor(0.01), rtol=1e-3, atol=0)       # 0.01 at t = 0.1 L
    assert torch.all(f.window[1:] <= f.window[:-1])  # each channel forgets faster than the one before
