import json
import math
import os
import subprocess
import sys
from itertools import dropwhile, takewhile

import numpy as np
import pytest
from scipy import stats

import study
from analysis.report import write_report
from analysis.results import load_run, welch
from analysis.spec import loads_study
from schema import toml_literal
from schema import ConfigError, parse_value
from helpers import ROOT, write_char_dataset

PNG = b"\x89PNG\r\n\x1a\n"


def study_text(data_dir, out_dir, seeds="[0, 1]", budget="flops = 4e8", arms=None) -> str:
    arms = arms or ('[[arm]]\nname = "narrow"\nconfig = "configs/tiny_gpt.toml"\noverrides = { "model.n_embd" = 16 }\n'
                    '[[arm]]\nname = "wide"\nconfig = "configs/tiny_gpt.toml"\n'
                    'overrides = { model = { n_embd = 32 }, optim = { lr = 1e-2 } }\n')
    return f'''name = "tiny"
out_dir = "{out_dir}"
seeds = {seeds}
n_evals = 2
[budget]
{budget}
[common]
"data.data_dir" = "{data_dir}"
"data.dataset" = "tiny_char"
"model.block_size" = 16
"train.batch_size" = 4
"train.eval_iters" = 1
"optim.warmup_iters" = 2
{arms}'''


def run_study(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "study.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, WANDB_MODE="disabled"), timeout=900)


def table_rows(report: str, title: str) -> dict[str, dict[str, str]]:
    """The markdown table under `## title`, as {first cell: {header: cell}}."""
    lines = report.split(f"## {title}\n", 1)[1].splitlines()
    lines = dropwhile(lambda line: not line.startswith("|"), lines)  # past the section's prose
    block = list(takewhile(lambda line: line.startswith("|"), lines))
    header = [c.strip() for c in block[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in block[2:]]
    return {r[0]: dict(zip(header, r)) for r in rows}


def num(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("%"))


# ------------------------------------------------------------------ the study file

@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace('seeds =', 'sedes ='), "unknown key sedes; valid keys: name, description"),
    (lambda t: t.replace('config = "configs/tiny_gpt.toml"\noverrides', 'confg = "x"\noverrides', 1),
     "unknown key arm[0].confg; valid keys in [arm[0]]: name, config, overrides, lrs"),
    (lambda t: t.split("[[arm]]")[0], "the study has no arms"),
    (lambda t: t.replace("flops = 4e8", "flops = 4e8\ntime_s = 60"), "exactly one of flops, time_s, tokens, iters"),
    (lambda t: t.replace("flops = 4e8", ""), "comparable); got none"),
    (lambda t: t.replace('"model.block_size" = 16', '"train.seed" = 3'), "[common] sets train.seed"),
    (lambda t: t.replace('name = "wide"', 'name = "narrow"'), "arm names must be distinct"),
    (lambda t: t.replace('{ "model.n_embd" = 16 }', '{ n_embd = 16 }'), "'n_embd' needs a section"),
    (lambda t: t.replace('"configs/tiny_gpt.toml"', '"configs/nope.toml"', 1), "config file configs/nope.toml not found"),
])
def test_study_file_errors_name_the_problem(tmp_path, edit, message):
    with pytest.raises(ConfigError) as e:
        loads_study(edit(study_text(tmp_path, tmp_path / "out")))
    assert message in str(e.value)


def test_study_cli_rejects_bad_files_and_arm_configs_before_training(tmp_path):
    write_char_dataset(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text(study_text(tmp_path, tmp_path / "out").replace('"model.n_embd" = 16', '"model.n_embdd" = 16'))
    assert study.main([str(bad)]) == 2  # the first arm's config is wrong: nothing has run
    assert not (tmp_path / "out").exists()
    assert study.main([str(bad), "--only", "nope"]) == 2


@pytest.mark.parametrize("value", [1e-3, 3e-4, 2e12, 4e8, 7, True, False, "owt_sample", 'a "quoted"\\ path', [1, 2],
                                   [0.5, 2.0], float("inf")])
def test_overrides_round_trip_through_the_config_parser(value):
    assert parse_value(toml_literal(value)) == value


def test_welch_matches_scipy_and_the_formula():
    a, b = [3.10, 3.21, 3.05, 3.16], [3.40, 3.31, 3.52]
    got = welch(a, b)
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    assert got["t"] == pytest.approx(t) and got["df"] == pytest.approx(df)
    assert got["p"] == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert got["p"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert welch([3.0], b) is None  # one seed: no test


# ------------------------------------------------------------------ reports from synthetic runs

def fake_run(path, val_losses: list[float], tokens_per_step=64, fpt=1000.0, params=500, batch_size=4,
             val_accs: list[float] | None = None, model: dict | None = None, data: dict | None = None):
    """A finished run folder with the files train.py writes (no checkpoint); val_accs (one per
    evaluation) go into metrics.jsonl and the last into result.json, as train.py writes them."""
    path.mkdir(parents=True)
    evals = [{"step": 10 * i, "tokens": 10 * i * tokens_per_step, "flops": 10.0 * i * tokens_per_step * fpt,
              "time_s": 1.5 * i, "lr": 1e-3, "val_loss": v, "train_loss": v} for i, v in enumerate(val_losses)]
    for e, acc in zip(evals, val_accs or []):
        e.update(val_acc=acc, train_acc=acc)
    (path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    last = evals[-1]
    (path / "result.json").write_text(json.dumps({**{k: last.get(k) for k in ("step", "tokens", "flops", "time_s",
                                                                               "val_loss", "train_loss", "val_acc")},
                                                  "parameters": params, "flops_per_token": fpt, "tokens_per_s": 100.0,
                                                  "mfu": None, "peak_memory_bytes": 2 ** 20}))
    (path / "run.json").write_text(json.dumps({"device": "cpu", "world_size": 1, "git": {"commit": "abc"}}))
    train = {"batch_size": batch_size, "eval_iters": 1, "grad_accum": 1}
    (path / "config.json").write_text(json.dumps({"model": model or {"vocab_size": 64, "block_size": 16},
                                                  "data": data or {}, "optim": {"lr": 1e-3}, "train": train}))


def test_report_picks_the_best_lr_says_so_and_tests_against_the_baseline(tmp_path):
    spec = loads_study(study_text(tmp_path, tmp_path / "out", arms=(
        '[[arm]]\nname = "base"\nconfig = "configs/tiny_gpt.toml"\n'
        '[[arm]]\nname = "grid"\nconfig = "configs/tiny_gpt.toml"\nlrs = [1e-3, 3e-3]\n'
        '[[arm]]\nname = "single"\nconfig = "configs/tiny_gpt.toml"\n')).replace("n_evals", 'reference = ""\nn_evals'))
    finals = {("base", 1e-3): [3.0, 3.1], ("grid", 1e-3): [3.5, 3.6], ("grid", 3e-3): [3.2, 3.4],
              ("single", 1e-3): [2.9]}  # single: only seed 0 finished
    runs = []
    for (arm, lr), losses in finals.items():
        for seed in (0, 1):
            path = tmp_path / "out" / arm / f"lr{lr:g}" / f"seed{seed}"
            if seed < len(losses):
                fake_run(path, [4.2, 3.8, losses[seed]], batch_size=8 if arm == "single" else 4)
            runs.append(study.Run(arm, lr, seed, path, []))
    report = write_report(spec, "x", {"base": "gpt", "grid": "gpt", "single": "gpt"}, tmp_path / "out", runs).read_text()
    table = table_rows(report, "Results at equal budget")
    assert table["grid"]["lr"] == "0.003" and table["grid"]["final val loss"] == "3.3000 ± 0.1414"
    assert table["grid"]["p vs base (Welch)"] == f"{stats.ttest_ind([3.2, 3.4], [3.0, 3.1], equal_var=False).pvalue:.3g}"
    assert table["base"]["p vs base (Welch)"] == "baseline"
    assert table["single"]["p vs base (Welch)"] == "n/a (one seed)" and table["single"]["seeds"] == "1"
    grid = table_rows(report, "Learning-rate choice")  # keyed by arm: the last grid row is the chosen lr
    assert "lowest mean final validation loss" in report and grid["grid"]["lr"] == "0.003"
    assert grid["grid"][""] == "**chosen**"
    assert table_rows(report, "Final validation loss per seed")["single"] == {"arm": "single", "seed 0": "2.9000",
                                                                                 "seed 1": "—"}
    assert "**base**: no sample" in report  # no checkpoint: the report still comes out
    # a recipe that differs beyond the model is pointed out
    assert "tokens per optimizer step: base 64, grid 64, single 128" in report
    assert "batch_size x eval_iters x block_size: base 4 x 1 x 16, grid 4 x 1 x 16, single 8 x 1 x 16" in report


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
def test_study_writes_plots_and_a_report_that_matches_the_runs(finished_study):
    _, out, proc = finished_study
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == str(out / "report.md")  # the report's path comes last
    assert len([l for l in lines if "trained in" in l]) == 4  # 2 arms x 2 seeds, one line each
    for name in ("val_loss_vs_flops.png", "val_loss_vs_time.png", "val_loss_vs_tokens.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    report = (out / "report.md").read_text()
    table = table_rows(report, "Results at equal budget")
    finals = {}
    for arm, lr in (("narrow", "0.003"), ("wide", "0.01")):
        dirs = [out / "runs" / arm / f"lr{lr}" / f"seed{s}" for s in (0, 1)]
        last = [[json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()][-1] for d in dirs]
        result = [json.loads((d / "result.json").read_text()) for d in dirs]
        runinfo = json.loads((dirs[0] / "run.json").read_text())
        row, finals[arm] = table[arm], [m["val_loss"] for m in last]
        assert row["lr"] == lr and row["seeds"] == "2"
        assert num(row["parameters"]) == runinfo["parameters"] == result[0]["parameters"]
        assert num(row["FLOPs/token"]) == pytest.approx(runinfo["flops_per_token"], rel=1e-3)
        assert num(row["tokens seen"]) == np.mean([m["tokens"] for m in last])
        assert num(row["FLOPs spent"]) == pytest.approx(np.mean([m["flops"] for m in last]), rel=1e-3)
        assert num(row["FLOPs spent"]) >= 4e8  # the budget is spent (the last step may pass it)
        assert num(row["train time (s)"]) == pytest.approx(np.mean([m["time_s"] for m in last]), abs=0.051)
        assert row["final val loss"] == f"{np.mean(finals[arm]):.4f} ± {np.std(finals[arm], ddof=1):.4f}"
        assert num(row["tokens/s"]) == pytest.approx(np.mean([r["tokens_per_s"] for r in result]), rel=1e-3)
    p = stats.ttest_ind(finals["wide"], finals["narrow"], equal_var=False).pvalue
    assert table["wide"]["p vs narrow (Welch)"] == f"{p:.3g}"
    assert "the dataset is tokenized with 'char', not GPT-2 BPE" in report  # the GPT-2 row is skipped, with a note
    assert report.count("[continuation]") == 2


@pytest.mark.slow
def test_rerunning_a_finished_study_trains_nothing_and_rewrites_the_same_report(finished_study):
    path, out, _ = finished_study
    runs = sorted(p for p in (out / "runs").rglob("*") if p.is_file())
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in runs}
    report = (out / "report.md").read_bytes()
    plots = {p.name: p.read_bytes() for p in out.glob("*.png")}
    proc = run_study(str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("finished earlier, skipped") == 4 and "trained in" not in proc.stdout
    assert sorted(p for p in (out / "runs").rglob("*") if p.is_file()) == runs
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in runs} == before
    assert (out / "report.md").read_bytes() == report
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == plots


@pytest.mark.slow
def test_dry_run_prints_the_commands_and_a_changed_study_is_refused(finished_study, tmp_path):
    path, out, _ = finished_study
    proc = run_study(str(path), "--dry-run", "--only", "wide")
    assert proc.returncode == 0, proc.stderr
    plan, *commands = proc.stdout.strip().splitlines()
    assert plan.startswith("wide: ") and plan.endswith(" steps")  # the preflight's line per arm
    assert len(commands) == 2 and all("finished, skipped" in c for c in commands)
    for seed, command in enumerate(commands):
        assert "train.py" in command and "--train.max_flops=400000000.0" in command and "--train.n_evals=2" in command
        assert f"--train.seed={seed}" in command and "--optim.lr=0.01" in command
        assert "--train.init_from=\"auto\"" in command and "--wandb.group=\"tiny\"" in command
    changed = tmp_path / "changed.toml"
    changed.write_text(path.read_text().replace('"train.eval_iters" = 1', '"train.eval_iters" = 2'))
    proc = run_study(str(changed), "--only", "narrow")
    assert proc.returncode == 1 and "was started with other settings" in proc.stderr
    assert "--train.eval_iters=2" in proc.stderr


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
    import analysis.inference as inference
    from config import load_config
    from engine.checkpoint import load_for_inference
    from helpers import tiny_overrides
    from engine.trainer import train
    write_bpe_dataset(tmp_path)
    train(load_config(None, tiny_overrides(tmp_path, tmp_path / "run", **{"data.dataset": '"tiny_bpe"',
                                                                          "train.max_iters": 3, "train.eval_iters": 3,
                                                                          "optim.warmup_iters": 1})))
    model = load_for_inference(str(tmp_path / "run"), "cpu")[0]
    monkeypatch.setattr(inference, "load_gpt2_quietly", lambda: (model, ""))
    run = load_run("gpt", 3e-3, 1337, tmp_path / "run")
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
    path.write_text(study_text(tmp_path, tmp_path / "out", arms=f'[[arm]]\nname = "timed"\nconfig = "{config}"\n'))
    assert study.main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("timed: ") and out[0].endswith(" steps")
    steps = int(out[0].split(", ")[-1].split()[0].replace(",", ""))
    fpt = float(out[0].split(": ")[1].split()[0])
    assert steps == math.ceil(4e8 / (4 * 16 * fpt))  # batch 4 x block 16 tokens per step
    assert "--train.max_time_s=0.0" in out[1] and "--train.max_flops=400000000.0" in out[1]
