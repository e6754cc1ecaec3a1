"""What an image model paints for a text: each token's image a_t, its causally mixed image A_t, and for
idea 2 (image_attn) the attention weights over the past; as arrays, and drawn into PNG files.

    images = token_images(model, tokenizer, "To be, or not to be", max_tokens=16)
    paths = render(images, out_dir)    # painted.png, mixed.png (+ attention.png for image_attn)

The arrays are the model's own: each image block records them during one ordinary forward pass of the
prompt through the model contract (models.tracing), so a chained model's later blocks see exactly the
residual stream they see in training; tests/test_visualize.py checks them against a forward pass
computed apart, and that idea 2's weights applied to the painted images give back the mixed ones.

Shapes: T tokens shown, C x H x W a token image, nh image heads.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from models import MIXERS, tracing  # noqa: E402


class NoImages(ValueError):
    """The model paints no token images (the GPT, or an image model's front-only control)."""


@dataclass
class StageImages:
    layer: int                      # the block that paints them
    mixer: str                      # its token mixer (image_sum, image_attn, ...)
    painted: np.ndarray             # (T, C, H, W) a_t: what token t paints
    mixed: np.ndarray               # (T, C, H, W) A_t: what the CNN reads at t (the past mixed causally)
    attention: np.ndarray | None    # (nh, T, T) image_attn: weight of key s for query t (0 for s > t); else None


@dataclass
class TokenImages:
    ids: list[int]
    labels: list[str]               # each token's text, quoted (whitespace visible)
    model: str                      # model.name
    stages: list[StageImages]       # one per image block (n_chain of them in a chained model)


def image_layers(model: nn.Module) -> list[int]:
    return [i for i, layer in enumerate(model.cfg.layers()) if layer.mixer.startswith("image_")]


def check_paints_images(model: nn.Module) -> None:
    """NoImages, saying why, unless the model has at least one image block."""
    name = model.cfg.name
    if getattr(model.cfg, "image_stage", True) is False:
        raise NoImages(f"the model is the front-only control of {name} (model.image_stage = false): its front "
                       f"feeds the head directly and it paints no images")
    if not image_layers(model):
        raise NoImages(f"the model ({name}, layers {', '.join(layer.mixer for layer in model.cfg.layers())}) has "
                       f"no image block (the image mixers are: {', '.join(m for m in MIXERS if m.startswith('image_'))})")


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    """Each token's own text, quoted so that spaces and newlines show (a BPE token that is part of a
    UTF-8 character decodes to U+FFFD)."""
    return [repr(tokenizer.decode([i])) for i in ids]


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
    with tracing(model) as records:
        model(idx)
    layers = cfg.layers()
    stages = []
    for i in image_layers(model):
        record = records[f"h.{i}.mixer"]
        weights = record.get("attention")  # (1, nh, T, T) for image_attn
        stages.append(StageImages(layer=i, mixer=layers[i].mixer,
                                  painted=record["painted"][0].float().cpu().numpy().reshape(shape),
                                  mixed=record["mixed"][0].float().cpu().numpy().reshape(shape),
                                  attention=None if weights is None else weights[0].float().cpu().numpy()))
    return TokenImages(ids=list(ids), labels=token_labels(tokenizer, ids), model=cfg.name, stages=stages)


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
    """Write painted.png and mixed.png (and attention.png for image_attn) for each image block (file names
    get _stage<k> when there are several); returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, stage in enumerate(images.stages):
        suffix = f"_stage{k}" if len(images.stages) > 1 else ""
        where = f"{images.model}, layer {stage.layer}: {stage.mixer}"
        paths.append(plot_token_images(stage.painted, images.labels, f"painted images a_t ({where})",
                                       out_dir / f"painted{suffix}.png"))
        paths.append(plot_token_images(stage.mixed, images.labels, f"causally mixed images A_t, what the CNN "
                                       f"reads ({where})", out_dir / f"mixed{suffix}.png"))
        if stage.attention is not None:
            paths.append(plot_attention(stage.attention, images.labels, f"attention weights over the past ({where})",
                                        out_dir / f"attention{suffix}.png"))
    return paths
