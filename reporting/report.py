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

from launch.spec import StudySpec
from reporting.cells import Cell, cells as make_cells
from reporting.inference import Cache, gpt2_row, sample_arms, token_image_figures
from reporting.plots import plot_accuracy, plot_by_position, plot_frontier, write_curves
from reporting.references import study_reference
from reporting.sections import Figures, Report, main_table, render
from reporting.summary import summarize, to_json
from reporting.sweep import find_sweep


def write_report(spec: StudySpec, text: str, models: dict[str, str], out_dir: Path, tuning: list,
                 reported: list) -> tuple[Path, str]:
    """Plots, summary.json and report.md in out_dir from the planned runs ({arm: model.name} in models);
    returns the report's path and the main table as text (for the terminal)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build(spec, text, models, tuning, reported, out_dir)
    report.figures = plot(report, out_dir)
    (out_dir / "study.toml").write_text(text)
    (out_dir / "summary.json").write_text(json.dumps(to_json(report.summary), indent=1) + "\n")
    path = out_dir / "report.md"
    path.write_text(render(report))
    return path, main_table(report.summary)


def build(spec: StudySpec, text: str, models: dict[str, str], tuning: list, reported: list, out_dir: Path) -> Report:
    """Everything the sections read, from the finished runs among the planned ones (the model outputs
    cached in out_dir)."""
    names, budgets, base = [a.name for a in spec.arms], spec.budget.values, pick_baseline(spec, models)
    cells = make_cells(names, budgets, tuning, reported, spec.seeds)
    top = [cells[(n, budgets[-1])] for n in names]
    first = next((c.runs[0] for c in top if c.runs), None)
    ref = study_reference(first.config) if first is not None else None
    summary = summarize(spec, cells, models, base, ref)
    sweep, cache = find_sweep(top), Cache(out_dir / "cache.json")
    return Report(spec, text, summary, cells, top, sweep,
                  gpt2_row(spec, cells[(base, budgets[-1])], cache), sample_arms(top, spec.sample, cache))


def pick_baseline(spec: StudySpec, models: dict[str, str]) -> str:
    return spec.baseline or next((a.name for a in spec.arms if models.get(a.name) == "gpt"), spec.arms[0].name)


def plot(r: Report, out_dir: Path) -> Figures:
    """Every figure of the report, written to out_dir."""
    curves = write_curves(r.top, r.summary.references, r.spec.name, out_dir, acc=r.sweep is not None)
    plot_frontier(r.summary, out_dir / "frontier.png")
    plot_by_position(r.summary, out_dir / "loss_by_position.png")
    return Figures([*curves, "loss_by_position.png"], plot_accuracy(r.sweep, r.spec.name, out_dir),
                   token_image_figures(r.top, r.spec.sample, out_dir))
