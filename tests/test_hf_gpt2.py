"""load_hf_gpt2 offline: a tiny random transformers GPT-2 must give our GPT the same weights and logits."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from models.hf_gpt2 import TRANSPOSED, HFLoadError, hf_key, load_hf_gpt2  # noqa: E402


def tiny_hf(vocab_size: int = 50257, seed: int = 0, **overrides) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    kwargs = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=vocab_size,
                  bos_token_id=0, eos_token_id=0, activation_function="gelu_new",  # GPT-2's tanh GELU
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    cfg = GPT2Config(**(kwargs | overrides))
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # HF zero-initialises biases and sets LayerNorms to 1/0: randomise so a swap shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(0.0, 0.1).add_(1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.0)
    return model


class FakeHF:
    """Stands in for a GPT2LMHeadModel whose state dict has been tampered with."""

    def __init__(self, hf: GPT2LMHeadModel, state: dict):
        self.config, self._state = hf.config, state

    def state_dict(self) -> dict:
        return self._state


@pytest.mark.parametrize("vocab_size", [50257, 100])
def test_same_weights_and_logits(vocab_size):
    hf = tiny_hf(vocab_size)
    ours = load_hf_gpt2(hf_model=hf).eval()
    c = ours.cfg
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size, c.bias) == (2, 2, 32, 64, vocab_size, True)
    assert ours.lm_head.weight is ours.emb.wte.weight, "the head must stay tied"
    theirs = hf.state_dict()
    for key, p in ours.state_dict().items():
        w = theirs[hf_key(key)]
        assert torch.equal(p, w.t() if hf_key(key).endswith(TRANSPOSED) else w), key
    idx = torch.randint(0, vocab_size, (3, 64), generator=torch.Generator().manual_seed(1))  # (3, T) full block
    with torch.no_grad():
        expected = hf(idx).logits  # (3, T, V)
        got, _ = ours(idx)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), (got - expected).abs().max()


def test_old_mask_buffers_are_skipped():
    hf = tiny_hf(100)
    state = dict(hf.state_dict())
    state["transformer.h.0.attn.bias"] = torch.ones(1, 1, 64, 64)  # what transformers < 4.40 kept
    state["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    ours = load_hf_gpt2(hf_model=FakeHF(hf, state))
    assert torch.equal(ours.h[0].mixer.c_attn.bias, hf.transformer.h[0].attn.c_attn.bias)


@pytest.mark.parametrize("tamper, match", [
    (lambda s: s.pop("transformer.h.1.mlp.c_fc.bias"), r"missing \['transformer.h.1.mlp.c_fc.bias'\]"),
    (lambda s: s.update({"transformer.h.2.ln_1.weight": torch.ones(32)}), r"unexpected \['transformer.h.2.ln_1.weight'\]"),
    (lambda s: s.update({"transformer.h.0.mlp.c_fc.weight": torch.zeros(128, 32)}),
     r"shape mismatch: our h.0.mlp.c_fc.weight is \(128, 32\), HF transformer.h.0.mlp.c_fc.weight gives \(32, 128\)"),
    (lambda s: s.update({"transformer.wpe.weight": torch.zeros(32, 32)}), r"our emb.wpe.weight is \(64, 32\)"),
    (lambda s: s.update({"lm_head.weight": torch.zeros(100, 32)}), "ties them"),
])
def test_bad_state_dict_raises_a_clear_error(tamper, match):
    hf = tiny_hf(100)
    state = dict(hf.state_dict())
    tamper(state)
    with pytest.raises(HFLoadError, match=match):
        load_hf_gpt2(hf_model=FakeHF(hf, state))


def test_a_variant_our_gpt_cannot_compute_is_refused():
    with pytest.raises(HFLoadError, match="activation_function"):
        load_hf_gpt2(hf_model=tiny_hf(100, activation_function="relu"))
    with pytest.raises(HFLoadError, match="n_inner"):
        load_hf_gpt2(hf_model=tiny_hf(100, n_inner=64))


def test_unknown_model_type_and_failed_download(monkeypatch):
    with pytest.raises(ValueError, match="gpt2-medium"):
        load_hf_gpt2("gpt3")

    def offline(name, *args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(GPT2LMHeadModel, "from_pretrained", staticmethod(offline))
    with pytest.raises(HFLoadError, match="could not download the gpt2-xl weights.*HF_HUB_OFFLINE.*init_from=scratch"):
        load_hf_gpt2("gpt2-xl")
    monkeypatch.setattr(GPT2LMHeadModel, "from_pretrained", staticmethod(lambda name, *a, **k: tiny_hf(100)))
    with pytest.raises(HFLoadError, match=r"expected \(12, 12, 768, 50257, 1024\)"):
        load_hf_gpt2("gpt2")  # a download that is not what model_type promised
