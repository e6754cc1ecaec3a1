"""report.md of a study: the table of arms at equal budget, significance against the baseline, the lr
choice, accuracy against difficulty (synthetic tasks), the plots, decoded samples, hardware and code
version, and the study file itself.

Everything in it is a function of the finished runs and the study file (no dates, cached samples),
so rerunning a finished study rewrites the same bytes.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from analysis.inference import Cache, gpt2_reference, sample_text
from analysis.plots import plot_sweep, write_plots
from analysis.results import ArmSummary, mean_std, summarize_arm, welch
from analysis.spec import BUDGET_KEYS, StudySpec
from analysis.sweep import DIFFICULTY, WIDTH, Sweep, acc_stats, acc_table, find_sweep, is_synthetic

BUDGET_WORDS = {"flops": "training FLOPs", "time_s": "seconds of training wall-clock (evaluation excluded)",
                "tokens": "training tokens", "iters": "optimizer steps"}


def na(value, fmt: Callable[[float], str]) -> str:
    return "n/a" if value is None else fmt(value)


def loss_cell(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean, std = mean_std(values)
    return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}"


def acc_cell(arm: ArmSummary) -> str:
    if not arm.accs:
        return "n/a"
    mean, lo, hi = acc_stats(arm)
    return f"{mean:.4f} ({lo:.4f}–{hi:.4f})" if len(arm.accs) > 1 else f"{mean:.4f}"


def p_cell(arm: ArmSummary, base: ArmSummary | None) -> str:
    if base is None or not base.runs:
        return "n/a (baseline not run)"
    if arm is base:
        return "baseline"
    test = welch(arm.finals, base.finals)
    if test is None:
        return "n/a (one seed)"
    return "n/a (no variance)" if math.isnan(test["p"]) else f"{test['p']:.3g}"


COLUMNS: list[tuple[str, Callable[[ArmSummary], str]]] = [
    ("lr", lambda a: na(a.lr, lambda v: f"{v:g}")),
    ("seeds", lambda a: str(len(a.runs))),
    ("parameters", lambda a: na(a.first("parameters"), lambda v: f"{v:,}")),
    ("FLOPs/token", lambda a: na(a.first("flops_per_token"), lambda v: f"{v:.4g}")),
    ("tokens seen", lambda a: na(a.mean("tokens"), lambda v: f"{round(v):,}")),
    ("tokens/param", lambda a: na(a.mean("tokens"), lambda v: f"{v / a.first('parameters'):.3g}")),
    ("FLOPs spent", lambda a: na(a.mean("flops"), lambda v: f"{v:.4g}")),
    ("train time (s)", lambda a: na(a.mean("time_s"), lambda v: f"{v:.1f}")),
    ("final val loss", lambda a: loss_cell(a.finals)),
    ("final val acc", acc_cell),  # left out when no run has one (runs from before train.py measured it)
    ("tokens/s", lambda a: na(a.mean("tokens_per_s"), lambda v: f"{v:.4g}")),
    ("MFU", lambda a: na(a.mean("mfu"), lambda v: f"{100 * v:.2f}%")),
    ("peak memory (MiB)", lambda a: na(max((r.result.get("peak_memory_bytes") or 0 for r in a.runs), default=None),
                                       lambda v: f"{v / 2 ** 20:.1f}")),
]


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def results_section(arms: list[ArmSummary], base: ArmSummary | None, ref: tuple[dict | None, str],
                    spec: StudySpec) -> list[str]:
    acc = any(a.accs for a in arms)
    cols = [c for c in COLUMNS if acc or c[0] != "final val acc"]
    header = ["arm", *[c[0] for c in cols], f"p vs {base.name if base else 'baseline'} (Welch)"]
    rows = [[a.name, *[fn(a) if a.runs else "not run" for _, fn in cols], p_cell(a, base)] for a in arms]
    value, why = ref
    if value is not None:
        known = {"parameters": f"{value['parameters']:,}", "final val loss": f"{value['loss']:.4f}"}
        rows.append(["pretrained GPT-2 (124M), reference", *[known.get(c[0], "—") for c in cols], "—"])
    lines = ["## Results at equal budget", ""] + table(rows, header) + [""]
    lines.append("Numbers are means over seeds (final validation loss: mean ± sample standard deviation"
                 + ("; final validation accuracy: mean (min–max)" if acc else "")
                 + "); FLOPs are training FLOPs counted by each model's `flops_per_token`; train time excludes "
                 "evaluation; peak memory is the largest over seeds (GPU: allocator peak; CPU: process peak RSS). "
                 "The p-value is Welch's two-sided t-test of the arm's final validation losses against the "
                 "baseline's, over seeds (scipy.stats.ttest_ind, equal_var=False).")
    if acc:
        lines.append("Accuracy is the share of scored validation tokens whose most likely prediction is right: "
                     "every next token for text; on synthetic tasks only the scored positions (the copied "
                     "symbols, the queried values).")
    if spec.reference == "gpt2":
        lines += ["", f"Pretrained GPT-2 reference: {reference_note(value, why)}"]
    return lines + batch_notes(arms) + [""]


def batch_notes(arms: list[ArmSummary]) -> list[str]:
    """Say where the arms' recipes differ beyond the model: the optimizer's batch, and the validation
    windows (train.py draws them from seed, batch_size, eval_iters and block_size)."""
    steps, windows = {}, {}
    for a in arms:
        if a.runs:
            m, t = a.runs[0].config["model"], a.runs[0].config["train"]
            steps[a.name] = f"{t['batch_size'] * t['grad_accum'] * m['block_size']:,}"
            windows[a.name] = f"{t['batch_size']} x {t['eval_iters']} x {m['block_size']}"
    notes = []
    if len(set(steps.values())) > 1:
        notes += ["", "Note: the arms train with different batches (tokens per optimizer step: "
                  + ", ".join(f"{k} {v}" for k, v in steps.items()) + ")."]
    if len(set(windows.values())) > 1:
        notes += ["", "Note: the arms' validation losses are estimated on different validation windows "
                  "(batch_size x eval_iters x block_size: " + ", ".join(f"{k} {v}" for k, v in windows.items()) + ")."]
    return notes


def reference_note(value: dict | None, why: str) -> str:
    if value is None:
        return f"skipped ({why})."
    return (f"OpenAI's GPT-2 124M weights, not trained here (WebText, ~40 GB, far beyond this budget), scored on the "
            f"baseline's first seed's validation windows ({value['tokens']:,} tokens in windows of "
            f"{value['block_size']}); a ceiling for orientation, not an arm.")


def seeds_section(arms: list[ArmSummary], seeds: list[int]) -> list[str]:
    rows = []
    for a in arms:
        by_seed = {r.seed: f"{r.result['val_loss']:.4f}" for r in a.runs}
        rows.append([a.name, *[by_seed.get(s, "—") for s in seeds]])
    return ["## Final validation loss per seed", ""] + table(rows, ["arm", *[f"seed {s}" for s in seeds]]) + [""]


def lr_section(arms: list[ArmSummary]) -> list[str]:
    gridded = [a for a in arms if a.grid]
    if not gridded:
        return []
    lines = ["## Learning-rate choice", "",
             "Arms with an lr grid are reported above at the lr with the lowest mean final validation loss "
             "over seeds. The choice is made on the same seeds that are reported, a small optimistic bias "
             "in those arms' favour.", ""]
    rows = [[a.name, f"{lr:g}", na(loss, lambda v: f"{v:.4f}"), str(done) + (f" ({div} diverged)" if div else ""),
             "**chosen**" if lr == a.lr else ""] for a in gridded for lr, loss, done, div in a.grid]
    return lines + table(rows, ["arm", "lr", "mean final val loss", "seeds finished", ""]) + [""]


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


def samples_section(arms: list[ArmSummary], spec: StudySpec, cache: Cache) -> list[str]:
    finished = [a for a in arms if a.runs]
    if finished and all(is_synthetic(a) for a in finished):
        return ["## Samples", "", "None: the arms train on synthetic tasks, whose tokens have no text tokenizer "
                "to decode them; their accuracy is reported above.", ""]
    s = spec.sample
    lines = ["## Samples", "", f"Each arm's run at its reported lr with the first seed, on the CPU: "
             f"temperature {s.temperature}, top-k {s.top_k}, {s.max_new_tokens} new tokens, generator seed {s.seed}, "
             f"prompt {'given in the study file' if s.prompt else f'the first {s.prompt_tokens} validation tokens'}.",
             ""]
    for a in arms:
        if not a.runs:
            continue
        if is_synthetic(a):
            lines += [f"**{a.name}**: no sample (a synthetic task: no text tokenizer)", ""]
            continue
        try:
            prompt, text = sample_text(a.runs[0], s, cache)
        except Exception as e:  # a run without checkpoints still gets its row in the report
            lines += [f"**{a.name}**: no sample ({type(e).__name__}: {e})", ""]
            continue
        body = (f"[prompt] {prompt}\n[continuation] {text}").replace("````", "` ` ` `")
        lines += [f"**{a.name}** (seed {a.runs[0].seed}, lr {a.lr:g}):", "", "````text", body, "````", ""]
    return lines


def environment_section(arms: list[ArmSummary]) -> list[str]:
    seen: dict[str, list[str]] = {}
    for a in arms:
        for r in a.runs:
            j = r.run
            git = j.get("git") or {}
            name = j.get("device_name")
            line = (f"{name + ' (' + str(j.get('device')) + ')' if name else j.get('device')}, {j.get('world_size')} "
                    f"process(es), {j.get('dtype')}, {j.get('threads')} threads, torch {j.get('torch')}, python "
                    f"{j.get('python')}, commit {(git.get('commit') or 'unknown')[:12]}"
                    f"{' (uncommitted changes)' if git.get('dirty') else ''}")
            if a.name not in seen.setdefault(line, []):
                seen[line].append(a.name)
    return ["## Hardware and code", ""] + [f"- {k}: {', '.join(v)}" for k, v in seen.items()] + [""]


def pick_baseline(spec: StudySpec, arms: list[ArmSummary], model_names: dict[str, str]) -> ArmSummary | None:
    name = spec.baseline or next((a.name for a in spec.arms if model_names.get(a.name) == "gpt"), spec.arms[0].name)
    return next((a for a in arms if a.name == name), None)


def budget_line(spec: StudySpec) -> str:
    kind, value = spec.budget.item()
    return (f"Budget per run: {value:g} {BUDGET_WORDS[kind]} (`{BUDGET_KEYS[kind]}`), the same for every arm; "
            f"{spec.n_evals} evaluations at even fractions of it; seeds {spec.seeds}.")


def write_report(spec: StudySpec, text: str, model_names: dict[str, str], out_dir: Path, runs: list) -> Path:
    """Plots and report.md in out_dir from the planned runs (objects with arm, lr, seed, out_dir)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    grouped: dict[str, dict[float, list]] = {a.name: {} for a in spec.arms}
    for r in runs:
        grouped[r.arm].setdefault(r.lr, []).append((r.seed, r.out_dir))
    arms = [summarize_arm(name, by_lr) for name, by_lr in grouped.items() if by_lr]
    base = pick_baseline(spec, arms, model_names)
    cache = Cache(out_dir / "cache.json")
    ref: tuple[dict | None, str] = (None, "no finished baseline run")
    if spec.reference == "gpt2" and base is not None and base.runs:
        try:
            ref = gpt2_reference(base.runs[0], cache)
        except Exception as e:  # an extra line of the report; never the reason it is missing
            ref = (None, f"failed: {type(e).__name__}: {e}")
    vocab = next((int(a.runs[0].config["model"]["vocab_size"]) for a in arms if a.runs), None)
    sweep = find_sweep(arms)
    plots = write_plots(arms, vocab, spec.name, out_dir, acc=sweep is not None)
    lines = [f"# Study {spec.name}", ""] + ([spec.description, ""] if spec.description else [])
    lines += [budget_line(spec), ""]
    lines += results_section(arms, base, ref, spec) + seeds_section(arms, spec.seeds) + lr_section(arms)
    lines += accuracy_section(sweep, spec.name, out_dir) if sweep is not None else []
    lines += ["## Curves", ""] + [f"![{p}]({p})" for p in plots] + [""]
    lines += samples_section(arms, spec, cache) + environment_section(arms)
    lines += ["## Study file", "", "```toml", text.rstrip("\n"), "```", ""]
    (out_dir / "study.toml").write_text(text)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
