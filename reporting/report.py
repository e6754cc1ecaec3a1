"""report.md and summary.json of a study, and the table printed at its end.

Every number in report.md comes from the summary (reporting/summary.py), written beside it as
summary.json. Everything is a function of the finished runs and the study file (no dates, cached
samples), so rerunning a finished study rewrites the same bytes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from engine.setup import tokens_per_step
from launch.spec import StudySpec
from reporting.cells import Cell, cells as make_cells
from reporting.inference import Cache, draw_images, gpt2_reference, sample_text
from reporting.plots import plot_by_position, plot_frontier, plot_sweep, write_curves
from reporting.references import Reference, study_reference
from reporting.summary import ArmSummary, Summary, summarize, to_json
from reporting.sweep import DIFFICULTY, WIDTH, Sweep, acc_table, find_sweep, is_synthetic

BUDGET_WORDS = {"flops": "training FLOPs", "time_s": "seconds of training wall-clock (evaluation excluded)",
                "tokens": "training tokens", "iters": "optimizer steps"}
AXIS_WORDS = {"flops": "FLOPs", "time_s": "wall-clock", "tokens": "tokens"}


def na(value, fmt: Callable[[float], str] = lambda v: f"{v:.4f}") -> str:
    return "n/a" if value is None else fmt(value)


def ci(pair: list[float] | None) -> str:
    return "n/a" if pair is None else f"[{pair[0]:.3f}, {pair[1]:.3f}]"


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def results_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """The main table: every arm at the largest budget."""
    header = ["arm", "role", "lr", "seeds", "parameters", "FLOPs/token", "tokens seen", "train time (s)",
              "val loss", "95% CI", "eval SE", "bits/byte", "minus bigram", f"Δ vs {summary.baseline}",
              "Δ 95% CI", "loss, first quarter", "loss, last quarter", "tokens/s", "MFU"]
    acc = any(arm.top.val_acc is not None for arm in summary.arms.values())
    recompute = any((arm.hardware_flops_per_token or 0) > (arm.flops_per_token or 0) for arm in summary.arms.values())
    header += (["hardware FLOPs/token"] if recompute else []) + (["val acc"] if acc else [])
    rows = []
    for name, arm in summary.arms.items():
        e = arm.top
        lr = na(e.lr, lambda v: f"{v:g}") + (" (edge)" if e.lr_at_edge else "")
        rows.append([name, arm.role(name, summary.baseline), lr, str(len(e.seeds)),
                     na(arm.parameters, lambda v: f"{v:,}"), na(arm.flops_per_token, lambda v: f"{v:.4g}"),
                     na(e.tokens, lambda v: f"{round(v):,}"), na(e.time_s, lambda v: f"{v:.1f}"),
                     na(e.val_loss), ci(e.val_loss_ci95), na(e.eval_se),
                     na(e.bits_per_byte), na(e.margin_to_bigram, lambda v: f"{v:+.3f}"),
                     na(e.delta_vs_baseline, lambda v: f"{v:+.3f}"), ci(e.delta_vs_baseline_ci95),
                     na(e.loss_first_quarter), na(e.loss_last_quarter),
                     na(arm.tokens_per_s, lambda v: f"{v:.4g}"), na(arm.mfu, lambda v: f"{100 * v:.1f}%")]
                    + ([na(arm.hardware_flops_per_token, lambda v: f"{v:.4g}")] if recompute else [])
                    + ([na(e.val_acc)] if acc else []))
    return header, rows


def results_section(summary: Summary, spec: StudySpec, gpt2: tuple[dict | None, str]) -> list[str]:
    header, rows = results_rows(summary)
    top = summary.budgets[-1]
    lines = [f"## Results at the largest budget ({top:g} {BUDGET_WORDS[summary.budget_kind]})", ""]
    lines += table(rows, header) + [""]
    lines.append("Means over the reported seeds. The 95% intervals are percentile bootstraps over seeds and "
                 "evaluation windows (every arm is scored on the same windows, and seed s gives every arm the same "
                 "data order, so differences are paired); eval SE is the standard error of one run's loss over its "
                 "windows (the evaluation noise). Bits per byte = nats/token x tokens / (bytes x ln 2) of the "
                 "scored text. The first and last quarter are the mean loss at positions 1..T/4 and 3T/4..T of the "
                 "window: a model that uses its context gets better along the window. '(edge)': the chosen lr is "
                 "at the edge of its grid, so the optimum may lie outside it. FLOPs are model FLOPs (counted per "
                 "model, equal for any hardware); hardware FLOPs add what activation checkpointing recomputes.")
    value, why = gpt2
    if spec.reference == "gpt2":
        lines += ["", "Pretrained GPT-2 (124M, OpenAI's weights, not trained here) on the baseline's validation "
                  "windows: " + (f"{value['loss']:.4f} nats/token." if value else f"skipped ({why}).")]
    return lines + [""]


def references_section(refs: Reference | None, vocab: int | None) -> list[str]:
    if refs is None:
        return []
    rows = [[name, f"{value:.4f}", na(bits)] for name, value, bits in [
        ("uniform", refs.uniform, refs.uniform_bits_per_byte), ("unigram", refs.unigram, refs.unigram_bits_per_byte),
        ("bigram", refs.bigram, refs.bigram_bits_per_byte)]]
    return ["## References", "",
            f"Cross-entropy of simple models on exactly the validation windows the arms are scored on ({refs.tokens:,} "
            f"tokens, {refs.bytes:,} bytes of text): a uniform guess over the {vocab} ids (ln V), the unigram "
            "model of the train split (add-one smoothing) and its bigram model (interpolated Witten-Bell). A model "
            "at the unigram level has learned nothing about mixing tokens; one above the bigram uses at most the "
            "previous token.", ""] + table(rows, ["reference", "nats/token", "bits/byte"]) + [""]


def verdict_section(summary: Summary) -> list[str]:
    """One sentence per subject arm where the interval of its difference to the baseline excludes zero."""
    base, kind = summary.baseline, summary.budget_kind
    lines = ["## Verdict", ""]
    for name, arm in summary.arms.items():
        if name == base or arm.control:
            continue
        e = arm.top
        interval = e.delta_vs_baseline_ci95
        if interval is None or interval[0] <= 0 <= interval[1]:
            lines.append(f"- {name}: no claim: the 95% interval of its difference to {base} "
                         f"({ci(interval)}) includes zero or is missing.")
            continue
        word = "worse" if e.delta_vs_baseline > 0 else "better"
        m = arm.compute_multiplier or []
        mixing = mixing_clause(arm)
        trend = ""
        if len(m) >= 2 and m[0] and m[-1]:
            trend = (f"; the compute multiplier goes from {m[0]:.3g} to {m[-1]:.3g} over the budgets, so the gap "
                     f"{'widens' if m[-1] < m[0] else 'closes'} with compute" if abs(m[-1] / m[0] - 1) > 0.1
                     else "; the compute multiplier stays about constant over the budgets")
        lines.append(f"- {name} is {word} than {base} at {e.budget:g} {BUDGET_WORDS[kind]} by "
                     f"{abs(e.delta_vs_baseline):.3f} nats/token (95% CI {ci(interval)}){trend}.{mixing}")
    return lines + [""]


def mixing_clause(arm: ArmSummary) -> str:
    """What the arm's token mixer adds against the same block without mixing, where the study has it."""
    interval = arm.top.delta_vs_mixing_ci95
    if not arm.mixing or interval is None:
        return ""
    d = arm.top.delta_vs_mixing
    if interval[0] <= 0 <= interval[1]:
        return (f" Its mixer adds nothing measurable over the same block without mixing ({arm.mixing}: "
                f"{d:+.3f} nats/token, 95% CI {ci(interval)}).")
    return (f" Against the same block without mixing ({arm.mixing}) its mixer {'helps' if d < 0 else 'hurts'} by "
            f"{abs(d):.3f} nats/token (95% CI {ci(interval)}).")


def scaling_section(summary: Summary) -> list[str]:
    budgets = summary.budgets
    rows = []
    for name, arm in summary.arms.items():
        by_budget = {e.budget: e for e in arm.budgets}
        losses = [na(by_budget[b].val_loss) for b in budgets]
        fit = (arm.power_law or {}).get("flops")
        mult = arm.compute_multiplier_by_axis or {}
        cells = [" / ".join(na(v, lambda x: f"{x:.3g}") for v in mult.get(axis, [None] * len(budgets)))
                 if mult else "baseline" for axis in ("flops", "time_s", "tokens")]
        rows.append([name, *losses, na(fit[1] if fit else None, lambda v: f"{v:.3f}"), *cells])
    header = ["arm", *[f"loss at {b:g}" for b in budgets], "power-law exponent (FLOPs)",
              *[f"multiplier ({AXIS_WORDS[a]}), by budget" for a in ("flops", "time_s", "tokens")]]
    return ["## Loss against compute", "",
            "Final validation loss at each budget (mean over seeds), the exponent b of a power law L = a C^-b fitted "
            "to it, and the compute multiplier: how many times the arm's compute (FLOPs, wall-clock or tokens) the "
            f"baseline ({summary.baseline}) needs to reach the arm's loss, read off the baseline's own power law. "
            "Below 1 the baseline is more efficient; a multiplier that falls with the budget means the gap widens "
            "with compute. Outside the baseline's measured losses the law is extrapolated.", ""] + table(rows, header) + [
            "", "![frontier.png](frontier.png)", ""]


def health_section(summary: Summary) -> list[str]:
    rows = []
    for name, arm in summary.arms.items():
        e, share = arm.top, arm.front_gradient_share
        rows.append([name, na(e.margin_to_bigram, lambda v: f"{v:+.3f}"),
                     (na(e.delta_vs_front, lambda v: f"{v:+.3f}") + " " + ci(e.delta_vs_front_ci95)) if arm.front else "—",
                     na(e.front_equal_tokens, lambda v: f"{v:+.3f}") if arm.front else "—",
                     (na(e.delta_vs_mixing, lambda v: f"{v:+.3f}") + " " + ci(e.delta_vs_mixing_ci95))
                     if arm.mixing else "—",
                     f"{share[0]:.3f} → {share[1]:.3f}" if share else "n/a", "; ".join(arm.health) or "ok"])
    return ["## Training health", "",
            "An arm that sits at the unigram level, or that is worse than its own front (the same embedding and "
            "warm-up without the image stage) at equal tokens, shows a defect before it shows a result; worse at "
            "equal FLOPs only, its block costs more than it adds. 'Equal tokens' reads the front's loss at the "
            "arm's token count off the front's budgets (interpolated in log tokens). 'Δ vs no mixing' is the arm "
            "against the same block with its mixer replaced by none: what the mixer adds. The gradient share is "
            "the norm of the gradient reaching the embedding and front blocks over the whole gradient norm, at the "
            "first and last logged step (metrics.jsonl keeps every component's norm).", ""] + table(
        rows, ["arm", "minus bigram", "Δ vs its front, equal FLOPs [95% CI]", "Δ vs its front, equal tokens",
               "Δ vs no mixing [95% CI]", "front gradient share", "flags"]) + [""]


def lr_section(cells: dict[tuple[str, float], Cell], spec: StudySpec) -> list[str]:
    tuned = [c for c in cells.values() if c.grid and c.tuned_at == c.budget]
    rows = [[c.arm, f"{c.budget:g}", f"{g.lr:g}", na(g.loss), str(g.finished) + (f" ({g.diverged} diverged)" if
            g.diverged else ""), ("**chosen**" + (" (edge)" if c.at_edge else "")) if g.lr == c.lr else ""]
            for c in tuned for g in c.grid]
    if not rows:
        return []
    on = (f"the tuning seeds {spec.tune_seeds}, disjoint from the reported seeds {spec.seeds}" if spec.tune_seeds
          else "the reported seeds themselves (no tune_seeds: an optimistic choice)")
    carried = (f" Budgets above {spec.tune_budget:g} take the lr chosen at {spec.tune_budget:g} (tune_budget); the "
               f"table shows how much the choice moves between the tuned budgets." if spec.tune_budget
               and spec.tune_budget < spec.budget.values[-1] else "")
    return ["## Learning rates", "", f"Each arm with a grid is reported at each budget at the lr with the lowest "
            f"mean final validation loss over {on}.{carried}", ""] + table(
        rows, ["arm", "budget", "lr", "mean final val loss", "seeds finished", ""]) + [""]


def accuracy_section(sweep: Sweep, study: str, out_dir: Path) -> list[str]:
    """The accuracy table (a row per model and width, a column per difficulty setting) and a plot of
    final accuracy against each swept difficulty key, and against width at the centre difficulty."""
    keys = sweep.swept + ([WIDTH] if sweep.width_swept else [])
    plots = []
    for key in keys:
        name = f"val_acc_vs_{'width' if key == WIDTH else key.split('.', 1)[1]}.png"
        what = f"{key} ({DIFFICULTY[key]})" if key in DIFFICULTY else f"width ({key})"
        plot_sweep(sweep.slice(key), what, f"{study}: final validation accuracy vs {what} (bars: min-max "
                   f"over seeds)", out_dir / name)
        plots.append(name)
    centre = ", ".join(f"{k} = {sweep.centre[k]}" for k in [*DIFFICULTY, WIDTH])
    lines = ["## Accuracy against difficulty", "",
             f"Final validation accuracy (mean over seeds) of the arms on synthetic tasks, by model and width "
             f"(rows) and difficulty setting (columns: K = data.task_pairs, T = model.block_size, V = "
             f"data.task_vocab). The centre is each setting's most common value among the arms ({centre}); a "
             f"plot along one setting keeps the arms at the centre of the others, the width plot those at the "
             f"centre difficulty. Settings are read from the runs' config.json.", ""]
    header, rows = acc_table(sweep)
    lines += table(rows, header) + [""]
    return lines + [f"![{p}]({p})" for p in plots] + ([""] if plots else [])


def samples_section(top: list[Cell], spec: StudySpec, cache: Cache) -> list[str]:
    finished = [c for c in top if c.runs]
    if finished and all(is_synthetic(c) for c in finished):
        return ["## Samples", "", "None: the arms train on synthetic tasks, whose tokens have no text tokenizer "
                "to decode them; their accuracy is reported above.", ""]
    s = spec.sample
    lines = ["## Samples", "", f"Each arm's first reported seed at the largest budget, on the CPU: "
             f"temperature {s.temperature}, top-k {s.top_k}, {s.max_new_tokens} new tokens, generator seed {s.seed}, "
             f"prompt {'given in the study file' if s.prompt else f'the first {s.prompt_tokens} validation tokens'}.",
             ""]
    for c in finished:
        if is_synthetic(c):
            lines += [f"**{c.arm}**: no sample (a synthetic task: no text tokenizer)", ""]
            continue
        try:
            prompt, text = sample_text(c.runs[0], s, cache)
        except Exception as e:  # a run without checkpoints still gets its row in the report
            lines += [f"**{c.arm}**: no sample ({type(e).__name__}: {e})", ""]
            continue
        body = (f"[prompt] {prompt}\n[continuation] {text}").replace("````", "` ` ` `")
        lines += [f"**{c.arm}** (seed {c.runs[0].seed}, lr {c.lr:g}):", "", "````text", body, "````", ""]
    return lines


def images_section(top: list[Cell], spec: StudySpec, out_dir: Path) -> list[str]:
    """One figure per image arm on the same prompt: what each token paints and what the CNN reads
    (python visualize.py draws the same for any run and text)."""
    from reporting.images import NoImages
    lines = []
    for c in top:
        if not c.runs or is_synthetic(c):
            continue
        try:
            paths = draw_images(c.runs[0], spec.sample, out_dir / "images" / c.arm)
        except NoImages:  # the GPT and the front-only control paint nothing
            continue
        except Exception as e:  # a run without checkpoints still gets its line
            lines += [f"**{c.arm}**: no images ({type(e).__name__}: {e})", ""]
            continue
        names = [p.relative_to(out_dir).as_posix() for p in paths]
        shown = [n for n in names if not n.rsplit("/", 1)[-1].startswith("painted")]
        lines += [f"**{c.arm}** (seed {c.runs[0].seed}): painted images a_t in "
                  + ", ".join(f"[{n}]({n})" for n in names if n not in shown), ""]
        lines += [f"![{n}]({n})" for n in shown] + [""]
    if not lines:
        return []
    prompt = "given in the study file" if spec.sample.prompt else f"the first {spec.sample.prompt_tokens} validation tokens"
    return ["## Token images", "", f"Each image arm's first reported seed at the largest budget, on the sample prompt "
            f"({prompt}): the causally mixed image A_t each token's CNN reads (one row per token, one colour "
            f"scale per row), and for image attention its weights over the past. Does what a token needs lie "
            f"next to it?", ""] + lines


def environment_section(top: list[Cell]) -> list[str]:
    seen: dict[str, list[str]] = {}
    for c in top:
        for r in c.runs:
            j = r.run
            git = j.get("git") or {}
            name = j.get("device_name")
            line = (f"{name + ' (' + str(j.get('device')) + ')' if name else j.get('device')}, {j.get('world_size')} "
                    f"process(es), {j.get('dtype')}, {j.get('threads')} threads, torch {j.get('torch')}, python "
                    f"{j.get('python')}, commit {(git.get('commit') or 'unknown')[:12]}"
                    f"{' (uncommitted changes)' if git.get('dirty') else ''}")
            if c.arm not in seen.setdefault(line, []):
                seen[line].append(c.arm)
    return ["## Hardware and code", ""] + [f"- {k}: {', '.join(v)}" for k, v in seen.items()] + [""]


def recipe_notes(top: list[Cell]) -> list[str]:
    """Where the arms' recipes differ beyond the model: the optimizer's batch, or the validation windows."""
    steps, windows = {}, {}
    for c in top:
        if c.runs:
            m, t = c.runs[0].config["model"], c.runs[0].config["train"]
            steps[c.arm] = f"{tokens_per_step(t['batch_size'], t['grad_accum'], m['block_size']):,}"
            windows[c.arm] = f"{t.get('eval_batch_size') or t['batch_size']} x {t['eval_iters']} x {m['block_size']}"
    notes = []
    if len(set(steps.values())) > 1:
        notes += ["Note: the arms train with different batches (tokens per optimizer step: "
                  + ", ".join(f"{k} {v}" for k, v in steps.items()) + ").", ""]
    if len(set(windows.values())) > 1:
        notes += ["Note: the arms are scored on different validation windows (windows per batch x batches x tokens: "
                  + ", ".join(f"{k} {v}" for k, v in windows.items()) + "); their differences are not paired.", ""]
    return notes


def pick_baseline(spec: StudySpec, models: dict[str, str]) -> str:
    return spec.baseline or next((a.name for a in spec.arms if models.get(a.name) == "gpt"), spec.arms[0].name)


def budget_line(spec: StudySpec) -> str:
    kind = spec.budget.kind
    values = ", ".join(f"{v:g}" for v in spec.budget.values)
    shared = (" Smaller budgets continue from the largest budget's run at the step where their own wsd decay "
              "starts (bit-identical to training them alone)." if len(spec.budget.values) > 1 and spec.share_runs
              and kind != "time_s" else "")
    return (f"Budgets per run: {values} {BUDGET_WORDS[kind]}, the same for every arm; {spec.n_evals} evaluations "
            f"at even fractions of each; reported seeds {spec.seeds}"
            f"{f', learning rates tuned on seeds {spec.tune_seeds}' if spec.tune_seeds else ''}.{shared}")


def write_report(spec: StudySpec, text: str, models: dict[str, str], out_dir: Path, tuning: list,
                 reported: list) -> tuple[Path, str]:
    """Plots, summary.json and report.md in out_dir from the planned runs; returns the report's path and
    the main table as text (for the terminal)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names, budgets = [a.name for a in spec.arms], spec.budget.values
    cells = make_cells(names, budgets, tuning, reported, spec.seeds)
    top = [cells[(n, budgets[-1])] for n in names]
    base = pick_baseline(spec, models)
    first = next((c.runs[0] for c in top if c.runs), None)
    ref = study_reference(first.config) if first is not None else None
    summary = summarize(spec, cells, models, base, ref)
    cache = Cache(out_dir / "cache.json")
    gpt2: tuple[dict | None, str] = (None, "no finished baseline run")
    if spec.reference == "gpt2" and cells[(base, budgets[-1])].runs:
        try:
            gpt2 = gpt2_reference(cells[(base, budgets[-1])].runs[0], cache)
        except Exception as e:  # an extra line of the report; never the reason it is missing
            gpt2 = (None, f"failed: {type(e).__name__}: {e}")
    vocab = int(first.config["model"]["vocab_size"]) if first is not None else None
    sweep = find_sweep(top)
    curves = write_curves(top, vocab, summary.references, spec.name, out_dir, acc=sweep is not None)
    plot_frontier(summary, vocab, out_dir / "frontier.png")
    plot_by_position(summary, out_dir / "loss_by_position.png")
    lines = [f"# Study {spec.name}", ""] + ([spec.description, ""] if spec.description else [])
    lines += [budget_line(spec), ""] + (["## Notes", "", spec.notes.strip(), ""] if spec.notes else [])
    lines += references_section(summary.references, vocab) + results_section(summary, spec, gpt2)
    lines += recipe_notes(top) + verdict_section(summary) + scaling_section(summary) + health_section(summary)
    lines += lr_section(cells, spec) + (accuracy_section(sweep, spec.name, out_dir) if sweep is not None else [])
    lines += ["## Curves", ""] + [f"![{p}]({p})" for p in [*curves, "loss_by_position.png"]] + [""]
    lines += samples_section(top, spec, cache) + images_section(top, spec, out_dir) + environment_section(top)
    lines += ["## Study file", "", "```toml", text.rstrip("\n"), "```", ""]
    (out_dir / "study.toml").write_text(text)
    (out_dir / "summary.json").write_text(json.dumps(to_json(summary), indent=1) + "\n")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    header, rows = results_rows(summary)
    keep = [header.index(h) for h in ("arm", "role", "lr", "val loss", "95% CI", "bits/byte", "minus bigram",
                                      f"Δ vs {base}", "Δ 95% CI")]
    return path, "\n".join(table([[r[i] for i in keep] for r in rows], [header[i] for i in keep]))
