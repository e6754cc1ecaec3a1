"""init_from=gpt2: OpenAI's GPT-2 weights (through Hugging Face transformers) copied into our GPT.

Our module names follow GPT-2, so the copy is key by key: `emb.wte` <- `transformer.wte`, `h.N...`
<- `transformer.h.N...` (our block's token mixer is `mixer` where GPT-2's is `attn`), `ln_f` <-
`transformer.ln_f`, `lm_head` <- `lm_head` (tied to wte in both).
HF stores c_attn, c_proj and c_fc as Conv1D, whose weight is (in, out): the transpose of nn.Linear's.

Vocabulary: the loaded GPT keeps GPT-2's 50257 tokens rather than padding to 50304. Padded rows
would be zero, giving 47 non-tokens a logit of exactly 0: sampleable, undecodable and counted in the
softmax. Unpadded, our logits equal HF's exactly; the cost is a slightly slower head matmul.
"""
from __future__ import annotations

import os
import socket

import torch

from models import LM, LMConfig, config_class

# Shapes of the released checkpoints (n_layer, n_head, n_embd); all have vocab 50257, block 1024, biases.
SHAPES = {
    "gpt2": (12, 12, 768),          # 124M
    "gpt2-medium": (24, 16, 1024),  # 350M
    "gpt2-large": (36, 20, 1280),   # 774M
    "gpt2-xl": (48, 25, 1600),      # 1558M
}
GPT2_VOCAB, GPT2_BLOCK = 50257, 1024
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # HF names
BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older transformers, not weights


class HFLoadError(RuntimeError):
    """GPT-2 weights that cannot be had or do not fit our GPT; the message says why and what to do."""


def config_from_hf(hf_config, dropout: float = 0.0) -> LMConfig:
    """Our "gpt" config for a transformers GPT2Config, refusing variants our GPT does not compute."""
    c = hf_config
    problems = []
    if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):  # our MLP: GELU, tanh approximation
        problems.append(f"activation_function={c.activation_function!r} (need gelu_new)")
    if getattr(c, "n_inner", None) not in (None, 4 * c.n_embd):
        problems.append(f"n_inner={c.n_inner} (need 4 * n_embd = {4 * c.n_embd})")
    if abs(c.layer_norm_epsilon - 1e-5) > 1e-12:  # nn.LayerNorm's default eps
        problems.append(f"layer_norm_epsilon={c.layer_norm_epsilon} (need 1e-5)")
    if not getattr(c, "tie_word_embeddings", True):
        problems.append("tie_word_embeddings=False (our lm_head is tied to wte)")
    if not getattr(c, "scale_attn_weights", True) or getattr(c, "scale_attn_by_inverse_layer_idx", False):
        problems.append("non-standard attention scaling (need 1/sqrt(head size))")
    if problems:
        raise HFLoadError("this GPT-2 variant does not fit our GPT: " + "; ".join(problems))
    return config_class("gpt")(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer,
                     n_head=c.n_head, n_embd=c.n_embd, dropout=dropout, bias=True)


def hf_key(key: str) -> str:
    """The HF state-dict key holding our parameter `key`."""
    if key.startswith("emb."):
        return "transformer." + key.removeprefix("emb.")
    if key.startswith("h."):
        return "transformer." + key.replace(".mixer.", ".attn.")
    if key.startswith("ln_f."):
        return "transformer." + key
    return key  # lm_head.weight has the same name in both


def copy_hf_state(model: LM, hf_state: dict[str, torch.Tensor]) -> None:
    """Copy an HF GPT-2 state dict into `model`, after checking that every key maps exactly once.

    All checks run before the first copy, so a failure leaves `model` untouched.
    """
    theirs = {k: v for k, v in hf_state.items() if not k.endswith(BUFFERS)}
    if "lm_head.weight" not in theirs and "transformer.wte.weight" in theirs:
        theirs["lm_head.weight"] = theirs["transformer.wte.weight"]  # a tied head may be saved once
    ours = model.state_dict()  # emb.wte.weight and lm_head.weight: two names, one tied tensor
    mapping = {k: hf_key(k) for k in ours}
    assert len(set(mapping.values())) == len(mapping), "two of our keys map to one HF key"
    missing = sorted(set(mapping.values()) - theirs.keys())
    unexpected = sorted(theirs.keys() - set(mapping.values()))
    if missing or unexpected:
        raise HFLoadError(f"GPT-2 state dict does not match our GPT: missing {missing or 'none'}, "
                          f"unexpected {unexpected or 'none'}")
    sources = {}
    for key, their_key in mapping.items():
        w = theirs[their_key]
        transposed = their_key.endswith(TRANSPOSED)
        if transposed:
            w = w.t()  # Conv1D (in, out) -> Linear (out, in)
        if w.shape != ours[key].shape:
            raise HFLoadError(f"shape mismatch: our {key} is {tuple(ours[key].shape)}, HF {their_key} gives "
                              f"{tuple(w.shape)}{' after transposing' if transposed else ''}")
        sources[key] = w
    if not torch.equal(sources["lm_head.weight"], sources["emb.wte.weight"]):
        raise HFLoadError("HF lm_head.weight differs from transformer.wte.weight; our GPT ties them")
    with torch.no_grad():
        for key, w in sources.items():
            ours[key].copy_(w)  # copy_ casts dtype and device; the tied tensor is written twice, same values


def _download(model_type: str):
    try:
        from transformers import GPT2LMHeadModel
    except ImportError as e:
        raise HFLoadError(f"init_from={model_type} needs the transformers package: pip install transformers") from e
    try:
        return GPT2LMHeadModel.from_pretrained(model_type)
    except OSError as e:  # what transformers raises for no network and no cached copy (and for disk errors)
        raise HFLoadError(
            f"could not download the {model_type} weights from the Hugging Face hub ({str(e).splitlines()[0]}). "
            f"Run once with internet access to fill the cache, then set HF_HUB_OFFLINE=1 to use the cached copy; "
            f"or train from scratch with --train.init_from=scratch") from e


def load_hf_gpt2(model_type: str = "gpt2", hf_model=None, *, dropout: float = 0.0) -> LM:
    """A GPT (on CPU, float32, train mode like any freshly built model) holding GPT-2's weights.

    hf_model: an already built transformers GPT2LMHeadModel; its own config gives the shapes (so
    tests can pass a tiny random one offline) and model_type is ignored. Without it, the released
    `model_type` checkpoint is downloaded (or read from the HF cache).
    """
    if hf_model is None:
        if model_type not in SHAPES:
            raise ValueError(f"unknown GPT-2 model_type {model_type!r}; choices: {', '.join(SHAPES)}")
        hf_model = _download(model_type)
        c = hf_model.config
        got = (c.n_layer, c.n_head, c.n_embd, c.vocab_size, c.n_positions)
        if got != (*SHAPES[model_type], GPT2_VOCAB, GPT2_BLOCK):
            raise HFLoadError(f"{model_type} checkpoint has (n_layer, n_head, n_embd, vocab, block) = {got}, "
                              f"expected {(*SHAPES[model_type], GPT2_VOCAB, GPT2_BLOCK)}")
    cfg = config_from_hf(hf_model.config, dropout)
    cfg.validate()
    model = LM(cfg)
    copy_hf_state(model, hf_model.state_dict())
    return model


def offline_unless_hub_reachable(timeout: float = 3.0) -> None:
    """Without a route to the Hugging Face hub, switch its client to offline mode (the local cache only)
    before it is imported: it would otherwise retry for half a minute before failing."""
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return  # already decided, or a proxy that a direct probe cannot judge
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"
