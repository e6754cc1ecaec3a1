"""visualize.py and reporting/images.py: the arrays drawn are the model's own images for the prompt (checked
against the forward pass, and for idea 2 the attention weights reproduce A), the PNGs are written, and
the errors name the fix."""
import pytest
import torch

import reporting.images as images
import visualize
from config import load_config
from data.tokenizer import load_tokenizer
from engine.checkpoint import load_for_inference
from engine.trainer import train
from helpers import tiny_overrides, write_char_dataset
from models import MODELS

TEXT = "ROMEO: I dreamt a dream tonight."
PNG = b"\x89PNG\r\n\x1a\n"
RUNS = {"sum": ("image_sum", {}), "mean": ("image_sum", {"mixer": '"mean"'}), "attn": ("image_attn", {}),
        "attn_heads2": ("image_attn", {"image_heads": 2}), "attn_chain": ("image_attn_chain", {}),
        "front_only": ("image_attn", {"image_stage": "false"}), "gpt": ("gpt", {})}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A few steps of training of each kind of run, on the tiny character dataset."""
    root = tmp_path_factory.mktemp("visualize")
    write_char_dataset(root / "data")
    out = {}
    for key, (name, extra) in RUNS.items():
        model = {} if name == "gpt" else {f"model.{k}": v for k, v in MODELS[name].tiny.items() if k != "vocab_size"}
        overrides = {"model.name": f'"{name}"', **model, **{f"model.{k}": v for k, v in extra.items()},
                     "train.max_iters": 3, "train.eval_iters": 1, "optim.warmup_iters": 1}
        train(load_config(None, tiny_overrides(root / "data", root / key, **overrides)))
        out[key] = root / key
    return out


def load(run):
    model, _, meta = load_for_inference(str(run), "cpu")
    return model, load_tokenizer(meta)


def forward_images(model, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(a, A) of every image block, computed block by block from the model's own parts, without the trace."""
    with torch.no_grad():
        x = model.emb(torch.tensor([ids]))  # (1, T, d)
        out = []
        for block in model.h:
            if block.has_mixer and hasattr(block.mixer, "mixing"):
                a, A = block.mixer.mixing(block.ln_1(x), None, 0)  # (1, T, D) each
                out.append((a[0], A[0]))
            x = block(x)  # the next block reads the updated residual stream
    return out


@pytest.mark.parametrize("key", ["sum", "mean", "attn", "attn_heads2", "attn_chain"])
def test_the_arrays_are_the_models_own_images(runs, key):
    model, tok = load(runs[key])
    got = images.token_images(model, tok, TEXT, max_tokens=12)
    ids = tok.encode(TEXT)[:12]
    cfg = model.cfg
    assert got.ids == ids and got.labels == [repr(c) for c in TEXT[:12]]
    reference = forward_images(model, ids)
    assert len(got.stages) == len(reference) == (2 if key == "attn_chain" else 1)
    for stage, (a, A) in zip(got.stages, reference):
        shape = (12, cfg.channels, cfg.height, cfg.width)
        assert stage.painted.shape == stage.mixed.shape == shape
        assert torch.equal(torch.from_numpy(stage.painted), a.view(shape))
        assert torch.equal(torch.from_numpy(stage.mixed), A.view(shape))
        if key in ("sum", "mean"):  # the running sum (mean) of the painted images, independently
            total = a.cumsum(0) / (torch.arange(12.0)[:, None] + 1 if key == "mean" else 1)
            torch.testing.assert_close(A, total, rtol=1e-5, atol=1e-6)
            assert stage.attention is None


@pytest.mark.parametrize("key", ["attn", "attn_heads2", "attn_chain"])
def test_the_attention_weights_applied_to_the_painted_images_give_the_mixed_ones(runs, key):
    model, tok = load(runs[key])
    got = images.token_images(model, tok, TEXT, max_tokens=10)
    heads = model.cfg.image_heads or model.cfg.channels
    assert heads == (2 if key == "attn_heads2" else model.cfg.channels)
    for stage in got.stages:
        w = torch.from_numpy(stage.attention)  # (nh, T, T)
        assert w.shape == (heads, 10, 10)
        assert torch.all(w.triu(1) == 0) and torch.allclose(w.sum(-1), torch.ones(heads, 10))  # causal, normalised
        v = torch.from_numpy(stage.painted).reshape(10, heads, -1).transpose(0, 1)  # (nh, T, Dv): each head's channels
        mixed = (w @ v).transpose(0, 1).reshape(stage.mixed.shape)  # (T, C, H, W)
        torch.testing.assert_close(mixed, torch.from_numpy(stage.mixed), rtol=1e-5, atol=1e-6)


def test_visualize_writes_pngs_of_exactly_those_arrays(runs, tmp_path, monkeypatch, capsys):
    drawn = []
    plot = images.plot_token_images

    def spy(arrays, labels, title, path):
        drawn.append(arrays.copy())
        return plot(arrays, labels, title, path)
    monkeypatch.setattr(images, "plot_token_images", spy)
    out = tmp_path / "figs"
    assert visualize.main(["--out_dir", str(runs["attn"]), "--text", TEXT, "--out", str(out), "--max_tokens", "8"]) == 0
    names = ["painted.png", "mixed.png", "attention.png"]
    assert capsys.readouterr().out.split() == [str(out / n) for n in names]
    for name in names:
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    model, tok = load(runs["attn"])
    (a, A), = forward_images(model, tok.encode(TEXT)[:8])
    assert [d.shape for d in drawn] == [(8, 4, 4, 4)] * 2
    assert torch.equal(torch.from_numpy(drawn[0]).flatten(1), a)  # painted.png
    assert torch.equal(torch.from_numpy(drawn[1]).flatten(1), A)  # mixed.png


def test_a_chained_model_gets_one_set_of_files_per_stage(runs, tmp_path, capsys):
    run = str(runs["attn_chain"])
    assert visualize.main(["--out_dir", run, "--text", TEXT, "--out", str(tmp_path), "--max_tokens", "5"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{kind}_stage{k}.png" for k in (0, 1)
                                                                  for kind in ("painted", "mixed", "attention"))
    assert visualize.main(["--out_dir", str(runs["sum"]), "--text", "ab"]) == 0  # default folder: RUN/images
    assert sorted(p.name for p in (runs["sum"] / "images").iterdir()) == ["mixed.png", "painted.png"]


def test_errors_are_one_line_and_name_the_fix(runs, tmp_path, capsys):
    def error(*args) -> str:
        assert visualize.main(list(args)) == 1
        err = capsys.readouterr().err
        assert err.startswith("visualize.py: error: ") and err.count("\n") == 1 and "Traceback" not in err
        return err
    err = error("--out_dir", str(runs["gpt"]), "--text", TEXT)
    assert "(gpt, layers attn, attn) has no image block" in err and "point --out_dir at a run of an image model" in err
    err = error("--out_dir", str(runs["front_only"]), "--text", TEXT)
    assert "front-only control of image_attn (model.image_stage = false)" in err and "paints no images" in err
    err = error("--out_dir", str(tmp_path / "none"), "--text", TEXT)
    assert f"train one first with `python train.py CONFIG --train.out_dir={tmp_path / 'none'}`" in err
    err = error("--out_dir", str(runs["attn"]), "--text", "café")
    assert "--text: character 'é' (U+00E9) is not in this dataset's vocabulary" in err and "remove or replace" in err
    with pytest.raises(SystemExit):
        visualize.main(["--out_dir", str(runs["attn"]), "--text", ""])
    assert "--text is empty" in capsys.readouterr().err


def test_the_study_report_shows_one_figure_per_image_arm(runs, tmp_path):
    """Image arms get their mixed images (and idea 2 its attention) drawn on the shared prompt; the GPT and
    the front-only control paint nothing and get no figure."""
    from types import SimpleNamespace

    from launch.results import load_run
    from launch.spec import SampleSpec, StudySpec
    from reporting.cells import Cell
    from reporting.inference import token_image_figures
    from reporting.sections import Figures, token_images

    cells = [Cell(key, 1.0, 1e-3, [load_run(key, 1e-3, 0, 1.0, runs[key])]) for key in ("gpt", "front_only", "sum", "attn")]
    spec = StudySpec(sample=SampleSpec(prompt=TEXT, prompt_tokens=6))
    figures = Figures(images=token_image_figures(cells, spec.sample, tmp_path))
    lines = token_images(SimpleNamespace(top=cells, spec=spec, figures=figures))  # the fields the section reads
    shown = [line[2:].split("]")[0] for line in lines if line.startswith("![")]
    assert shown == ["images/sum/mixed.png", "images/attn/mixed.png", "images/attn/attention.png"]
    assert all((tmp_path / name).read_bytes().startswith(PNG) for name in shown)
    assert "[images/sum/painted.png](images/sum/painted.png)" in "\n".join(lines)
