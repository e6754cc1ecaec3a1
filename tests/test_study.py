"""The study runner: the study file, the run plan (tuning seeds, budgets sharing one wsd run), the lr
choice, the summary's health flags, and a whole study end to end (the summary's statistics and the
report against summary.json: tests/test_summary.py)."""
import json
import math
import os
import subprocess
import sys
from itertools import dropwhile, takewhile

import numpy as np
import pytest

import study
from config import OptimConfig, TrainConfig
from engine.budget import Budget
from helpers import ROOT, write_char_dataset
from launch.plan import report_runs, tuning_runs
from launch.results import choose_lrs, load_run
from launch.spec import loads_study
from schema import ConfigError, parse_value, toml_literal

PNG = b"\x89PNG\r\n\x1a\n"
ARMS = ('[[arm]]\nname = "narrow"\nconfig = "configs/tiny_gpt.toml"\noverrides = { "model.n_embd" = 16 }\n'
        'lrs = [1e-3, 3e-3]\n'
        '[[arm]]\nname = "wide"\nconfig = "configs/tiny_gpt.toml"\nfront = "narrow"\nmixing = "narrow"\n'
        'overrides = { model = { n_embd = 32 }, optim = { lr = 1e-2 } }\n')


def study_text(data_dir, out_dir, seeds="[1, 2]", budget="flops = [1e8, 3e8]", arms=ARMS, extra="") -> str:
    return f'''name = "tiny"
out_dir = "{out_dir}"
seeds = {seeds}
tune_seeds = [0]
n_evals = 2
reference = ""
{extra}
[budget]
{budget}
[common]
"data.data_dir" = "{data_dir}"
"data.dataset" = "tiny_char"
"model.block_size" = 16
"train.batch_size" = 4
"train.eval_iters" = 2
"optim.warmup_iters" = 2
{arms}'''


def run_study(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "study.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, WANDB_MODE="disabled"), timeout=900)


def table_rows(report: str, title: str) -> dict[str, dict[str, str]]:
    """The markdown table under the heading that starts with `## title`, as {first cell: {header: cell}}."""
    lines = report.split(f"## {title}", 1)[1].splitlines()[1:]
    lines = dropwhile(lambda line: not line.startswith("|"), lines)  # past the section's prose
    block = list(takewhile(lambda line: line.startswith("|"), lines))
    header = [c.strip() for c in block[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in block[2:]]
    return {r[0]: dict(zip(header, r)) for r in rows}


# ------------------------------------------------------------------ the study file

@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace('seeds = [1', 'sedes = [1'), "unknown key sedes; valid keys: name, description"),
    (lambda t: t.replace('config = "configs/tiny_gpt.toml"\noverrides', 'confg = "x"\noverrides', 1),
     "unknown key arm[0].confg; valid keys in [arm[0]]: name, config, overrides, lrs"),
    (lambda t: t.split("[[arm]]")[0], "the study has no arms"),
    (lambda t: t.replace("flops = [1e8, 3e8]", "flops = 4e8\ntime_s = 60"), "exactly one of flops, time_s"),
    (lambda t: t.replace("flops = [1e8, 3e8]", ""), "comparable); got none"),
    (lambda t: t.replace("flops = [1e8, 3e8]", "flops = [1e8, 1e8]"), "must be positive and distinct"),
    (lambda t: t.replace("tune_seeds = [0]", "tune_seeds = [1]"), "disjoint from seeds"),
    (lambda t: t.replace('front = "narrow"', 'front = "nope"'), "front = 'nope' is not an arm"),
    (lambda t: t.replace('"model.block_size" = 16', '"train.seed" = 3'), "[common] sets train.seed"),
    (lambda t: t.replace('"model.block_size" = 16', '"optim.schedule" = "cosine"'), "[common] sets optim.schedule"),
    (lambda t: t.replace('name = "wide"', 'name = "narrow"'), "arm names must be distinct"),
    (lambda t: t.replace('{ "model.n_embd" = 16 }', '{ n_embd = 16 }'), "'n_embd' needs a section"),
    (lambda t: t.replace('"configs/tiny_gpt.toml"', '"configs/nope.toml"', 1), "config file configs/nope.toml not found"),
])
def test_study_file_errors_name_the_problem(tmp_path, edit, message):
    with pytest.raises(ConfigError) as e:
        loads_study(edit(study_text(tmp_path, tmp_path / "out")))
    assert message in str(e.value)


def test_study_cli_rejects_bad_files_and_arm_configs_before_training(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(study_text(tmp_path, tmp_path / "out").replace('"model.block_size" = 16', '"model.n_layr" = 2'))
    proc = run_study(str(bad))
    assert proc.returncode == 2 and "arm narrow (configs/tiny_gpt.toml): unknown key model.n_layr" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
    proc = run_study(str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and "the ready-made ones are in configs/studies/" in proc.stderr


@pytest.mark.parametrize("value", [1e-3, 3, True, "a \"quoted\" string", [1, 2], 2.5e-7, 10 ** 6])
def test_overrides_round_trip_through_the_config_parser(value):
    assert parse_value(toml_literal(value)) == value


def test_study_help_lists_every_study_file_key(capsys):
    with pytest.raises(SystemExit):
        study.parse_args(["--help"])
    out = capsys.readouterr().out
    for key in ("tune_seeds", "share_runs", "budget.flops", "arm.lrs", "arm.front", "arm.control", "sample.top_k"):
        assert key in out, key


# ------------------------------------------------------------------ the plan

def steps_for(budgets, fpt: float = 1000.0, tokens_per_step: int = 64) -> dict[float, Budget]:
    optim = OptimConfig(schedule="wsd", warmup_iters=2)
    return {b: Budget(TrainConfig(max_flops=b), optim, tokens_per_step, fpt) for b in budgets}


def test_budgets_share_one_wsd_run_per_arm_lr_and_seed(tmp_path):
    spec = loads_study(study_text(tmp_path, tmp_path / "out", budget="flops = [1e6, 3e6, 1e7]"))
    steps = {a.name: steps_for(spec.budget.values) for a in spec.arms}
    runs = tuning_runs(spec, steps)
    assert {(r.arm, r.lr, r.seed) for r in runs} == {("narrow", 1e-3, 0), ("narrow", 3e-3, 0)}  # the tuning seed only
    top, *branches = [r for r in runs if r.lr == 1e-3]
    assert top.budget == 1e7 and top.fork is None and [b.budget for b in branches] == [3e6, 1e6]
    forks = [steps["narrow"][b].decay_start for b in (1e6, 3e6)]
    assert f"--train.fork_steps={toml_literal(forks)}" in top.args and '--optim.schedule="wsd"' in top.args
    for b in branches:
        assert b.fork == (top.out_dir, steps["narrow"][b.budget].decay_start)
        assert f"--train.max_flops={b.budget!r}" in b.args and not any("fork_steps" in a for a in b.args)
    separate = loads_study(study_text(tmp_path, tmp_path / "out", extra="share_runs = false"))
    assert all(r.fork is None and not any("schedule" in a for a in r.args)
               for r in tuning_runs(separate, {a.name: steps_for(separate.budget.values) for a in separate.arms}))


def test_tuning_runs_score_one_half_of_the_validation_documents_and_reported_runs_the_other(tmp_path):
    spec = loads_study(study_text(tmp_path, tmp_path / "out", budget="flops = [1e6, 3e6]"))
    steps = {a.name: steps_for(spec.budget.values) for a in spec.arms}
    tune, report = tuning_runs(spec, steps), report_runs(spec, {"narrow": {1e6: 1e-3, 3e6: 1e-3}},
                                                         {"narrow": 1e-3, "wide": 1e-2}, steps)
    assert tune and all('--train.eval_split="val_tune"' in r.args for r in tune)
    assert report and all('--train.eval_split="val_report"' in r.args for r in report)
    on_reported = loads_study(study_text(tmp_path, tmp_path / "out").replace("tune_seeds = [0]", "tune_seeds = []"))
    assert all('--train.eval_split="val_report"' in r.args
               for r in tuning_runs(on_reported, {a.name: steps_for(on_reported.budget.values) for a in on_reported.arms}))


def test_reported_runs_follow_the_lr_chosen_per_budget(tmp_path):
    spec = loads_study(study_text(tmp_path, tmp_path / "out", budget="flops = [1e6, 3e6, 1e7]"))
    steps = {a.name: steps_for(spec.budget.values) for a in spec.arms}
    chosen = {"narrow": {1e6: 3e-3, 3e6: 3e-3, 1e7: 1e-3}}
    runs = report_runs(spec, chosen, {"narrow": 1e-3, "wide": 1e-2}, steps)
    narrow = {(r.lr, r.seed, r.budget): r for r in runs if r.arm == "narrow"}
    assert set(narrow) == {(lr, s, b) for s in (1, 2) for lr, b in [(3e-3, 1e6), (3e-3, 3e6), (1e-3, 1e7)]}
    assert narrow[(3e-3, 1, 1e6)].fork[0] == narrow[(3e-3, 1, 3e6)].out_dir  # a ladder per lr
    assert narrow[(1e-3, 1, 1e7)].fork is None
    assert {(r.lr, r.budget) for r in runs if r.arm == "wide"} == {(1e-2, b) for b in (1e6, 3e6, 1e7)}


def fake_run(path, val_losses: list[float], windows: list[float] | None = None, fpt=1000.0, params=500,
             tokens_per_step=64, val_accs: list[float] | None = None, model: dict | None = None,
             data: dict | None = None, batch_size=4, updates: list[float] = (1e-2, 5e-3), final: dict | None = None):
    """A finished run folder with the files train.py writes (no checkpoint). windows: the final
    evaluation's per-window losses (default: all equal to the last val loss); updates: the relative update
    size of the embedding at each logged step (its attention's is twice that); final: result.json
    fields to set (e.g. flops)."""
    path.mkdir(parents=True)
    evals = [{"step": 10 * i, "tokens": 10 * i * tokens_per_step, "flops": 10.0 * i * tokens_per_step * fpt,
              "time_s": 1.5 * i, "lr": 1e-3, "val_loss": v, "train_loss": v} for i, v in enumerate(val_losses)]
    for e, acc in zip(evals, val_accs or []):
        e.update(val_acc=acc, train_acc=acc)
    for i, e in enumerate(evals):
        e["attn_entropy_h0"] = 1.0 - 0.1 * i
    logs = [{"step": 5 + 10 * i, "loss": 4.0, "grad_norm": 2.0, "update_embedding": u, "update_h0.attn": 2 * u}
            for i, u in enumerate(updates)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals + logs))
    last = evals[-1]
    windows = windows if windows is not None else [val_losses[-1]] * 8
    (path / "result.json").write_text(json.dumps({
        **{k: last.get(k) for k in ("step", "tokens", "flops", "time_s", "val_loss", "train_loss", "val_acc")},
        "parameters": params, "flops_per_token": fpt, "tokens_per_s": 100.0, "mfu": None, "peak_memory_bytes": 2 ** 20,
        "val_window_losses": windows, "val_loss_by_position": [val_losses[-1] + 0.1, val_losses[-1] - 0.1],
        **(final or {})}))
    (path / "run.json").write_text(json.dumps({"device": "cpu", "world_size": 1, "git": {"commit": "abc"}}))
    train = {"batch_size": batch_size, "eval_iters": 1, "grad_accum": 1}
    (path / "config.json").write_text(json.dumps({"model": model or {"vocab_size": 64, "block_size": 16},
                                                  "data": data or {"dataset": "copy"}, "optim": {"lr": 1e-3},
                                                  "train": train}))


def test_the_lr_is_chosen_per_budget_on_the_tuning_seeds(tmp_path):
    spec = loads_study(study_text(tmp_path, tmp_path / "out", budget="flops = [1e6, 3e6, 1e7]"))
    runs = tuning_runs(spec, {a.name: steps_for(spec.budget.values) for a in spec.arms})
    losses = {1e-3: {1e6: 3.0, 3e6: 2.8, 1e7: 2.6}, 3e-3: {1e6: 2.9, 3e6: 2.85, 1e7: 2.5}}
    for r in runs:
        if (r.lr, r.budget) == (3e-3, 1e7):  # diverged: left out of the choice
            r.out_dir.mkdir(parents=True)
            (r.out_dir / "diverged.json").write_text("{}")
        else:
            fake_run(r.out_dir, [4.0, losses[r.lr][r.budget]])
    assert choose_lrs(runs) == {"narrow": {1e6: 3e-3, 3e6: 1e-3, 1e7: 1e-3}}


def test_health_flags_an_arm_stuck_at_the_unigram_while_its_front_passes_the_bigram():
    from reporting.references import Reference
    from reporting.summary import BudgetEntry, health
    ref = Reference(uniform=6.5, unigram=3.2, bigram=2.5, tokens=100, bytes=100)
    front = BudgetEntry(1.0, val_loss=2.1)
    assert health(BudgetEntry(1.0, val_loss=3.18), front, ref) == [
        "stuck at the unigram level while its front passes the bigram"]
    assert health(BudgetEntry(1.0, val_loss=2.4), front, ref) == []
    worse = dict(val_loss=2.4, delta_vs_front=0.3, delta_vs_front_ci95=[0.2, 0.4], eval_se=0.02)
    assert health(BudgetEntry(1.0, **worse), front, ref) == [
        "worse than its own front at equal FLOPs by 0.300 nats/token (95% CI 0.200 to 0.400)"]
    per_token = BudgetEntry(1.0, **worse, front_equal_tokens=0.05)  # beyond twice the evaluation noise: flagged
    assert health(per_token, front, ref)[0] == "worse than its own front at equal tokens by 0.050 nats/token"
    assert len(health(BudgetEntry(1.0, **worse, front_equal_tokens=0.03), front, ref)) == 1  # within noise


def test_the_front_at_equal_tokens_is_read_off_its_budgets():
    from reporting.summary import BudgetEntry, at_equal_tokens
    front = [BudgetEntry(1.0, tokens=1e4, val_loss=3.0), BudgetEntry(2.0, tokens=1e6, val_loss=2.0)]
    assert at_equal_tokens(BudgetEntry(1.0, tokens=1e5, val_loss=2.6), front) == pytest.approx(0.1)  # midway
    assert at_equal_tokens(BudgetEntry(1.0, tokens=1e7, val_loss=2.6), front) is None  # outside the front's range


def test_summary_json_leaves_out_what_was_not_computed():
    """A figure an entry could not compute has no key; one computed as undefined is null."""
    from reporting.summary import BudgetEntry, to_json
    assert to_json(BudgetEntry(1.0)) == {"budget": 1.0, "lr": None, "lr_at_edge": False, "seeds": [], "flops": None,
                                         "time_s": None, "tokens": None, "val_loss": None}
    one_seed = to_json(BudgetEntry(1.0, seeds=[1], val_loss=2.0, val_loss_by_seed={1: 2.0}, delta_vs_front=0.1))
    assert one_seed["val_loss_ci95"] is None and one_seed["delta_vs_front_ci95"] is None  # one seed: no interval
    assert "delta_vs_baseline_ci95" not in one_seed  # no baseline to compare with
    compared = to_json(BudgetEntry(1.0, eval_se=0.1, compared_to_front=True))
    assert list(compared)[-2:] == ["eval_se", "front_equal_tokens"] and compared["front_equal_tokens"] is None


# ------------------------------------------------------------------ a whole study, end to end

@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    write_char_dataset(root / "data")
    path = root / "tiny.toml"
    path.write_text(study_text(root / "data", root / "out"))
    proc = run_study(str(path))
    assert proc.returncode == 0, proc.stderr
    return path, root / "out", proc


@pytest.mark.slow
def test_study_trains_tuning_then_reported_runs_and_reports_them(finished_study):
    _, out, proc = finished_study
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == str(out / "report.md")  # the report's path comes last, the main table just before
    assert lines[-4].startswith("| narrow | baseline") and lines[-3].startswith("| wide | subject")
    trained = [line for line in lines if "trained in" in line]
    assert sum(" tune " in line for line in trained) == 2 * 2  # 2 lrs x 1 tuning seed x 2 budgets
    assert sum(" report " in line for line in trained) == 2 * 2 * 2  # 2 arms x 2 seeds x 2 budgets
    for name in ("val_loss_vs_flops.png", "frontier.png", "loss_by_position.png"):
        assert (out / name).read_bytes().startswith(PNG)
    summary = json.loads((out / "summary.json").read_text())
    refs = summary["references"]
    assert refs["bigram"] < refs["unigram"] < refs["uniform"] == pytest.approx(math.log(59))
    assert "a uniform guess over the 59 ids of the dataset (ln V)" in (out / "report.md").read_text()  # model: 64
    lr = summary["arms"]["narrow"]["lr"]
    for arm in ("narrow", "wide"):
        for entry in summary["arms"][arm]["budgets"]:
            runs = [load_run(arm, entry["lr"], s, entry["budget"], out / "runs" / arm / f"lr{entry['lr']:g}" / f"seed{s}"
                             / f"{entry['budget']:g}") for s in (1, 2)]
            assert entry["val_loss"] == pytest.approx(np.mean([r.result["val_loss"] for r in runs]))
            assert entry["flops"] >= entry["budget"]  # the budget is spent (the last step may pass it)
            assert entry["bits_per_byte"] == pytest.approx(entry["val_loss"] * refs["tokens"] / (refs["bytes"] * math.log(2)))
    rows = table_rows((out / "report.md").read_text(), "Results at the largest budget")
    assert rows["narrow"]["lr"].startswith(f"{lr:g}") and rows["wide"]["lr"] == "0.01"


@pytest.mark.slow
def test_a_budget_continued_from_a_fork_matches_the_ladder(finished_study):
    """The smaller budget's reported run started from the larger one's checkpoint at its decay start."""
    _, out, _ = finished_study
    seed_dir = out / "runs" / "wide" / "lr0.01" / "seed1"
    small, large = sorted((d for d in seed_dir.iterdir()), key=lambda d: float(d.name))
    fork_step = int(next((large / "forks").iterdir()).name)
    small_lines = [json.loads(l) for l in (small / "metrics.jsonl").read_text().splitlines()]
    assert min(line["step"] for line in small_lines) > fork_step  # it continued, it did not start over
    assert json.loads((small / "result.json").read_text())["flops"] >= float(small.name)


@pytest.mark.slow
def test_rerunning_a_finished_study_trains_nothing_and_rewrites_the_same_report(finished_study):
    path, out, _ = finished_study
    runs = sorted(p for p in (out / "runs").rglob("*") if p.is_file())
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in runs}
    report, summary = (out / "report.md").read_bytes(), (out / "summary.json").read_bytes()
    plots = {p.name: p.read_bytes() for p in out.glob("*.png")}
    proc = run_study(str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("finished earlier, skipped") == 12 and "trained in" not in proc.stdout
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in runs} == before
    assert (out / "report.md").read_bytes() == report and (out / "summary.json").read_bytes() == summary
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == plots


@pytest.mark.slow
def test_dry_run_prints_the_commands_and_a_changed_study_is_refused(finished_study, tmp_path):
    path, out, _ = finished_study
    proc = run_study(str(path), "--dry-run", "--only", "wide")
    assert proc.returncode == 0, proc.stderr
    commands = [line for line in proc.stdout.splitlines() if line.startswith("python train.py")]
    assert len(commands) == 4 and all("# finished" in c for c in commands)  # wide: 2 seeds x 2 budgets, no tuning
    assert all("--optim.lr=0.01" in c and '--optim.schedule="wsd"' in c and '--train.init_from="auto"' in c
               for c in commands)
    changed = tmp_path / "changed.toml"
    changed.write_text(path.read_text().replace('"train.eval_iters" = 2', '"train.eval_iters" = 3'))
    proc = run_study(str(changed), "--only", "narrow")
    assert proc.returncode == 1 and "was started with other settings" in proc.stderr
    assert "--train.eval_iters=3" in proc.stderr


def write_bpe_dataset(root, name="tiny_bpe"):
    """A GPT-2 BPE dataset in the loader's format, written by hand from the tiny Shakespeare text."""
    from data.tokenizer import GPT2Tokenizer
    tok = GPT2Tokenizer()
    ids = np.array(tok.encoding.encode_ordinary((ROOT / "data" / "corpora" / "tinyshakespeare.txt").read_text()[:20000])
                   + [tok.eot], dtype=np.uint16)
    n_train = int(0.9 * len(ids))
    folder = root / name
    folder.mkdir(parents=True)
    ids[:n_train].tofile(folder / "train.bin")
    ids[n_train:].tofile(folder / "val.bin")
    (folder / "meta.json").write_text(json.dumps({"name": name, "tokenizer": "gpt2", "vocab_size": 50257, "eot": tok.eot,
                                                  "dtype": "uint16", "train_tokens": n_train,
                                                  "val_tokens": len(ids) - n_train}))


def test_gpt2_reference_scores_exactly_the_windows_train_py_evaluates(tmp_path, monkeypatch):
    """Handed the run's own final model in place of GPT-2, the reference must reproduce the run's final
    val_loss: proof that the reference line is measured on the arms' own validation windows."""
    import reporting.inference as inference
    from config import load_config
    from engine.checkpoint import load_for_inference
    from engine.trainer import train
    from helpers import tiny_overrides
    write_bpe_dataset(tmp_path)
    train(load_config(None, tiny_overrides(tmp_path, tmp_path / "run", **{"data.dataset": '"tiny_bpe"',
                                                                          "train.max_iters": 3, "train.eval_iters": 3,
                                                                          "optim.warmup_iters": 1})))
    model = load_for_inference(str(tmp_path / "run"), "cpu")[0]
    monkeypatch.setattr(inference, "load_gpt2_quietly", lambda: (model, ""))
    run = load_run("gpt", 3e-3, 1337, 3, tmp_path / "run")
    cache = inference.Cache(tmp_path / "cache.json")
    value, why = inference.gpt2_reference(run, cache)
    assert why == "" and value["tokens"] == 3 * 4 * 32
    assert value["loss"] == pytest.approx(run.result["val_loss"], rel=1e-5)
    monkeypatch.setattr(inference, "load_gpt2_quietly", lambda: (None, "must not be called: cached"))
    assert inference.gpt2_reference(run, inference.Cache(tmp_path / "cache.json"))[0] == value


def test_a_budget_in_an_arm_config_is_replaced_not_added_to(tmp_path, capsys):
    """An arm config may carry its own budget (e.g. max_time_s); the study's must replace it, and the
    preflight prints the steps each arm will get."""
    write_char_dataset(tmp_path)
    config = tmp_path / "timed.toml"
    config.write_text(f'base = "{ROOT / "configs" / "tiny_gpt.toml"}"\n[train]\nmax_time_s = 100.0\n')
    path = tmp_path / "s.toml"
    path.write_text(study_text(tmp_path, tmp_path / "out", budget="flops = 4e8",
                               arms=f'[[arm]]\nname = "timed"\nconfig = "{config}"\n'))
    assert study.main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("timed: ") and out[0].endswith(" steps")
    steps = int(out[0].split(", ")[-1].split()[0].replace(",", ""))
    fpt = float(out[0].split(": ")[1].split()[0])
    assert steps == math.ceil(4e8 / (4 * 16 * fpt))  # batch 4 x block 16 tokens per step
    command = next(line for line in out if line.startswith("python train.py"))
    assert "--train.max_time_s=0.0" in command and "--train.max_flops=400000000.0" in command


@pytest.mark.slow
def test_two_jobs_at_once_train_the_same_runs(finished_study, tmp_path):
    """jobs = 2: ladders train in two worker processes; every run ends exactly as it did one at a time."""
    path, out, _ = finished_study
    parallel = tmp_path / "parallel.toml"
    parallel.write_text(path.read_text().replace(f'out_dir = "{out}"', f'out_dir = "{tmp_path / "out"}"\njobs = 2'))
    proc = run_study(str(parallel))
    assert proc.returncode == 0, proc.stderr
    assert ", 2 at a time" in proc.stdout
    results = sorted((out / "runs").rglob("result.json"))
    assert len(results) == 12
    for r in results:
        twin = tmp_path / "out" / r.relative_to(out)
        assert json.loads(twin.read_text())["val_loss"] == json.loads(r.read_text())["val_loss"], r


def test_lrs_tuned_at_a_smaller_budget_carry_over_to_the_larger_ones(tmp_path):
    """tune_budget: tuning ladders stop there; a larger budget trains at the lr tuned at the largest tuned
    budget, and its cell shows that budget's grid."""
    from launch.plan import lr_for
    from reporting.cells import cells
    text = study_text(tmp_path, tmp_path / "out", budget="flops = [1e6, 3e6, 1e7]", extra="tune_budget = 3e6")
    spec = loads_study(text)
    steps = {a.name: steps_for(spec.budget.values) for a in spec.arms}
    tuning = tuning_runs(spec, steps)
    assert {r.budget for r in tuning} == {1e6, 3e6} and max(r.budget for r in tuning if r.fork is None) == 3e6
    chosen = {"narrow": {1e6: 1e-3, 3e6: 3e-3}}
    assert lr_for(chosen, "narrow", 1e7) == (3e-3, 3e6) and lr_for(chosen, "narrow", 1e6) == (1e-3, 1e6)
    reported = report_runs(spec, chosen, {"narrow": 1e-3, "wide": 1e-2}, steps)
    assert {(r.lr, r.budget) for r in reported if r.arm == "narrow"} == {(1e-3, 1e6), (3e-3, 3e6), (3e-3, 1e7)}
    for r in tuning:
        fake_run(r.out_dir, [4.0, 3.0 if r.lr == 3e-3 else 3.5])
    for r in reported:
        fake_run(r.out_dir, [4.0, 2.5])
    table = cells(["narrow"], spec.budget.values, tuning, reported, spec.seeds)
    top = table[("narrow", 1e7)]
    assert top.lr == 3e-3 and [g.lr for g in top.grid] == [1e-3, 3e-3] and top.at_edge
    assert {r.seed for r in top.runs} == {1, 2}  # the reported seeds, never the tuning seed


def test_without_tuning_seeds_the_tuning_runs_are_reported(tmp_path):
    text = study_text(tmp_path, tmp_path / "out", budget="flops = [1e6, 1e7]").replace("tune_seeds = [0]", "")
    spec = loads_study(text)
    steps = {a.name: steps_for(spec.budget.values) for a in spec.arms}
    tuning = tuning_runs(spec, steps)
    assert {r.seed for r in tuning} == {1, 2}
    reported = report_runs(spec, {"narrow": {1e6: 1e-3, 1e7: 1e-3}}, {"narrow": 1e-3, "wide": 1e-2}, steps)
    assert {r.arm for r in reported} == {"wide"}  # narrow's reported runs are its tuning runs
    from reporting.cells import cells
    for r in tuning + reported:
        fake_run(r.out_dir, [4.0, 3.0 if r.lr == 1e-3 else 3.5])
    table = cells(["narrow", "wide"], spec.budget.values, tuning, reported, spec.seeds)
    assert table[("narrow", 1e7)].lr == 1e-3 and len(table[("narrow", 1e7)].runs) == 2


def test_a_run_trained_under_other_code_defaults_is_refused_not_reported(tmp_path):
    """Arguments unchanged, but what they resolve to changed (a default moved in the code): the finished
    run is stale, and the study stops with the setting that moved and the fix."""
    from dataclasses import asdict

    from launch.plan import PlanError, Run, check_same_settings
    from config import load_config
    args = ["configs/char_image.toml", "--optim.lr=0.001"]
    run = Run("idea1", 1e-3, 0, 1.0, tmp_path, args)
    trained = json.loads(json.dumps(asdict(load_config(ROOT / args[0], args[1:]))))
    trained["model"]["vocab_size"] = 704  # resolved from the data at train time: not a change
    (tmp_path / "config.json").write_text(json.dumps(trained))
    check_same_settings(run)  # the same settings: accepted
    trained["model"]["cnn_norm"] = "none"
    (tmp_path / "config.json").write_text(json.dumps(trained))
    with pytest.raises(PlanError, match=r"a default changed in the code: model.cnn_norm: 'none' -> 'group'\); "
                                        r"delete that folder"):
        check_same_settings(run)


@pytest.mark.slow
def test_a_killed_study_stops_its_workers_and_resumes(tmp_path):
    """kill (SIGTERM) of study.py stops the worker processes with it, not only the parent (orphans would
    train on, on CPUs or GPUs nobody watches), and the same command then resumes."""
    import signal
    import time
    write_char_dataset(tmp_path / "data")
    path = tmp_path / "s.toml"
    path.write_text(study_text(tmp_path / "data", tmp_path / "out", seeds="[1]", budget="iters = 3000",
                               extra="jobs = 2"))
    proc = subprocess.Popen([sys.executable, str(ROOT / "study.py"), str(path)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env=dict(os.environ, WANDB_MODE="disabled"))
    deadline = time.time() + 120
    while not list((tmp_path / "out").rglob("ckpt_*.pt")) and time.time() < deadline:
        time.sleep(0.5)  # until a worker has trained far enough to checkpoint
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted; rerun the same command to resume" in err
    for _ in range(40):  # every process of the study's session is gone
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.25)
    else:
        pytest.fail("study.py's worker processes outlived it")
    resumed = run_study(str(path), "--dry-run")
    assert resumed.returncode == 0, resumed.stderr
