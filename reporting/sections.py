"""The sections of report.md, listed once in SECTIONS in the order they appear, and the Report they read:
everything built from the finished runs (the typed summary, the cells, the model outputs) and the figures
drawn from it. A section is a title and a function of the Report that gives its lines (none: the section
is left out); every number comes from the summary, so report.md and summary.json cannot disagree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from engine.setup import tokens_per_step
from launch.spec import StudySpec
from reporting.cells import Cell
from reporting.markdown import BUDGET_WORDS, ci, na, signed, table
from reporting.stats import power_law_miss
from reporting.summary import AXES, PLATEAU_MARGIN, PLATEAU_SMOOTH, ArmSummary, Summary, points
from reporting.sweep import DIFFICULTY, WIDTH, Sweep, acc_table, is_synthetic
from reporting.verdict import CLAIM_SEEDS, verdict_lines

AXIS_WORDS = {"flops": "FLOPs", "time_s": "wall-clock", "tokens": "tokens"}


@dataclass
class Figures:
    """The files drawn for the report, by name relative to its folder."""
    curves: list[str] = field(default_factory=list)       # loss (and accuracy) curves, then loss by position
    accuracy: list[str] = field(default_factory=list)     # accuracy against each swept setting
    images: dict[str, list[str] | str] = field(default_factory=dict)  # image arm: its figures, or why none


@dataclass
class Report:
    """What the sections read."""
    spec: StudySpec
    text: str                                   # the study file
    summary: Summary
    cells: dict[tuple[str, float], Cell]
    top: list[Cell]                             # each arm at the largest budget, in study order
    sweep: Sweep | None                         # synthetic arms: accuracy against difficulty
    gpt2: tuple[dict | None, str]               # the pretrained GPT-2 row, or why there is none
    samples: dict[str, tuple[str, str] | str]   # arm: (prompt, continuation), or why there is none
    figures: Figures = field(default_factory=Figures)

    @property
    def largest_budget(self) -> str:
        return f"{self.summary.budgets[-1]:g} {BUDGET_WORDS[self.summary.budget_kind]}"


def baselines(summary: Summary) -> list[str]:
    """The arms others are compared with (one, unless the study file gives arms their own baseline)."""
    return list(dict.fromkeys(arm.baseline for arm in summary.arms.values()))


def against(summary: Summary) -> str:
    """Whom the Δ columns are against: the baseline's name, or each arm's own baseline."""
    names = baselines(summary)
    return names[0] if len(names) == 1 else "its baseline"


def role(name: str, arm: ArmSummary, summary: Summary) -> str:
    """baseline (of itself), or control / subject, and against which baseline where there are several."""
    if name == arm.baseline:
        return "baseline"
    several = len(baselines(summary)) > 1
    return ("control" if arm.control else "subject") + (f" (vs {arm.baseline})" if several else "")


def results_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """The main table: every arm at the largest budget."""
    header = ["arm", "role", "lr", "seeds", "parameters", "FLOPs/token", "tokens seen", "train time (s)",
              "val loss", "95% CI", "eval SE", "bits/byte", "minus bigram", f"Δ vs {against(summary)}",
              "Δ 95% CI", "loss, first quarter", "loss, last quarter", "tokens/s", "MFU"]
    acc = any(arm.top.val_acc is not None for arm in summary.arms.values())
    recompute = any((arm.hardware_flops_per_token or 0) > (arm.flops_per_token or 0) for arm in summary.arms.values())
    header += (["hardware FLOPs/token"] if recompute else []) + (["val acc"] if acc else [])
    rows = []
    for name, arm in summary.arms.items():
        e = arm.top
        lr = na(e.lr, lambda v: f"{v:g}") + (" (edge)" if e.lr_at_edge else "")
        rows.append([name, role(name, arm, summary), lr, str(len(e.seeds)),
                     na(arm.parameters, lambda v: f"{v:,}"), na(arm.flops_per_token, lambda v: f"{v:.4g}"),
                     na(e.tokens, lambda v: f"{round(v):,}"), na(e.time_s, lambda v: f"{v:.1f}"),
                     na(e.val_loss), ci(e.val_loss_ci95, e.val_loss), na(e.eval_se),
                     na(e.bits_per_byte), signed(e.margin_to_bigram), signed(e.delta_vs_baseline),
                     ci(e.delta_vs_baseline_ci95, e.delta_vs_baseline),
                     na(e.loss_first_quarter), na(e.loss_last_quarter),
                     na(arm.tokens_per_s, lambda v: f"{v:.4g}"), na(arm.mfu, lambda v: f"{100 * v:.1f}%")]
                    + ([na(arm.hardware_flops_per_token, lambda v: f"{v:.4g}")] if recompute else [])
                    + ([na(e.val_acc)] if acc else []))
    return header, rows


def main_table(summary: Summary) -> str:
    """The results table cut to what the terminal shows at the end of a study."""
    header, rows = results_rows(summary)
    keep = [header.index(h) for h in ("arm", "role", "lr", "val loss", "95% CI", "bits/byte", "minus bigram",
                                      f"Δ vs {against(summary)}", "Δ 95% CI")]
    return "\n".join(table([[r[i] for i in keep] for r in rows], [header[i] for i in keep]))


def heading(r: Report) -> list[str]:
    return [f"# Study {r.spec.name}", ""] + ([r.spec.description, ""] if r.spec.description else []) + [
        budget_line(r.spec), ""]


def budget_line(spec: StudySpec) -> str:
    kind = spec.budget.kind
    values = ", ".join(f"{v:g}" for v in spec.budget.values)
    shared = (" Smaller budgets continue from the largest budget's run at the step where their own wsd decay "
              "starts (bit-identical to training them alone)." if len(spec.budget.values) > 1 and spec.share_runs
              and kind != "time_s" else "")
    return (f"Budgets per run: {values} {BUDGET_WORDS[kind]}, the same for every arm; {spec.n_evals} evaluations "
            f"at even fractions of each; reported seeds {spec.seeds}"
            f"{f', learning rates tuned on seeds {spec.tune_seeds}' if spec.tune_seeds else ''}.{shared}")


def notes(r: Report) -> list[str]:
    return [r.spec.notes.strip(), ""] if r.spec.notes else []


def references(r: Report) -> list[str]:
    refs = r.summary.references
    if refs is None:
        return []
    rows = [[name, f"{value:.4f}", na(bits)] for name, value, bits in [
        ("uniform", refs.uniform, refs.uniform_bits_per_byte), ("unigram", refs.unigram, refs.unigram_bits_per_byte),
        ("bigram", refs.bigram, refs.bigram_bits_per_byte)]]
    return [f"Cross-entropy of simple models on exactly the validation windows the arms are scored on ({refs.tokens:,} "
            f"tokens, {refs.bytes:,} bytes of text): a uniform guess over the {refs.vocab_size} ids of the dataset "
            "(ln V), the unigram model of the train split (add-one smoothing) and its bigram model (interpolated "
            "Witten-Bell). A model "
            "at the unigram level has learned nothing about mixing tokens; one above the bigram uses at most the "
            "previous token.", ""] + table(rows, ["reference", "nats/token", "bits/byte"]) + [""]


def results(r: Report) -> list[str]:
    header, rows = results_rows(r.summary)
    lines = table(rows, header) + [""]
    lines.append("Means over the reported seeds. The 95% intervals are Student t intervals over seeds: of the per-seed "
                 "losses, and for a difference of the per-seed differences d_s (seed s gives every arm the same data "
                 "order and the same validation windows, so d_s is the mean over the windows of arm loss minus "
                 "baseline loss on that seed); with one seed there is no interval. eval SE is the standard error of "
                 "one run's loss over its windows (the evaluation noise). Bits per byte = nats/token x tokens / (bytes "
                 "x ln 2) of the scored text. The first and last quarter are the mean loss at positions 1..T/4 and "
                 "3T/4..T of the window: a model that uses its context gets better along the window. '(edge)': the "
                 "chosen lr is at the edge of its grid, so the optimum may lie outside it. FLOPs are model FLOPs "
                 "(counted per model, equal for any hardware); hardware FLOPs add what activation checkpointing "
                 "recomputes.")
    value, why = r.gpt2
    if r.spec.reference == "gpt2":
        lines += ["", "Pretrained GPT-2 (124M, OpenAI's weights, not trained here) on the baseline's validation "
                  "windows: " + (f"{value['loss']:.4f} nats/token." if value else f"skipped ({why}).")]
    return lines + [""] + recipe_notes(r.top)


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


def per_seed(r: Report) -> list[str]:
    """Every arm's final loss on each reported seed at the largest budget, and its difference to the baseline
    on the same seed: the values the intervals and the verdict are computed from."""
    base, arms = against(r.summary), r.summary.arms
    seeds = sorted({s for arm in arms.values() for s in arm.top.val_loss_by_seed or {}})
    if not seeds:
        return []
    rows = []
    for name, arm in arms.items():
        losses, deltas = arm.top.val_loss_by_seed or {}, arm.top.delta_vs_baseline_by_seed
        rows.append([name, *[na(losses.get(s)) for s in seeds],
                     *([signed(deltas.get(s)) for s in seeds] if deltas else ["—"] * len(seeds))])
    header = ["arm", *[f"loss, seed {s}" for s in seeds], *[f"Δ vs {base}, seed {s}" for s in seeds]]
    return [f"Final validation loss of each reported seed, and the difference to {base} on the same seed (the "
            "mean over the shared validation windows): the intervals above are Student t intervals over these "
            f"columns, and the verdict names a direction only with at least {CLAIM_SEEDS} seeds and an interval "
            "that excludes zero. n/a: the seed did not finish.", ""] + table(rows, header) + [""]


def by_budget(values: list[float | None], extrapolated: list[bool] | None = None) -> str:
    """Multipliers by budget, an extrapolated one marked '*'."""
    marks = extrapolated or [False] * len(values)
    return " / ".join(na(v, lambda x: f"{x:.3g}") + ("*" if out else "") for v, out in zip(values, marks))


def multiplier_cells(arm: ArmSummary, axis: str) -> list[str]:
    """The arm's multipliers on one axis, off the baseline's fit and piecewise; the baseline has none."""
    if arm.compute_multiplier_by_axis is None or arm.compute_multiplier_piecewise is None:
        return ["baseline", "baseline"]
    return [by_budget(arm.compute_multiplier_by_axis[axis], (arm.compute_multiplier_extrapolated or {}).get(axis)),
            by_budget(arm.compute_multiplier_piecewise[axis])]


def scaling(r: Report) -> list[str]:
    summary, axes = r.summary, AXES
    rows = []
    for name, arm in summary.arms.items():
        by_value = {e.budget: e for e in arm.budgets}
        fit = (arm.power_law or {}).get("flops")
        rows.append([name, *[na(by_value[b].val_loss) for b in summary.budgets],
                     na(fit[1] if fit else None, lambda v: f"{v:.3f}"),
                     *[cell for a in axes for cell in multiplier_cells(arm, a)]])
    header = ["arm", *[f"loss at {b:g}" for b in summary.budgets], "power-law exponent (FLOPs)",
              *[f"multiplier ({AXIS_WORDS[a]}), {how}, by budget" for a in axes for how in ("fit", "piecewise")]]
    return ["Final validation loss at each budget (mean over seeds), the exponent b of a power law L = a C^-b fitted "
            "to it, and the compute multiplier: how many times the arm's compute (FLOPs, wall-clock or tokens) the "
            f"baseline ({against(summary)}) needs to reach the arm's loss, read two ways: off the baseline's own "
            "power law (fit), and by piecewise interpolation between the baseline's measured points in log-log "
            "space (piecewise; n/a where the arm's loss lies outside the baseline's measured losses). Below 1 the "
            "baseline is more efficient, above 1 the arm; a multiplier that moves away from 1 with the budget means the "
            "gap widens with compute.",
            ""] + table(rows, header) + [
        "", "\\* extrapolated: the arm's loss lies outside the baseline's measured losses, so the fit is read "
        "beyond its data.", *fit_misses(summary), "", "![frontier.png](frontier.png)", ""]


def fit_misses(summary: Summary) -> list[str]:
    """A line per baseline with a FLOPs power law: how far that law misses the baseline's own losses."""
    lines = []
    for name in dict.fromkeys(arm.baseline for arm in summary.arms.values()):
        base = summary.arms.get(name)
        fit = (base.power_law or {}).get("flops") if base else None
        flops, losses = points(base.budgets, "flops") if fit else ([], [])
        if len(flops) < 3:  # two points: the law passes through both
            continue
        miss, at = power_law_miss(flops, losses, *fit)
        lines.append(f"{name}'s power law (FLOPs) misses its own measured losses by up to {miss:.3f} nats/token (at "
                     f"{flops[at]:.2g} FLOPs): where an arm differs from {name} by less, its fit multiplier says "
                     "less than the piecewise one.")
    return [""] + lines if lines else []


def difference(estimate: float | None, interval: list[float] | None) -> str:
    return f"{signed(estimate)} {ci(interval, estimate)}"


def health(r: Report) -> list[str]:
    rows = []
    for name, arm in r.summary.arms.items():
        e = arm.top
        rows.append([name, signed(e.margin_to_bigram),
                     difference(e.delta_vs_front, e.delta_vs_front_ci95) if arm.front else "—",
                     signed(e.front_equal_tokens) if arm.front else "—",
                     difference(e.delta_vs_mixing, e.delta_vs_mixing_ci95) if arm.mixing else "—",
                     "; ".join(arm.health) or "ok"])
    return ["An arm that sits at the unigram level, or that is worse than its own front (the same embedding and "
            "warm-up without the image stage) at equal tokens, shows a defect before it shows a result; worse at "
            "equal FLOPs only, its block costs more than it adds. 'Equal tokens' reads the front's loss at the "
            "arm's token count off the front's budgets (interpolated in log tokens). 'Δ vs no mixing' is the arm "
            "against the same block with its mixer replaced by none: what the mixer adds.", ""] + table(
        rows, ["arm", "minus bigram", "Δ vs its front, equal FLOPs [95% CI]", "Δ vs its front, equal tokens",
               "Δ vs no mixing [95% CI]", "flags"]) + [""]


def routing(r: Report) -> list[str]:
    """Per arm: each component's relative update size early and late, each attention layer's entropy."""
    updates, entropies = [], []
    for name, arm in r.summary.arms.items():
        if arm.routing is None:
            continue
        updates += [[name, part, f"{early:.2e} → {late:.2e}"] for part, (early, late) in arm.routing.update.items()]
        entropies += [[name, layer, " → ".join(f"{v:.3f}" for v in values)]
                      for layer, values in arm.routing.entropy.items()]
    if not updates:
        return []
    lines = ["Whether the parts that route move, and where the attention goes (reported runs at the largest budget, "
             "mean over seeds). The relative update size ||Δθ|| / ||θ|| per optimizer step is what Adam does to a "
             "component, which its gradient norm does not say: the median over the first fifth of the logged steps "
             "→ over the last fifth. Components: `embedding` (the tied head's weight is the embedding's), `h<i>.<part>` "
             "per layer (`attn`, `mlp`, the image blocks' `paint`, `route` (idea 2's q and k), `cnn`, `proj`; the "
             "convolutions' `conv`, Hyena's `filter`), `head` (its final norm).", ""]
    lines += table(updates, ["arm", "component", "relative update per step, first → last fifth"]) + [""]
    if entropies:
        lines += ["Attention entropy against uniform at each evaluation, mean over query positions t >= 1 of H_t / ln(t+1): "
                  "1 is a running mean (weights that never left their initial uniformity), 0 all weight on one key.", ""]
        lines += table(entropies, ["arm", "layer", "entropy / uniform, at each evaluation"]) + [""]
    return lines


def plateau(r: Report) -> list[str]:
    """Per arm and seed at the largest budget: the step at which the run left the bigram plateau."""
    rows = []
    for name, arm in r.summary.arms.items():
        if arm.escape is None:
            continue
        seeds = sorted(arm.escape.steps)
        left = [s for s in seeds if arm.escape.step[s] is not None]
        cells = [f"{arm.escape.step[s]:,} ({arm.escape.step[s] / arm.escape.steps[s]:.0%})" if s in left else "never"
                 for s in seeds]
        rows.append([name, f"{len(left)} of {len(seeds)}", " · ".join(cells), f"{max(arm.escape.steps.values()):,}"])
    if not rows:
        return []
    return [f"Every model here first sits near the bigram level. A run has left that plateau at the first logged step "
            f"where its training loss (mean of {PLATEAU_SMOOTH} consecutive logged values) is {PLATEAU_MARGIN} nats "
            "below the bigram's loss; in brackets, that step's share of the run. Runs that never leave it, or leave "
            "it late, are ranked by when they left rather than by what their mixer can do (reported runs at the "
            "largest budget, seeds in order).", ""] + table(
        rows, ["arm", "left the plateau", "step by seed (share of the run)", "steps"]) + [""]


def learning_rates(r: Report) -> list[str]:
    spec = r.spec
    tuned = [c for c in r.cells.values() if c.grid and c.tuned_at == c.budget]
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
    return [f"Each arm with a grid is reported at each budget at the lr with the lowest "
            f"mean final validation loss over {on}.{carried}", ""] + table(
        rows, ["arm", "budget", "lr", "mean final val loss", "seeds finished", ""]) + [""]


def accuracy(r: Report) -> list[str]:
    """The accuracy table (a row per model and width, a column per difficulty setting) and the plots of
    final accuracy against each swept difficulty key, and against width at the centre difficulty."""
    sweep, plots = r.sweep, r.figures.accuracy
    if sweep is None:
        return []
    centre = ", ".join(f"{k} = {sweep.centre[k]}" for k in [*DIFFICULTY, WIDTH])
    lines = [f"Final validation accuracy (mean over seeds) of the arms on synthetic tasks, by model and width "
             f"(rows) and difficulty setting (columns: K = data.task_pairs, T = model.block_size, V = "
             f"data.task_vocab). The centre is each setting's most common value among the arms ({centre}); a "
             f"plot along one setting keeps the arms at the centre of the others, the width plot those at the "
             f"centre difficulty. Settings are read from the runs' config.json.", ""]
    header, rows = acc_table(sweep)
    lines += table(rows, header) + [""]
    return lines + [f"![{p}]({p})" for p in plots] + ([""] if plots else [])


def curves(r: Report) -> list[str]:
    return [f"![{p}]({p})" for p in r.figures.curves] + [""]


def samples(r: Report) -> list[str]:
    finished = [c for c in r.top if c.runs]
    if finished and all(is_synthetic(c) for c in finished):
        return ["None: the arms train on synthetic tasks, whose tokens have no text tokenizer "
                "to decode them; their accuracy is reported above.", ""]
    s = r.spec.sample
    lines = [f"Each arm's first reported seed at the largest budget, on the CPU: "
             f"temperature {s.temperature}, top-k {s.top_k}, {s.max_new_tokens} new tokens, generator seed {s.seed}, "
             f"prompt {'given in the study file' if s.prompt else f'the first {s.prompt_tokens} validation tokens'}.",
             ""]
    for c in finished:
        sample = r.samples[c.arm]
        if isinstance(sample, str):
            lines += [f"**{c.arm}**: no sample ({sample})", ""]
            continue
        prompt, text = sample
        body = (f"[prompt] {prompt}\n[continuation] {text}").replace("````", "` ` ` `")
        lines += [f"**{c.arm}** (seed {c.runs[0].seed}, lr {c.lr:g}):", "", "````text", body, "````", ""]
    return lines


def token_images(r: Report) -> list[str]:
    """One figure per image arm on the same prompt: what each token paints and what the CNN reads
    (python visualize.py draws the same for any run and text)."""
    lines = []
    for c in r.top:
        names = r.figures.images.get(c.arm)
        if names is None:  # no run, a synthetic task, or a model that paints no images
            continue
        if isinstance(names, str):
            lines += [f"**{c.arm}**: no images ({names})", ""]
            continue
        shown = [n for n in names if not n.rsplit("/", 1)[-1].startswith("painted")]
        lines += [f"**{c.arm}** (seed {c.runs[0].seed}): painted images a_t in "
                  + ", ".join(f"[{n}]({n})" for n in names if n not in shown), ""]
        lines += [f"![{n}]({n})" for n in shown] + [""]
    if not lines:
        return []
    s = r.spec.sample
    prompt = "given in the study file" if s.prompt else f"the first {s.prompt_tokens} validation tokens"
    return [f"Each image arm's first reported seed at the largest budget, on the sample prompt "
            f"({prompt}): the causally mixed image A_t each token's CNN reads (one row per token, one colour "
            f"scale per row), and for image attention its weights over the past. Does what a token needs lie "
            f"next to it?", ""] + lines


def environment(r: Report) -> list[str]:
    seen: dict[str, list[str]] = {}
    for c in r.top:
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
    return [f"- {k}: {', '.join(v)}" for k, v in seen.items()] + [""]


def study_file(r: Report) -> list[str]:
    return ["```toml", r.text.rstrip("\n"), "```", ""]


# (title, section) in the order of report.md; a title is formatted with the Report as r
SECTIONS: list[tuple[str, Callable[[Report], list[str]]]] = [
    ("", heading),
    ("Notes", notes),
    ("References", references),
    ("Results at the largest budget ({r.largest_budget})", results),
    ("Per seed at the largest budget ({r.largest_budget})", per_seed),
    ("Verdict", lambda r: verdict_lines(r.summary)),
    ("Loss against compute", scaling),
    ("Training health", health),
    ("Routing", routing),
    ("Leaving the plateau", plateau),
    ("Learning rates", learning_rates),
    ("Accuracy against difficulty", accuracy),
    ("Curves", curves),
    ("Samples", samples),
    ("Token images", token_images),
    ("Hardware and code", environment),
    ("Study file", study_file),
]


def render(r: Report) -> str:
    """report.md: every section that has lines, under its title."""
    lines = []
    for title, section in SECTIONS:
        body = section(r)
        if body:
            lines += ([f"## {title.format(r=r)}", ""] if title else []) + body
    return "\n".join(lines)
