"""report.md and summary.json of a study, and the table printed at its end, in three steps:

    build   the finished runs -> a Report: each arm at each budget (cells), the typed summary with its
            references, the GPT-2 row and the samples (reporting/sections.py: Report)
    plot    the Report -> its figures: curves, frontier, loss by position, accuracy, token images
    render  the Report -> report.md, section by section (reporting/sections.py: SECTIONS)

Every number in report.md comes from the summary (reporting/summary.py), written beside it as
summary.json. Everything is a function of the finished runs and the study file (no dates, cached
samples), so rerunning a finished study rewrites the same bytes.
"""
from __future__ import annotations

import json
from pathlib import Path

from launch.spec import SampleSpec, StudySpec
from reporting.cells import Cell, cells as make_cells
from reporting.inference import OUTPUT_ERRORS, Cache, draw_images, gpt2_reference, sample_text
from reporting.plots import plot_by_position, plot_frontier, plot_sweep, write_curves
from reporting.references import study_reference
from reporting.sections import Figures, Report, main_table, render
from reporting.summary import summarize, to_json
from reporting.sweep import DIFFICULTY, WIDTH, find_sweep, is_synthetic


def write_report(spec: StudySpec, text: str, models: dict[str, str], out_dir: Path, tuning: list,
                 reported: list) -> tuple[Path, str]:
    """Plots, summary.json and report.md in out_dir from the planned runs ({arm: model.name} in models);
    returns the report's path and the main table as text (for the terminal)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build(spec, text, models, tuning, reported, Cache(out_dir / "cache.json"))
    report.figures = plot(report, out_dir)
    (out_dir / "study.toml").write_text(text)
    (out_dir / "summary.json").write_text(json.dumps(to_json(report.summary), indent=1) + "\n")
    path = out_dir / "report.md"
    path.write_text(render(report))
    return path, main_table(report.summary)


def build(spec: StudySpec, text: str, models: dict[str, str], tuning: list, reported: list, cache: Cache) -> Report:
    """Everything the sections read, from the finished runs among the planned ones."""
    names, budgets = [a.name for a in spec.arms], spec.budget.values
    cells = make_cells(names, budgets, tuning, reported, spec.seeds)
    top = [cells[(n, budgets[-1])] for n in names]
    base = pick_baseline(spec, models)
    first = next((c.runs[0] for c in top if c.runs), None)
    ref = study_reference(first.config) if first is not None else None
    summary = summarize(spec, cells, models, base, ref)
    vocab = int(first.config["model"]["vocab_size"]) if first is not None else None
    return Report(spec, text, summary, cells, top, vocab, find_sweep(top),
                  gpt2_row(spec, cells[(base, budgets[-1])], cache), samples(top, spec, cache))


def pick_baseline(spec: StudySpec, models: dict[str, str]) -> str:
    return spec.baseline or next((a.name for a in spec.arms if models.get(a.name) == "gpt"), spec.arms[0].name)


def gpt2_row(spec: StudySpec, base: Cell, cache: Cache) -> tuple[dict | None, str]:
    """Pretrained GPT-2 on the baseline's validation windows when the study asks for it, or why not."""
    if spec.reference != "gpt2":
        return None, "the study file sets reference = \"\""
    if not base.runs:
        return None, "no finished baseline run"
    return gpt2_reference(base.runs[0], cache)


def samples(top: list[Cell], spec: StudySpec, cache: Cache) -> dict[str, tuple[str, str] | str]:
    """{arm: (prompt, continuation) of its first reported seed, or why it has none}."""
    out: dict[str, tuple[str, str] | str] = {}
    for c in (c for c in top if c.runs):
        if is_synthetic(c):
            out[c.arm] = "a synthetic task: no text tokenizer"
            continue
        try:
            out[c.arm] = sample_text(c.runs[0], spec.sample, cache)
        except OUTPUT_ERRORS as e:  # a run without checkpoints still gets its row in the report
            out[c.arm] = f"{type(e).__name__}: {e}"
    return out


def plot(r: Report, out_dir: Path) -> Figures:
    """Every figure of the report, written to out_dir."""
    curves = write_curves(r.top, r.vocab, r.summary.references, r.spec.name, out_dir, acc=r.sweep is not None)
    plot_frontier(r.summary, r.vocab, out_dir / "frontier.png")
    plot_by_position(r.summary, out_dir / "loss_by_position.png")
    return Figures([*curves, "loss_by_position.png"], plot_accuracy(r, out_dir),
                   plot_token_images(r.top, r.spec.sample, out_dir))


def plot_accuracy(r: Report, out_dir: Path) -> list[str]:
    """Final accuracy against each swept difficulty key, and against width at the centre difficulty."""
    if r.sweep is None:
        return []
    names = []
    for key in r.sweep.swept + ([WIDTH] if r.sweep.width_swept else []):
        name = f"val_acc_vs_{'width' if key == WIDTH else key.split('.', 1)[1]}.png"
        what = f"{key} ({DIFFICULTY[key]})" if key in DIFFICULTY else f"width ({key})"
        plot_sweep(r.sweep.slice(key), what, f"{r.spec.name}: final validation accuracy vs {what} (bars: min-max "
                   f"over seeds)", out_dir / name)
        names.append(name)
    return names


def plot_token_images(top: list[Cell], sample: SampleSpec, out_dir: Path) -> dict[str, list[str] | str]:
    """{image arm: its figures on the sample prompt (names relative to out_dir), or why it has none}; the
    GPT and the front-only control paint nothing and have no entry."""
    from reporting.images import NoImages
    out: dict[str, list[str] | str] = {}
    for c in top:
        if not c.runs or is_synthetic(c):
            continue
        try:
            paths = draw_images(c.runs[0], sample, out_dir / "images" / c.arm)
        except NoImages:
            continue
        except OUTPUT_ERRORS as e:  # a run without checkpoints still gets its line
            out[c.arm] = f"{type(e).__name__}: {e}"
            continue
        out[c.arm] = [p.relative_to(out_dir).as_posix() for p in paths]
    return out
