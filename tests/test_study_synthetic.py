"""The study runner on synthetic tasks (data/synthetic.py): nothing to prepare, a preflight that sizes
their vocabulary, and a report of accuracy against difficulty instead of decoded samples."""
import json

import pytest

import study
from helpers import ROOT, write_char_dataset
from launch.plan import Run
from launch.spec import loads_study
from reporting.cells import cells
from reporting.report import write_report
from reporting.sweep import find_sweep
from test_study import PNG, fake_run, table_rows

ACC_PLOTS = ("val_acc_vs_task_pairs.png", "val_acc_vs_block_size.png", "val_acc_vs_width.png", "val_acc_vs_tokens.png")


def copy_study(out_dir, arms: dict[str, str], extra: str = "") -> str:
    """A study of tiny GPTs on the copy task; arms: {name: overrides}."""
    text = f'''name = "tinycopy"
out_dir = "{out_dir}"
seeds = [0]
n_evals = 2
{extra}
[budget]
iters = 30
[common]
"data.dataset" = "copy"
"model.block_size" = 16
"model.n_embd" = 16
"train.batch_size" = 8
"train.eval_iters" = 2
"optim.warmup_iters" = 5
'''
    return text + "".join(f'[[arm]]\nname = "{name}"\nconfig = "configs/tiny_copy_gpt.toml"\noverrides = {{ {o} }}\n'
                          for name, o in arms.items())


ARMS = {"gpt_K2": '"data.task_pairs" = 2', "gpt_K4": '"data.task_pairs" = 4',
        "gpt_K4_w32": '"data.task_pairs" = 4, "model.n_embd" = 32'}


def test_a_synthetic_study_prepares_nothing_and_is_checked_before_training(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(copy_study(tmp_path / "out", ARMS))
    assert study.main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert not any("prepare.py" in line for line in out)  # copy is generated on the fly
    assert [line.split(":")[0] for line in out[:3]] == list(ARMS)  # each arm's preflight line, vocabulary sized
    assert all(line.endswith(" 30 steps") for line in out[:3])
    assert sum(line.startswith("python train.py") for line in out) == 3
    path.write_text(copy_study(tmp_path / "out", {"too_short": '"data.task_pairs" = 9'}))
    assert study.main([str(path), "--dry-run"]) == 2  # 9 symbols and their copy do not fit in 16 tokens
    assert "arm too_short: copy: model.block_size = 16 cannot hold 9 symbols" in capsys.readouterr().err


STUDY_FILES = sorted((ROOT / "configs" / "studies").glob("*.toml"))


@pytest.mark.parametrize("path", STUDY_FILES, ids=[p.stem for p in STUDY_FILES])
def test_every_study_file_passes_its_preflight(path, tmp_path, capsys):
    """Every arm's config builds, its budget fits its warm-up, its batch its world size: checked before
    anyone spends an hour on it (the OpenWebText studies need no data for this)."""
    text = path.read_text()
    (tmp_path / path.name).write_text(f'out_dir = "{tmp_path / "out"}"\n' + text)
    assert study.main([str(tmp_path / path.name), "--dry-run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out.splitlines()
    arms = text.count("[[arm]]")
    assert sum(line.split(":")[0] in text for line in out if "training FLOPs/token" in line) == arms


# One-at-a-time sweep around K = 4, T = 32, width 64, plus an arm off both axes; two seeds each.
FAKE = {  # arm: (model, K, T, width, [val_acc per seed])
    "gpt_K2": ("gpt", 2, 32, 64, [1.0, 0.9]), "gpt_K4": ("gpt", 4, 32, 64, [0.8, 0.6]),
    "gpt_T64": ("gpt", 4, 64, 64, [0.5, 0.5]), "gpt_w32": ("gpt", 4, 32, 32, [0.4, 0.2]),
    "sum_K4": ("image_sum", 4, 32, 64, [0.3, 0.3]), "sum_K2_T64": ("image_sum", 2, 64, 64, [0.25, 0.25]),
}


def fake_study(tmp_path):
    arms = "".join(f'[[arm]]\nname = "{a}"\nconfig = "configs/tiny_copy_gpt.toml"\n' for a in FAKE)
    spec = loads_study(f'name = "fake"\nseeds = [0, 1]\nbaseline = "gpt_K4"\n[budget]\niters = 10\n{arms}')
    runs = []
    for arm, (model, K, T, width, accs) in FAKE.items():
        for seed, acc in enumerate(accs):
            path = tmp_path / "out" / arm / f"seed{seed}"
            fake_run(path, [4.0, 2.0 - acc + 0.01 * seed], val_accs=[0.0, acc],
                     model={"name": model, "block_size": T, "n_embd": width, "vocab_size": 64},
                     data={"dataset": "copy", "task_pairs": K, "task_vocab": 64})
            runs.append(Run(arm, 1e-3, seed, 10, path, []))
    return spec, runs


def test_report_of_fake_synthetic_runs_tabulates_accuracy_against_difficulty(tmp_path):
    spec, runs = fake_study(tmp_path)
    report = write_report(spec, "x", {a: m[0] for a, m in FAKE.items()}, tmp_path / "out", [], runs)[0].read_text()
    results = table_rows(report, "Results at the largest budget")
    assert results["gpt_K4"]["val acc"] == "0.7000" and results["sum_K4"]["val acc"] == "0.3000"
    acc = table_rows(report, "Accuracy against difficulty")
    assert list(acc) == ["gpt w64", "gpt w32", "image_sum w64"]  # rows in study order
    assert acc["gpt w64"] == {"model, width": "gpt w64", "centre: K=4 T=32 V=64": "0.7000", "K=2": "0.9500",
                              "T=64": "0.5000", "K=2 T=64": "—"}
    assert acc["gpt w32"]["centre: K=4 T=32 V=64"] == "0.3000" and acc["gpt w32"]["K=2"] == "—"
    assert acc["image_sum w64"]["K=2 T=64"] == "0.2500"  # off both axes: in the table, in no plot
    for name in ACC_PLOTS:
        assert (tmp_path / "out" / name).read_bytes().startswith(PNG) and f"]({name})" in report
    assert "None: the arms train on synthetic tasks" in report and "no sample" not in report
    assert "the arms train on the synthetic task 'copy'" in report  # the GPT-2 reference row is skipped
    sweep = find_sweep(list(cells(list(FAKE), [10], [], runs, [0, 1]).values()))
    assert sweep.slice("data.task_pairs") == {"gpt w64": [(2, 0.95, 0.9, 1.0), (4, 0.7, 0.6, 0.8)],
                                              "gpt w32": [(4, pytest.approx(0.3), 0.2, 0.4)],
                                              "image_sum w64": [(4, 0.3, 0.3, 0.3)]}
    assert sweep.slice("model.n_embd") == {"gpt": [(32, pytest.approx(0.3), 0.2, 0.4), (64, 0.7, 0.6, 0.8)],
                                           "image_sum": [(64, 0.3, 0.3, 0.3)]}


def test_lines_are_named_by_what_varies_within_a_model(tmp_path):
    def arm(name, n_layer, lr):
        path = tmp_path / name
        fake_run(path, [2.0], val_accs=[0.5], model={"name": "gpt", "block_size": 16, "n_embd": 16, "n_layer": n_layer},
                 data={"dataset": "copy", "task_pairs": 2, "task_vocab": 64})
        return cells([name], [10], [], [Run(name, lr, 0, 10, path, [])], [0])[(name, 10)]
    sweep = find_sweep([arm("one", 1, 1e-3), arm("two", 2, 1e-3), arm("two_lr", 2, 3e-3)])
    assert sweep.lines == {"one": "gpt w16 n_layer=1", "two": "gpt w16 n_layer=2",
                           "two_lr": "gpt w16 n_layer=2 (two_lr)"}  # differs in lr only: named apart


def test_a_text_report_gets_the_accuracy_column_only(tmp_path):
    spec = loads_study('name = "text"\nreference = ""\n[budget]\niters = 10\n'
                       '[[arm]]\nname = "gpt"\nconfig = "configs/tiny_gpt.toml"\n')
    write_char_dataset(tmp_path / "data")
    fake_run(tmp_path / "run", [4.0, 3.0], val_accs=[0.01, 0.25], data={"dataset": "tiny_char",
                                                                         "data_dir": str(tmp_path / "data")})
    run = Run("gpt", 1e-3, 0, 10, tmp_path / "run", [])
    report = write_report(spec, "x", {"gpt": "gpt"}, tmp_path / "out", [], [run])[0]
    assert table_rows(report.read_text(), "Results at the largest budget")["gpt"]["val acc"] == "0.2500"
    assert "Accuracy against difficulty" not in report.read_text() and not list(report.parent.glob("val_acc*"))


@pytest.mark.slow
def test_a_tiny_copy_study_reports_the_runs_accuracy(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(copy_study(tmp_path / "out", ARMS))
    assert study.main([str(path)]) == 0
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    acc = {a: json.loads((out / "runs" / a / "lr0.003" / "seed0" / "30" / "result.json").read_text())["val_acc"]
           for a in ARMS}
    last = json.loads((out / "runs" / "gpt_K2" / "lr0.003" / "seed0" / "30" / "metrics.jsonl").read_text()
                      .splitlines()[-1])
    assert last["val_acc"] == acc["gpt_K2"]
    results = table_rows(report, "Results at the largest budget")
    assert all(results[a]["val acc"] == f"{acc[a]:.4f}" for a in ARMS)
    table = table_rows(report, "Accuracy against difficulty")
    assert table["gpt w16"] == {"model, width": "gpt w16", "centre: K=4 T=16 V=64": f"{acc['gpt_K4']:.4f}",
                                "K=2": f"{acc['gpt_K2']:.4f}"}
    assert table["gpt w32"] == {"model, width": "gpt w32", "centre: K=4 T=16 V=64": f"{acc['gpt_K4_w32']:.4f}",
                                "K=2": "—"}
    for name in ("val_acc_vs_task_pairs.png", "val_acc_vs_width.png", "val_acc_vs_tokens.png"):
        assert (out / name).read_bytes().startswith(PNG) and f"]({name})" in report
    assert not (out / "val_acc_vs_block_size.png").exists()  # block_size is not swept here
    assert "None: the arms train on synthetic tasks" in report and "no sample (" not in report
    assert f"val acc {acc['gpt_K2']:.4f}" in capsys.readouterr().out
