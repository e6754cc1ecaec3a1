"""Validation loss against the three meanings of equal compute: training FLOPs, wall-clock, tokens.

One line per arm (mean over seeds) with a min-max band, log x, and the loss of a uniform guess
(ln V) for scale. The untrained point (x = 0) has no place on a log axis and is left out.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from analysis.results import ArmSummary, curve  # noqa: E402

AXES = [  # (metrics key, x label, file name)
    ("flops", "training FLOPs", "val_loss_vs_flops.png"),
    ("time_s", "training wall-clock (s)", "val_loss_vs_time.png"),
    ("tokens", "training tokens", "val_loss_vs_tokens.png"),
]


def plot_axis(arms: list[ArmSummary], x_key: str, x_label: str, vocab: int | None, title: str,
              path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for arm in arms:
        c = curve(arm, x_key)
        if c is None:
            continue
        x, mean, lo, hi = c
        keep = x > 0
        label = f"{arm.name} (lr {arm.lr:g}, {len(arm.runs)} seed{'s' if len(arm.runs) > 1 else ''})"
        (line,) = ax.plot(x[keep], mean[keep], marker="o", markersize=3, label=label)
        if len(arm.runs) > 1:
            ax.fill_between(x[keep], lo[keep], hi[keep], color=line.get_color(), alpha=0.2, linewidth=0)
    if vocab:
        ax.axhline(math.log(vocab), color="grey", linestyle="--", linewidth=1,
                   label=f"uniform guess ln({vocab}) = {math.log(vocab):.2f}")
    ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no version string: same runs, same bytes
    plt.close(fig)


def write_plots(arms: list[ArmSummary], vocab: int | None, study: str, out_dir: Path) -> list[str]:
    """The three PNGs in out_dir; returns their file names (for the report)."""
    names = []
    for key, label, name in AXES:
        plot_axis(arms, key, label, vocab, f"{study}: validation loss vs {label} (band: min-max over seeds)",
                  out_dir / name)
        names.append(name)
    return names
