"""The study's plots. Validation loss against the three meanings of equal compute (training FLOPs,
wall-clock, tokens): one line per arm (mean over seeds) with a min-max band, log x, and the loss of a
uniform guess (ln V) for scale; the untrained point (x = 0) has no place on a log axis and is left out.
On synthetic tasks also validation accuracy against tokens, and final accuracy against each swept
difficulty key and width (log2 x: the sweeps double).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter  # noqa: E402

from analysis.results import ArmSummary, curve  # noqa: E402

AXES = [  # (metrics key, x label, file name)
    ("flops", "training FLOPs", "val_loss_vs_flops.png"),
    ("time_s", "training wall-clock (s)", "val_loss_vs_time.png"),
    ("tokens", "training tokens", "val_loss_vs_tokens.png"),
]
ACC_LABEL = "validation accuracy (scored tokens)"


def save(fig, ax, x_label: str, y_label: str, title: str, path: Path) -> None:
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no version string: same runs, same bytes
    plt.close(fig)


def plot_axis(arms: list[ArmSummary], x_key: str, x_label: str, vocab: int | None, title: str,
              path: Path, y_key: str = "val_loss") -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for arm in arms:
        c = curve(arm, x_key, y_key)
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
    save(fig, ax, x_label, "validation loss (nats/token)" if y_key == "val_loss" else ACC_LABEL, title, path)


def write_plots(arms: list[ArmSummary], vocab: int | None, study: str, out_dir: Path, acc: bool = False) -> list[str]:
    """The three loss PNGs in out_dir, and with acc the accuracy curve; returns their file names."""
    names = []
    for key, label, name in AXES:
        plot_axis(arms, key, label, vocab, f"{study}: validation loss vs {label} (band: min-max over seeds)",
                  out_dir / name)
        names.append(name)
    if acc:
        plot_axis(arms, "tokens", "training tokens", None, f"{study}: validation accuracy vs training tokens "
                  "(band: min-max over seeds)", out_dir / "val_acc_vs_tokens.png", y_key="val_acc")
        names.append("val_acc_vs_tokens.png")
    return names


def plot_sweep(lines: dict[str, list[tuple]], x_label: str, title: str, path: Path) -> None:
    """Final accuracy against one setting: {line: [(x, mean, min, max)]}, bars min-max over seeds."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    xs = sorted({p[0] for points in lines.values() for p in points})
    for label, points in lines.items():
        x, mean, lo, hi = zip(*points)
        ax.errorbar(x, mean, yerr=[[m - l for m, l in zip(mean, lo)], [h - m for m, h in zip(mean, hi)]],
                    marker="o", markersize=4, capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(xs))  # the swept values themselves, written plainly
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_ylim(-0.03, 1.03)
    save(fig, ax, x_label, "final " + ACC_LABEL, title, path)
