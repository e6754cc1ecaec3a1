"""What an image model paints for a text: each token's image a_t, its causally mixed image A_t, and for
idea 2 (mixer attn) the attention weights over the past; as arrays, and drawn into PNG files.

    images = token_images(model, tokenizer, "To be, or not to be", max_tokens=16)
    paths = render(images, out_dir)    # painted.png, mixed.png (+ attention.png for mixer attn)

The arrays are the model's own: forward hooks on each stage's mixer record its input and its output
(a, A) during one ordinary forward pass of the prompt, so a chained model's later stages see exactly
the residual stream they see in training. The attention weights are not returned by the model (it
uses the fused scaled_dot_product_attention); they are recomputed here from the mixer's own query and
key projections (scale 1/sqrt(head size), causal softmax), and tests/test_visualize.py checks that
these weights applied to the values (a, per head) give back the model's A.

Shapes: T tokens shown, C x H x W a token image, nh image heads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from models.mixers import ImageAttention  # noqa: E402


class NoImages(ValueError):
    """The model paints no token images (the GPT, or an image model's front-only control)."""


@dataclass
class StageImages:
    painted: np.ndarray             # (T, C, H, W) a_t: what token t paints
    mixed: np.ndarray               # (T, C, H, W) A_t: what the CNN reads at t (the past mixed causally)
    attention: np.ndarray | None    # (nh, T, T) mixer attn: weight of key s for query t (0 for s > t); else None


@dataclass
class TokenImages:
    ids: list[int]
    labels: list[str]               # each token's text, quoted (whitespace visible)
    model: str                      # model.name
    mixer: str
    stages: list[StageImages]       # one per image stage (n_chain of them in a chained model)


def check_paints_images(model: nn.Module) -> None:
    """NoImages, saying why, unless the model has at least one image stage."""
    name = getattr(model.cfg, "name", type(model).__name__)
    if getattr(model.cfg, "image_stage", True) is False:
        raise NoImages(f"the model is the front-only control of {name} (model.image_stage = false): its front "
                       f"feeds the head directly and it paints no images")
    if not len(getattr(model, "stages", ())):
        from models import MODELS
        from models.image_lm import ImageLM
        image_models = [n for n, e in MODELS.items() if e.builder is ImageLM]
        raise NoImages(f"the model is a {name}, which paints no images (the image models are: "
                       f"{', '.join(image_models)})")


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    """Each token's own text, quoted so that spaces and newlines show (a BPE token that is part of a
    UTF-8 character decodes to U+FFFD)."""
    return [repr(tokenizer.decode([i])) for i in ids]


def attention_weights(mix: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The causal attention weights (B, nh, T, T) of an ImageAttention mixer on its input x (B, T, d)
    (the stage's LayerNorm output): the same q, k as ImageAttention.mix, scale 1/sqrt(hs)."""
    B, T, d = x.shape
    q, k = (t.view(B, T, mix.heads, -1).transpose(1, 2) for t in mix.c_attn(x).split(d, dim=2))  # (B, nh, T, hs)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)


@torch.no_grad()
def mixer_records(model: nn.Module, idx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(mixer input x, a, A) of every image stage, in order, from one forward pass of idx (B, T)."""
    records = []

    def hook(module, args, out):
        records.append((args[0], *out))

    handles = [stage.mix.register_forward_hook(hook) for stage in model.stages]
    try:
        model(idx)
    finally:
        for h in handles:
            h.remove()
    return records


@torch.no_grad()
def token_images(model: nn.Module, tokenizer, text: str, max_tokens: int = 16) -> TokenImages:
    """The images of the first max_tokens tokens of text (at most block_size). The model is causal, so
    they are the same images the model paints for these tokens inside any longer text."""
    check_paints_images(model)
    try:
        ids = tokenizer.encode(text)[:min(max_tokens, model.cfg.block_size)]
    except ValueError as e:  # a character outside a char vocabulary
        raise ValueError(f"{e}; remove or replace it") from None
    if not ids:
        raise ValueError("the text encodes to no tokens; give some text")
    cfg = model.cfg
    shape = (len(ids), cfg.channels, cfg.height, cfg.width)
    idx = torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device)  # (1, T)
    stages = []
    for stage, (x, a, A) in zip(model.stages, mixer_records(model, idx)):
        weights = attention_weights(stage.mix, x)[0] if isinstance(stage.mix, ImageAttention) else None  # (nh, T, T)
        stages.append(StageImages(painted=a[0].float().cpu().numpy().reshape(shape),
                                  mixed=A[0].float().cpu().numpy().reshape(shape),
                                  attention=None if weights is None else weights.float().cpu().numpy()))
    return TokenImages(ids=list(ids), labels=token_labels(tokenizer, ids), model=cfg.name, mixer=cfg.mixer,
                       stages=stages)


def plot_token_images(images: np.ndarray, labels: list[str], title: str, path: Path) -> Path:
    """A grid: one row per token (its text on the left), one column per channel; one colour scale per
    row, symmetric about 0 (red positive, blue negative), with its colour bar."""
    T, C = images.shape[:2]
    fig, axes = plt.subplots(T, C, figsize=(1.1 * C + 2.4, 1.1 * T + 0.9), squeeze=False, layout="constrained")
    for t in range(T):
        scale = float(np.abs(images[t]).max()) or 1.0
        for c in range(C):
            ax = axes[t, c]
            im = ax.imshow(images[t, c], cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if t == 0:
                ax.set_title(f"ch {c}", fontsize=8)
        axes[t, 0].set_ylabel(f"{t}: {labels[t][:14]}", rotation=0, ha="right", va="center", fontsize=8)
        fig.colorbar(im, ax=axes[t, :], shrink=0.9, pad=0.01, aspect=8).ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_attention(weights: np.ndarray, labels: list[str], title: str, path: Path) -> Path:
    """One heatmap per head: row t is query token t's weights over the keys s <= t (blank above the
    diagonal, where the future is masked); one colour scale, 0 to 1, for all heads."""
    nh, T = weights.shape[:2]
    cols = min(nh, 4)
    rows = -(-nh // cols)
    side = 0.28 * T + 1.6
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 1, side * rows + 0.6), squeeze=False,
                             layout="constrained")
    masked = np.where(np.tri(T, dtype=bool), weights, np.nan)  # (nh, T, T)
    short = [f"{lab[:8]}" for lab in labels]
    for h, ax in enumerate(axes.flat):
        if h >= nh:
            ax.axis("off")
            continue
        im = ax.imshow(masked[h], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"head {h}", fontsize=9)
        ax.set_xticks(range(T), short, rotation=90, fontsize=6)
        ax.set_yticks(range(T), short, fontsize=6)
        ax.set_xlabel("key (past token)", fontsize=7)
        ax.set_ylabel("query token", fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.8, label="attention weight")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def render(images: TokenImages, out_dir: str | Path) -> list[Path]:
    """Write painted.png and mixed.png (and attention.png for mixer attn) for each stage (file names
    get _stage<k> when there are several); returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, stage in enumerate(images.stages):
        suffix = f"_stage{k}" if len(images.stages) > 1 else ""
        where = f"{images.model}, mixer {images.mixer}" + (f", stage {k}" if suffix else "")
        paths.append(plot_token_images(stage.painted, images.labels, f"painted images a_t ({where})",
                                       out_dir / f"painted{suffix}.png"))
        paths.append(plot_token_images(stage.mixed, images.labels, f"causally mixed images A_t, what the CNN "
                                       f"reads ({where})", out_dir / f"mixed{suffix}.png"))
        if stage.attention is not None:
            paths.append(plot_attention(stage.attention, images.labels, f"attention weights over the past ({where})",
                                        out_dir / f"attention{suffix}.png"))
    return paths
