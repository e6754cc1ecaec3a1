"""The study's plots, each drawn from the summary (summary.json) or the finished runs.

- frontier.png: final validation loss against training FLOPs, wall-clock and tokens (three panels,
  log-log), one line per arm over its budgets (mean over seeds), its fitted power law thin, and the
  references (ln V of the dataset's vocabulary, unigram, bigram) for scale: does the gap close or widen?
- val_loss_vs_{flops,time,tokens}.png: the curves of the largest budget's runs (mean, min-max band).
- loss_by_position.png: validation loss at each position of the window: a model that uses its context
  gets better along the window, one that does not stays flat.
- synthetic studies: validation accuracy against tokens, and final accuracy against each swept setting.

Every loss axis spans the losses drawn (a small margin beyond): a reference outside that span is named in
the legend only, so that ln V does not squeeze the arms into a sliver of the plot.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter  # noqa: E402

from reporting.cells import Cell, curve  # noqa: E402
from reporting.references import Reference  # noqa: E402
from reporting.stats import power_law  # noqa: E402
from reporting.summary import Summary  # noqa: E402
from reporting.sweep import DIFFICULTY, WIDTH, Sweep  # noqa: E402

AXES = [  # (metrics key, x label, file name)
    ("flops", "training FLOPs", "val_loss_vs_flops.png"),
    ("time_s", "training wall-clock (s)", "val_loss_vs_time.png"),
    ("tokens", "training tokens", "val_loss_vs_tokens.png"),
]
ACC_LABEL = "validation accuracy (scored tokens)"
LOSS_LABEL = "validation loss (nats/token)"
MARGIN = 1.03  # a loss axis spans the arms' losses and this factor beyond them (log axes: a ratio)


def finish(fig, ax, x_label: str, y_label: str, title: str, path: Path | None = None) -> None:
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    if path is not None:
        save(fig, path)


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no version string: same runs, same bytes
    plt.close(fig)


def reference_lines(ax, refs: Reference | None, span: tuple[float, float] | None = None) -> None:
    """Horizontal lines: a uniform guess over the dataset's vocabulary (ln V), and the unigram and bigram
    models of the same windows. With span (the y-range the axis shows) a reference outside it is named in
    the legend only, so that it does not stretch the axis away from the arms."""
    if refs is None:
        return
    lines = [(f"uniform ln {refs.vocab_size}", refs.uniform, "grey", "--"), ("unigram", refs.unigram, "black", ":"),
             ("bigram", refs.bigram, "black", "-.")]
    for label, value, colour, style in lines:
        text = f"{label} = {value:.3f}"
        if span is None or span[0] <= value <= span[1]:
            ax.axhline(value, color=colour, linestyle=style, linewidth=1, label=text)
        else:  # an empty line: its legend entry only
            ax.plot([], [], color=colour, linestyle=style, linewidth=1,
                    label=f"{text} ({'above' if value > span[1] else 'below'} the axis)")


def loss_span(losses: list[float]) -> tuple[float, float] | None:
    """The y-range of a loss axis that shows these losses with a margin; None without any."""
    return (min(losses) / MARGIN, max(losses) * MARGIN) if losses else None


def span_losses(ax, losses: list[float], refs: Reference | None) -> None:
    """Limit the y-axis to the losses drawn, and draw the references that fall inside it."""
    span = loss_span(losses)
    if span is not None:
        ax.set_ylim(*span)
    reference_lines(ax, refs, span)


def plot_axis(cells: list[Cell], x_key: str, x_label: str, refs: Reference | None, title: str, path: Path,
              y_key: str = "val_loss") -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    drawn = []
    for cell in cells:
        c = curve(cell, x_key, y_key)
        if c is None:
            continue
        x, mean, lo, hi = c
        keep = x > 0  # the untrained point has no place on a log axis
        drawn += lo[keep].tolist() + hi[keep].tolist()
        label = f"{cell.arm} (lr {cell.lr:g}, {len(cell.runs)} seed{'s' if len(cell.runs) > 1 else ''})"
        (line,) = ax.plot(x[keep], mean[keep], marker="o", markersize=3, label=label)
        if len(cell.runs) > 1:
            ax.fill_between(x[keep], lo[keep], hi[keep], color=line.get_color(), alpha=0.2, linewidth=0)
    if y_key == "val_loss":
        span_losses(ax, drawn, refs)
    ax.set_xscale("log")
    finish(fig, ax, x_label, LOSS_LABEL if y_key == "val_loss" else ACC_LABEL, title, path)


def write_curves(cells: list[Cell], refs: Reference | None, study: str, out_dir: Path,
                 acc: bool = False) -> list[str]:
    """The three loss-curve PNGs of the largest budget's cells, and with acc the accuracy curve."""
    names = []
    for key, label, name in AXES:
        plot_axis(cells, key, label, refs, f"{study}: validation loss vs {label} at the largest budget "
                  "(band: min-max over seeds)", out_dir / name)
        names.append(name)
    if acc:
        plot_axis(cells, "tokens", "training tokens", None, f"{study}: validation accuracy vs training tokens "
                  "(band: min-max over seeds)", out_dir / "val_acc_vs_tokens.png", y_key="val_acc")
        names.append("val_acc_vs_tokens.png")
    return names


def plot_frontier(summary: Summary, path: Path) -> None:
    save(frontier_figure(summary), path)


def frontier_figure(summary: Summary):
    """Final loss against each compute axis over the budgets, per arm, with its power-law fit."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), dpi=100)
    for ax, (key, label, _) in zip(axes, AXES):
        losses = []
        for name, arm in summary.arms.items():
            points = [e for e in arm.budgets if e.val_loss is not None and getattr(e, key)]
            if not points:
                continue
            x, y = np.array([getattr(e, key) for e in points]), np.array([e.val_loss for e in points])
            losses += y.tolist()
            style = "--" if arm.control else "-"
            (line,) = ax.plot(x, y, marker="o", markersize=4, linestyle=style, label=name)
            fit = (arm.power_law or {}).get(key)
            if fit and len(points) >= 2:
                xs = np.geomspace(x.min(), x.max(), 20)
                ax.plot(xs, power_law(xs, *fit), color=line.get_color(), linewidth=0.8, alpha=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        span_losses(ax, losses, summary.references)
        ax.yaxis.set_major_formatter(ScalarFormatter())  # losses read as numbers, not powers of ten
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())    # decades only: minor labels overlap
        finish(fig, ax, label, LOSS_LABEL, f"final validation loss vs {label} (thin: power-law fit)")
    return fig


def plot_by_position(summary: Summary, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    losses = []
    for name, arm in summary.arms.items():
        if arm.loss_by_position:
            y = arm.loss_by_position
            losses += y
            ax.plot(range(1, len(y) + 1), y, linestyle="--" if arm.control else "-", label=name)
    span_losses(ax, losses, summary.references)
    ax.set_xscale("log")
    finish(fig, ax, "position in the window (tokens of context)", LOSS_LABEL,
           "validation loss by position at the largest budget (mean over seeds)", path)


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
    finish(fig, ax, x_label, "final " + ACC_LABEL, title, path)


def plot_accuracy(sweep: Sweep | None, study: str, out_dir: Path) -> list[str]:
    """Final accuracy against each swept difficulty key, and against width at the centre difficulty: the
    files' names."""
    if sweep is None:
        return []
    names = []
    for key in sweep.swept + ([WIDTH] if sweep.width_swept else []):
        name = f"val_acc_vs_{'width' if key == WIDTH else key.split('.', 1)[1]}.png"
        what = f"{key} ({DIFFICULTY[key]})" if key in DIFFICULTY else f"width ({key})"
        plot_sweep(sweep.slice(key), what, f"{study}: final validation accuracy vs {what} (bars: min-max "
                   f"over seeds)", out_dir / name)
        names.append(name)
    return names
