"""The report's model outputs: a decoded sample per arm, each image arm's token images, and the
pretrained GPT-2 reference loss.

Samples and the GPT-2 loss are cached in OUT/cache.json under a key made of everything they depend on
(the checkpoint's sha256, the sampling settings, the evaluation windows), so rerunning a finished study
neither recomputes them nor changes a character of the report.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.checkpoint import CheckpointError
from launch.paths import in_root
from launch.results import RunResult
from launch.spec import SampleSpec, StudySpec
from reporting.cells import Cell
from reporting.sweep import is_synthetic


# What a finished run's model outputs can meet: no (valid) checkpoint, data or meta.json that cannot be read,
# a prompt its tokenizer cannot encode (DataError and ConfigError are ValueErrors); the report says which
OUTPUT_ERRORS = (CheckpointError, OSError, ValueError)


class Cache:
    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key: dict):
        return self.data.get(json.dumps(key, sort_keys=True))

    def put(self, key: dict, value) -> None:
        self.data[json.dumps(key, sort_keys=True)] = value
        self.path.write_text(json.dumps(self.data, indent=1, sort_keys=True) + "\n")


def dataset_folder(config: dict) -> Path:
    return in_root(config["data"]["data_dir"]) / config["data"]["dataset"]


def val_prefix(config: dict, n: int) -> list[int]:
    """The first n ids of the validation split: a real document start, the same for every arm."""
    from data.loader import load_meta, open_split
    folder = dataset_folder(config)
    return [int(i) for i in open_split(folder, "val", load_meta(folder))[:n]]


def sample_text(run: RunResult, s: SampleSpec, cache: Cache) -> tuple[str, str]:
    """(prompt, continuation) decoded from the run's newest checkpoint; on the CPU, so it is
    reproducible on any machine (GPU kernels may differ in the last bits and flip a draw)."""
    from data.tokenizer import load_tokenizer
    from engine.checkpoint import load_for_inference, read_manifest
    from sampling import generate

    manifest = read_manifest(run.path)
    key = {"kind": "sample", "ckpt": manifest[0]["sha256"] if manifest else str(run.path), **vars(s)}
    if (hit := cache.get(key)) is not None:
        return tuple(hit)
    model, cfg, meta = load_for_inference(str(run.path), "cpu")
    tok = load_tokenizer(meta)
    ids = tok.encode(s.prompt) if s.prompt else val_prefix(run.config, s.prompt_tokens)
    gen = torch.Generator().manual_seed(s.seed)
    out = generate(model, torch.tensor([ids], dtype=torch.long), s.max_new_tokens, temperature=s.temperature,
                   top_k=s.top_k, generator=gen, vocab_size=tok.vocab_size)[0].tolist()
    pair = (tok.decode(ids), tok.decode(out[len(ids):]))
    cache.put(key, list(pair))
    return pair


def draw_images(run: RunResult, s: SampleSpec, out_dir: Path) -> list[Path]:
    """The run's painted and mixed images (and idea 2's attention) for the sample prompt, as PNG files in
    out_dir (reporting/images.py); NoImages for a model that paints none. On the CPU, as sample_text."""
    from data.tokenizer import load_tokenizer
    from engine.checkpoint import load_for_inference
    from reporting.images import render, token_images

    model, _, meta = load_for_inference(str(run.path), "cpu")
    tok = load_tokenizer(meta)
    text = s.prompt or tok.decode(val_prefix(run.config, s.prompt_tokens))
    return render(token_images(model, tok, text, max_tokens=s.prompt_tokens), out_dir)


def load_gpt2_quietly() -> tuple[object | None, str]:
    """(GPT-2 124M or None, why not). Offline, only the local Hugging Face cache is tried, so this
    never waits on a network that is not there."""
    from models.hf_gpt2 import HFLoadError, load_hf_gpt2, offline_unless_hub_reachable
    offline_unless_hub_reachable()
    try:
        return load_hf_gpt2("gpt2").eval(), ""
    except (HFLoadError, OSError, ImportError) as e:
        return None, str(e).split(". ")[0].split("\n")[0]


def gpt2_reference(run: RunResult, cache: Cache) -> tuple[dict | None, str]:
    """Pretrained GPT-2 (124M) scored on exactly the validation windows train.py scores this run on
    (its seed, batch size, eval_iters, block_size): ({loss, tokens, block_size}, "") or (None, why): weights
    that do not load (offline, no transformers), data that is not GPT-2 BPE text or cannot be read."""
    try:
        return score_gpt2(run, cache)
    except OUTPUT_ERRORS as e:  # the row is an extra line of the report; the report says why it is missing
        return None, f"failed: {type(e).__name__}: {e}"


def score_gpt2(run: RunResult, cache: Cache) -> tuple[dict | None, str]:
    from data import SYNTHETIC_TASKS
    from data.loader import TokenDataset
    from engine.evaluation import eval_batch, score_batch

    c = run.config
    if c["data"]["dataset"] in SYNTHETIC_TASKS:
        return None, f"the arms train on the synthetic task {c['data']['dataset']!r}, not on text"
    meta = json.loads((dataset_folder(c) / "meta.json").read_text())
    if meta.get("tokenizer") != "gpt2":
        return None, f"the dataset is tokenized with {meta.get('tokenizer')!r}, not GPT-2 BPE"
    t, T = c["train"], c["model"]["block_size"]
    if T > 1024:
        return None, f"block_size {T} exceeds GPT-2's 1024 positions"
    key = {"kind": "gpt2", "dataset": c["data"]["dataset"], "val_tokens": meta.get("val_tokens"), "block_size": T,
           "eval_split": t.get("eval_split", "val"),
           "batch_size": t.get("eval_batch_size") or t["batch_size"], "eval_iters": t["eval_iters"]}
    if (hit := cache.get(key)) is not None:
        return hit, ""
    model, why = load_gpt2_quietly()
    if model is None:
        return None, why
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    data = TokenDataset(in_root(c["data"]["data_dir"]), c["data"]["dataset"])
    total, count = 0.0, 0
    for i in range(t["eval_iters"]):  # train.py's evaluate(): the same windows for every evaluation
        x, y = eval_batch(data, t.get("eval_split", "val"), i, t.get("eval_batch_size") or t["batch_size"], T)
        total, count = total + score_batch(model, x.to(device), y.to(device)), count + y.numel()
    value = {"loss": total / count, "tokens": count, "block_size": T,
             "parameters": int(sum(p.numel() for p in model.parameters()))}
    cache.put(key, value)
    return value, ""


def gpt2_row(spec: StudySpec, base: Cell, cache: Cache) -> tuple[dict | None, str]:
    """Pretrained GPT-2 on the baseline's validation windows when the study asks for it, or why not."""
    if spec.reference != "gpt2":
        return None, "the study file sets reference = \"\""
    if not base.runs:
        return None, "no finished baseline run"
    return gpt2_reference(base.runs[0], cache)


def sample_arms(top: list[Cell], sample: SampleSpec, cache: Cache) -> dict[str, tuple[str, str] | str]:
    """{arm: (prompt, continuation) of its first reported seed, or why it has none}."""
    out: dict[str, tuple[str, str] | str] = {}
    for c in (c for c in top if c.runs):
        if is_synthetic(c):
            out[c.arm] = "a synthetic task: no text tokenizer"
            continue
        try:
            out[c.arm] = sample_text(c.runs[0], sample, cache)
        except OUTPUT_ERRORS as e:  # a run without checkpoints still gets its row in the report
            out[c.arm] = f"{type(e).__name__}: {e}"
    return out


def token_image_figures(top: list[Cell], sample: SampleSpec, out_dir: Path) -> dict[str, list[str] | str]:
    """{image arm: its figures on the sample prompt (names relative to out_dir), or why it has none}; the
    GPT and the front-only control paint nothing and have no entry."""
    from reporting.images import NoImages  # matplotlib: only when drawing
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
