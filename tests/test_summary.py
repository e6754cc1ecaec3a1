"""The summary and report of a study from fake finished runs: per-seed values, seed-level intervals against a
plain t interval, the verdict rule (5 seeds and an interval that excludes zero), the compute multipliers
(off the baseline's power law, extrapolation marked, and piecewise), and the frontier plot's axis."""
import json
import math
from dataclasses import fields

import numpy as np
import pytest
from scipy.stats import t as student_t

from launch.plan import report_runs, tuning_runs
from launch.results import choose_lrs
from launch.spec import loads_study
from reporting.plots import MARGIN, frontier_figure, plt
from reporting.references import Reference
from reporting.report import write_report
from reporting.summary import ArmSummary, BudgetEntry, Summary
from test_study import ARMS, fake_run, steps_for, study_text, table_rows


def write_fake_study(tmp_path, narrow_windows, wide_shift: float | dict[int, float] = 0.0,
                     spec_text: str | None = None, seed_offsets: dict[int, float] | None = None):
    """Fake runs for every planned run: narrow's final windows per seed as given, centred on a final loss
    that follows L = 10 C^-0.1 in the FLOPs C plus the seed's offset; wide = the loss narrow reaches at C / 4
    (the same offset and windows) plus wide_shift (one for all seeds, or per seed)."""
    spec = loads_study(spec_text or study_text(tmp_path, tmp_path / "out", budget="flops = [1e6, 3e6, 1e7]"))
    steps = {a.name: steps_for(spec.budget.values) for a in spec.arms}
    tuning = tuning_runs(spec, steps)
    for r in tuning:
        fake_run(r.out_dir, [4.0, 3.0 if r.lr == 1e-3 else 3.5])
    reported = report_runs(spec, choose_lrs(tuning), {"narrow": 1e-3, "wide": 1e-2}, steps)
    shifts = wide_shift if isinstance(wide_shift, dict) else {s: wide_shift for s in spec.seeds}
    for r in reported:
        flops = r.budget
        loss = 10 * (flops / (4 if r.arm == "wide" else 1)) ** -0.1 + (seed_offsets or {}).get(r.seed, 0.0)
        noise = np.asarray(narrow_windows[r.seed], dtype=np.float64)
        w = noise - noise.mean() + loss + (shifts[r.seed] if r.arm == "wide" else 0.0)  # windows around the loss
        fake_run(r.out_dir, [4.0, float(np.mean(w))], windows=w.tolist(),
                 final={"flops": flops, "tokens": flops / 1000, "time_s": flops / 1e5})
    return spec, tuning, reported


def loop_t_interval(values: list[float]) -> list[float]:
    """The 95% Student t interval of the mean, written out."""
    n = len(values)
    mean = sum(values) / n
    half = student_t.ppf(0.975, n - 1) * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    return [mean - half, mean + half]


FIVE = "[1, 2, 3, 4, 5]"
OFFSETS = {1: -0.02, 2: -0.01, 3: 0.0, 4: 0.01, 5: 0.02}  # mean 0: the seeds' mean loss stays on the power law
TOP_DELTA = 10 * (1e7 / 4) ** -0.1 - 10 * 1e7 ** -0.1  # wide - narrow at the largest budget, shift 0


def test_summary_pairs_seeds_and_finds_the_compute_multipliers(tmp_path):
    rng = np.random.default_rng(0)
    windows = {s: rng.normal(0, 0.3, size=8) for s in OFFSETS}
    text = study_text(tmp_path, tmp_path / "out", seeds=FIVE, budget="flops = [1e6, 3e6, 1e7]")
    spec, tuning, reported = write_fake_study(tmp_path, windows, 0.0, text, OFFSETS)
    path, main_table = write_report(spec, "x", {"narrow": "gpt", "wide": "gpt"}, tmp_path / "out", tuning, reported)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    narrow, wide = summary["arms"]["narrow"], summary["arms"]["wide"]
    assert narrow["compute_multiplier"] is None and summary["baseline"] == "narrow"
    assert wide["compute_multiplier"] == pytest.approx([0.25, 0.25, 0.25], rel=1e-9)  # 4x less efficient, exactly
    assert wide["power_law"]["flops"] == pytest.approx([10 * 4 ** 0.1, 0.1], rel=1e-9)
    # wide's loss at 1e6 and 3e6 (narrow's at 2.5e5 and 7.5e5) lies above every loss narrow measured
    for axis in ("flops", "time_s", "tokens"):
        assert wide["compute_multiplier_extrapolated"][axis] == [True, True, False]
        piecewise = wide["compute_multiplier_piecewise"][axis]  # exact power law: log-log interpolation is exact
        assert piecewise[:2] == [None, None] and piecewise[2] == pytest.approx(0.25, rel=1e-9)
    assert narrow["compute_multiplier_extrapolated"] is None and narrow["compute_multiplier_piecewise"] is None
    top, narrow_top = wide["budgets"][-1], narrow["budgets"][-1]
    # per seed: narrow's losses, and every paired difference the same (the same windows, shifted)
    losses = {str(s): 10 * 1e7 ** -0.1 + o for s, o in OFFSETS.items()}
    assert narrow_top["val_loss_by_seed"] == pytest.approx(losses)
    assert top["delta_vs_baseline_by_seed"] == pytest.approx({s: TOP_DELTA for s in losses})
    assert "delta_vs_baseline_by_seed" not in narrow_top  # the baseline is not compared with itself
    assert top["delta_vs_baseline"] == pytest.approx(TOP_DELTA)
    assert top["delta_vs_baseline_ci95"] == pytest.approx([TOP_DELTA, TOP_DELTA])
    assert narrow_top["val_loss_ci95"] == pytest.approx(loop_t_interval(list(losses.values())), rel=1e-12)
    assert [e["budget"] for e in wide["budgets"]] == [1e6, 3e6, 1e7] and narrow["lr_grid"] == [1e-3, 3e-3]
    assert narrow["lr"] == 1e-3 and narrow["lr_at_edge"] and not wide["lr_at_edge"]
    assert "worse than its own front at equal FLOPs" in "; ".join(wide["health"])  # wide names narrow as its front
    assert top["delta_vs_mixing"] == pytest.approx(TOP_DELTA)  # and as its no-mixing control
    report = path.read_text()
    assert "Against the same block without mixing (narrow) its mixer hurts by" in report
    rows = table_rows(report, "Results at the largest budget")
    assert rows["wide"]["val loss"] == f"{top['val_loss']:.4f}" and rows["wide"]["Δ vs narrow"] == f"{TOP_DELTA:+.3f}"
    assert rows["narrow"]["lr"] == "0.001 (edge)" and rows["wide"]["role"] == "subject"
    scaling = table_rows(report, "Loss against compute")["wide"]
    assert scaling["multiplier (FLOPs), fit, by budget"] == "0.25* / 0.25* / 0.25"
    assert scaling["multiplier (tokens), piecewise, by budget"] == "n/a / n/a / 0.25"
    assert "\\* extrapolated: the arm's loss lies outside the baseline's measured losses" in report
    assert "narrow's power law (FLOPs) misses its own measured losses by up to 0.000 nats/token" in report  # exact
    per_seed = table_rows(report, "Per seed at the largest budget")
    assert [per_seed["narrow"][f"loss, seed {s}"] for s in OFFSETS] == [f"{v:.4f}" for v in losses.values()]
    assert per_seed["wide"]["Δ vs narrow, seed 3"] == f"{TOP_DELTA:+.3f}"
    assert per_seed["narrow"]["Δ vs narrow, seed 1"] == "—"
    assert "- wide is worse than narrow at 1e+07 training FLOPs by" in report
    assert "wide" in main_table and "Δ vs narrow" in main_table


@pytest.mark.parametrize("d, reason", [
    ([0.31, 0.29, 0.32, 0.28, 0.30], None),                          # 5 seeds, the interval excludes zero: a claim
    ([0.31, 0.29, 0.32, 0.28], "only 4 seeds, a claim needs 5"),
    ([0.1, -0.1, 0.05, -0.05, 0.02], "the interval includes zero"),
    ([-0.1, 0.1, 0.05], "the interval includes zero; only 3 seeds, a claim needs 5"),
    ([0.3], "one seed: no interval (a claim needs 5 seeds)"),
])
def test_a_verdict_needs_five_seeds_and_an_interval_that_excludes_zero(tmp_path, d: list[float], reason: str | None):
    """wide - narrow on seed s is set to d[s] at every window: the summary holds those per-seed differences
    and their t interval, and the verdict names a direction only with 5 seeds and zero outside it."""
    seeds = list(range(1, len(d) + 1))
    text = study_text(tmp_path, tmp_path / "out", seeds=str(seeds), budget="flops = [1e6, 3e6, 1e7]")
    windows = {s: [0.0, 0.2, -0.2, 0.1] for s in seeds}
    spec, tuning, reported = write_fake_study(tmp_path, windows, {s: v - TOP_DELTA for s, v in zip(seeds, d)}, text)
    path = write_report(spec, "x", {"narrow": "gpt", "wide": "gpt"}, tmp_path / "out", tuning, reported)[0]
    report = path.read_text()
    top = json.loads((tmp_path / "out" / "summary.json").read_text())["arms"]["wide"]["budgets"][-1]
    assert top["delta_vs_baseline_by_seed"] == pytest.approx({str(s): v for s, v in zip(seeds, d)})
    interval = loop_t_interval(d) if len(d) > 1 else None
    assert top["delta_vs_baseline_ci95"] == (pytest.approx(interval, rel=1e-9) if interval else None)
    mean = sum(d) / len(d)
    shown = f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "one seed: no interval"
    verdict = report.split("## Verdict")[1].split("##")[0]
    if reason is None:
        assert f"- wide is worse than narrow at 1e+07 training FLOPs by {mean:.3f} nats/token (95% CI {shown})" \
            in verdict
        assert "Against the same block without mixing (narrow) its mixer hurts by" in verdict
    else:
        claim = f"- wide: no claim against narrow ({mean:+.3f} nats/token, 95% CI {shown}): {reason}"
        assert claim + "; the difference goes " in verdict  # how it moved over the budgets, claim or not
        assert f"Its mixer against the same block without mixing (narrow): no claim ({mean:+.3f}" in verdict
        assert "worse than" not in verdict and "hurts" not in verdict
    assert table_rows(report, "Results at the largest budget")["wide"]["Δ 95% CI"] == shown


def arm_with_losses(losses: list[float], control: bool = False):
    """An ArmSummary with only what the frontier reads: its final losses over the budgets 1e6, 1e7, 1e8."""
    entries = [BudgetEntry(b, flops=b, time_s=b / 1e5, tokens=b / 1e3, val_loss=v)
               for b, v in zip([1e6, 1e7, 1e8], losses)]
    return ArmSummary(**{**{f.name: None for f in fields(ArmSummary)}, "control": control, "budgets": entries,
                         "power_law": {}, "health": []})


def test_the_frontier_spans_the_arms_and_names_the_references_outside_it():
    """Issue 17's plot: the arms in 2.1-3.0 nats, the uniform reference ln 677 = 6.518 (the dataset's vocabulary;
    a model pads it to 704) far above them. The y-axis spans the arms with a 3% margin; the bigram lies inside
    and is drawn, the unigram and the uniform lie outside and are named in the legend only."""
    refs = Reference(uniform=math.log(677), unigram=3.188, bigram=2.566, tokens=100, bytes=100)
    arms = {"gpt": arm_with_losses([2.6, 2.4, 2.25]), "front": arm_with_losses([2.3, 2.2, 2.1]),
            "convonly": arm_with_losses([3.0, 2.8, 2.6], control=True)}
    fig = frontier_figure(Summary("s", "flops", [1e6, 1e7, 1e8], [1], [], "gpt", refs, arms))
    for ax in fig.axes:
        assert ax.get_ylim() == pytest.approx((2.1 / MARGIN, 3.0 * MARGIN))
        labels = ax.get_legend_handles_labels()[1]
        assert {"uniform ln 677 = 6.518 (above the axis)", "unigram = 3.188 (above the axis)",
                "bigram = 2.566"} <= set(labels)
        levels = [line.get_ydata()[0] for line in ax.lines if len(line.get_ydata()) == 2 and
                  line.get_ydata()[0] == line.get_ydata()[1]]  # horizontal lines
        assert levels == [pytest.approx(2.566)]
    plt.close(fig)


def test_routing_figures_are_the_medians_of_the_first_and_last_fifth_and_the_entropy_curve(tmp_path):
    """Two seeds of one arm: the update size per component is the median over the first fifth of the logged
    steps and over the last fifth, averaged over the seeds; the attention entropy is each evaluation's mean."""
    from launch.results import load_run
    from reporting.summary import routing
    steps = [[4e-2, 3e-2, 2e-2, 1e-2, 5e-3, 4e-3, 3e-3, 2e-3, 1e-3, 5e-4], [2e-2] * 5 + [1e-3] * 5]
    runs = []
    for seed, updates in enumerate(steps):
        fake_run(tmp_path / str(seed), [4.0, 3.0, 2.5], updates=updates, data={"dataset": "copy"})
        runs.append(load_run("arm", 1e-3, seed, 1e6, tmp_path / str(seed)))
    got = routing(runs)
    first = [float(np.median(u[:2])) for u in steps]  # a fifth of 10 logged steps: 2
    last = [float(np.median(u[-2:])) for u in steps]
    assert got.update["embedding"] == pytest.approx([np.mean(first), np.mean(last)], rel=1e-12)
    assert got.update["h0.attn"] == pytest.approx([2 * np.mean(first), 2 * np.mean(last)], rel=1e-12)
    assert got.entropy == {"h0": pytest.approx([1.0, 0.9, 0.8], rel=1e-12)}


def test_the_plateau_escape_is_the_first_smoothed_training_loss_below_the_bigram(tmp_path):
    """Three seeds with known training losses: the escape step is the last step of the first run of
    PLATEAU_SMOOTH logged losses whose mean is PLATEAU_MARGIN below the bigram (found here by a plain loop);
    a single low batch is not an escape, and a run that never gets there has None."""
    from launch.results import load_run
    from reporting.summary import PLATEAU_MARGIN, PLATEAU_SMOOTH, escape
    ref = Reference(uniform=math.log(256), unigram=3.2, bigram=2.5, tokens=100, bytes=100)
    curves = {1: [3.0, 2.5, 2.45, 2.35, 2.3, 2.2, 2.1, 2.0], 2: [3.0, 2.0, 2.6, 2.65, 2.5, 2.5, 2.45, 2.3],
              3: [3.0, 2.9, 2.8, 2.7, 2.6, 2.5, 2.5, 2.45]}
    runs = []
    for seed, losses in curves.items():
        fake_run(tmp_path / str(seed), [4.0, 3.0])
        with open(tmp_path / str(seed) / "metrics.jsonl", "a") as f:
            f.writelines(json.dumps({"step": 100 * (i + 1), "loss": v}) + "\n" for i, v in enumerate(losses))
        runs.append(load_run("arm", 1e-3, seed, 1e6, tmp_path / str(seed)))
    got = escape(runs, ref)

    def plain(losses):  # the fake run's own logs (loss 4.0 at steps 5 and 15) come first
        logged = [(5, 4.0), (15, 4.0)] + [(100 * (i + 1), v) for i, v in enumerate(losses)]
        for end in range(PLATEAU_SMOOTH - 1, len(logged)):
            window = [v for _, v in logged[end - PLATEAU_SMOOTH + 1:end + 1]]
            if sum(window) / PLATEAU_SMOOTH < ref.bigram - PLATEAU_MARGIN:
                return logged[end][0]
        return None
    assert got.step == {seed: plain(losses) for seed, losses in curves.items()}
    assert got.step[1] == 500 and got.step[2] is None and got.step[3] is None  # seed 2's 2.0 is one batch
    assert escape(runs, None) is None


def test_an_arm_with_its_own_baseline_is_compared_with_it(tmp_path):
    """A study of two comparisons: wide against narrow (the study's baseline), and wide2 against wide (its
    own baseline; its fake losses are narrow's, so wide2 - wide = narrow - wide on every seed and window)."""
    arms = ARMS + ('[[arm]]\nname = "wide2"\nconfig = "configs/tiny_gpt.toml"\nbaseline = "wide"\n'
                   'overrides = { model = { n_embd = 32 } }\nlrs = [1e-3, 3e-3]\n')
    text = study_text(tmp_path, tmp_path / "out", seeds=FIVE, budget="flops = [1e6, 3e6, 1e7]", arms=arms)
    spec, tuning, reported = write_fake_study(tmp_path, {s: [0.0, 0.1, -0.1] for s in OFFSETS}, 0.0, text, OFFSETS)
    path = write_report(spec, "x", {a.name: "gpt" for a in spec.arms}, tmp_path / "out", tuning, reported)[0]
    arms_json = json.loads((tmp_path / "out" / "summary.json").read_text())["arms"]
    assert arms_json["wide"]["baseline"] == "narrow" and arms_json["wide2"]["baseline"] == "wide"
    assert arms_json["wide2"]["budgets"][-1]["delta_vs_baseline"] == pytest.approx(-TOP_DELTA)
    assert arms_json["wide2"]["compute_multiplier"] == pytest.approx([4.0, 4.0, 4.0], rel=1e-9)  # wide needs 4x
    report = path.read_text()
    rows = table_rows(report, "Results at the largest budget")
    assert rows["narrow"]["role"] == "baseline" and rows["wide2"]["role"] == "subject (vs wide)"
    assert rows["wide"]["role"] == "subject (vs narrow)"  # a subject itself, and the baseline of wide2
    assert rows["wide2"]["Δ vs its baseline"] == f"{-TOP_DELTA:+.3f}"
    assert "- wide2 is better than wide at 1e+07 training FLOPs by" in report
    assert "- wide is worse than narrow at 1e+07 training FLOPs by" in report


def arm_with_differences(*pairs: tuple[float, list[float] | None]) -> ArmSummary:
    """An arm whose budgets 1e6, 1e7, ... carry these (difference to the baseline, its interval)."""
    budgets = [BudgetEntry(10.0 ** (6 + i), delta_vs_baseline=d, delta_vs_baseline_ci95=i_)
               for i, (d, i_) in enumerate(pairs)]
    return ArmSummary(**{**{f.name: None for f in fields(ArmSummary)}, "budgets": budgets})


@pytest.mark.parametrize("pairs, words", [
    ([(0.10, [0.08, 0.12]), (0.20, [0.18, 0.22])], "so the gap widens with compute"),    # the baseline's lead grows
    ([(0.20, [0.18, 0.22]), (0.10, [0.08, 0.12])], "so the gap narrows with compute"),
    ([(-0.10, [-0.12, -0.08]), (-0.30, [-0.32, -0.28])], "so the gap widens with compute"),  # the arm's lead grows
    ([(0.03, [0.02, 0.04]), (0.0, [-0.01, 0.01]), (-0.03, [-0.04, -0.02])],
     "so the lead passes from the baseline to the arm"),
    ([(-0.03, [-0.04, -0.02]), (0.03, [0.02, 0.04])], "so the lead passes from the arm to the baseline"),
    ([(0.03, [-0.01, 0.07]), (-0.03, [-0.04, -0.02])], "a change of sign that an interval including zero leaves"),
    ([(0.200, [0.1, 0.3]), (0.205, [0.1, 0.3])], "about constant"),
    ([(0.10, [0.0, 0.2]), (0.30, [0.2, 0.4]), (0.10, [0.0, 0.2])], "not monotone (largest at 1e+07)"),
    ([(0.085, [0.05, 0.12]), (0.160, [0.15, 0.17]), (0.127, [0.12, 0.14]), (0.105, [0.09, 0.12])],
     "not monotone (largest at 1e+07)"),                  # cpu_depth's attention + idea 2
])
def test_the_trend_sentence_reads_the_measured_differences(pairs, words: str):
    from reporting.verdict import trend
    sentence = trend(arm_with_differences(*pairs))
    assert words in sentence
    listed = " / ".join(f"{d:+.3f}" for d, _ in pairs)
    assert f"the difference goes {listed} from 1e+06 to {10.0 ** (5 + len(pairs)):g}" in sentence


def test_the_trend_sentence_ignores_the_power_law_and_needs_two_measured_budgets():
    """Issue 17's long-budget study: the baseline's fit through a plateau budget put the 2-layer model's
    multiplier above 1 where it was measured worse; the sentence follows the measured differences."""
    from reporting.verdict import trend
    arm = arm_with_differences((0.028, [0.02, 0.036]), (-0.032, [-0.038, -0.027]))
    arm.compute_multiplier = [1.21, 0.91]                      # a poor fit's reading, on the wrong side of 1
    assert "so the lead passes from the baseline to the arm" in trend(arm)
    assert trend(arm_with_differences((0.1, [0.0, 0.2]), (None, None))) == ""
