"""The lm-eval adapter (tools/lm_harness.py, harness.py): every score equals a direct computation with the
model, one token at a time in float64, for GPT-2 BPE, char and byte runs; lm-eval's own command line on
local tasks (a YAML file over a local JSONL: multiple choice, rolling loglikelihood, generation) reports
exactly those numbers, offline. lm-eval is an optional extra: without it these tests are skipped."""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from config import load_config, padded_vocab
from data.tokenizer import GPT2_EOT, load_tokenizer
from engine.checkpoint import CheckpointError, save_checkpoint
from helpers import ROOT

pytest.importorskip("lm_eval", reason="lm-eval is an optional extra (requirements-dev.txt installs it)")
from lm_eval.api.instance import Instance  # noqa: E402

from tools.lm_harness import CheckpointLM, HarnessError  # noqa: E402

BLOCK = 16  # short windows, so that contexts are truncated and rolling texts take several windows
SHAKESPEARE = (ROOT / "data" / "corpora" / "tinyshakespeare.txt").read_text()[:50_000]
METAS = {"byte": {"name": "b", "tokenizer": "byte", "vocab_size": 256},
         "char": {"name": "c", "tokenizer": "char", "chars": sorted(set(SHAKESPEARE)),
                  "vocab_size": len(set(SHAKESPEARE))},
         "gpt2": {"name": "g", "tokenizer": "gpt2", "vocab_size": 50257}}
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}


def write_run(out_dir: Path, meta: dict, seed: int = 0) -> Path:
    """A run directory holding one checkpoint of a randomly initialised tiny GPT for this dataset meta."""
    from models import build_model
    cfg = load_config(None, ['--model.name="gpt"', f"--model.block_size={BLOCK}", "--model.n_layer=2",
                             "--model.n_head=2", "--model.n_embd=32",
                             f"--model.vocab_size={padded_vocab(meta['vocab_size'])}", '--train.device="cpu"'])
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    save_checkpoint(out_dir, {"step": 0, "model": model.state_dict(), "config": cfg.to_dict(), "data_meta": meta})
    return out_dir


@pytest.fixture(scope="module", params=list(METAS))
def lm(request, tmp_path_factory) -> CheckpointLM:
    run = write_run(tmp_path_factory.mktemp(request.param), METAS[request.param])
    return CheckpointLM(out_dir=str(run), device="cpu", batch_size=3)


def reference(lm: CheckpointLM):
    """The adapter's model in float64, and a function giving its next-token log-probabilities after ids."""
    model64 = copy.deepcopy(lm.model).double()

    def next_logprobs(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            logits, _ = model64(torch.tensor([ids]))
        return torch.log_softmax(logits[0, -1], dim=-1)  # (V,) over the whole padded vocabulary

    return next_logprobs


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args]


LOGLIKELIHOOD = [("The quick brown fox", " jumps over"), ("To be, or not to be", ": that is"),
                 ("", "Hello"), ("First Citizen:\nBefore we proceed any further, hear me speak.", "\nAll: Speak"),
                 ("Once upon a time, in a land far away", " there"), ("A", "B")]


def loglikelihood_reference(next_logprobs, tok, context: str, continuation: str) -> tuple[float, bool]:
    """The continuation's log-probability, one forward per token, in the window of the last block_size + 1
    tokens of context + continuation (left truncation), and whether every token is the argmax. The
    continuation's tokens are those of context + continuation after the context's; an empty context is the
    prefix token (<|endoftext|>, or a newline for char and byte)."""
    context_ids = tok.encode(context) if context else [GPT2_EOT if tok.name == "gpt2" else tok.encode("\n")[0]]
    continuation_ids = tok.encode(context + continuation)[len(tok.encode(context)):]
    window = (context_ids + continuation_ids)[-(BLOCK + 1):]
    total, greedy = 0.0, True
    for k in range(len(window) - len(continuation_ids), len(window)):
        logp = next_logprobs(window[:k])
        total += logp[window[k]].item()
        greedy &= int(logp.argmax()) == window[k]
    return total, greedy


def test_loglikelihood_equals_the_direct_computation(lm):
    tok, next_logprobs = lm.tokenizer, reference(lm)
    got = lm.loglikelihood(requests("loglikelihood", LOGLIKELIHOOD))
    assert any(len(tok.encode(c + x)) > BLOCK + 1 for c, x in LOGLIKELIHOOD)  # some contexts are truncated
    for (context, continuation), (logprob, greedy) in zip(LOGLIKELIHOOD, got):
        want, want_greedy = loglikelihood_reference(next_logprobs, tok, context, continuation)
        assert logprob == pytest.approx(want, rel=1e-5) and greedy == want_greedy


def rolling_reference(next_logprobs, ids: list[int], prefix: int) -> float:
    """lm-eval's rolling windows as a plain loop over targets: seq = [prefix] + ids; target ids[j] is read
    from seq[s : j + 1] with s = 0 in the first window of block_size targets, and from then on the window
    of block_size inputs ending where its chunk of block_size targets ends (the last one: at the text's end)."""
    seq, total = [prefix] + ids, 0.0
    for j in range(len(ids)):
        s = max(0, min((j // BLOCK + 1) * BLOCK, len(ids)) - BLOCK)
        assert j + 1 - s <= BLOCK  # never more than block_size inputs
        total += next_logprobs(seq[s:j + 1])[ids[j]].item()
    return total


def test_rolling_loglikelihood_scores_every_token_once_with_lm_evals_windows(lm):
    tok, next_logprobs = lm.tokenizer, reference(lm)
    prefix = GPT2_EOT if tok.name == "gpt2" else tok.encode("\n")[0]
    texts = [SHAKESPEARE[:300], SHAKESPEARE[1000:1010], "Hi", ""]
    got = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(t,) for t in texts]))
    assert len(tok.encode(texts[0])) > 3 * BLOCK  # several windows, the last one partial
    for text, logprob in zip(texts, got):
        assert logprob == pytest.approx(rolling_reference(next_logprobs, tok.encode(text), prefix), rel=1e-5)


def greedy_reference(next_logprobs, ids: list[int], steps: int, vocab: int) -> list[int]:
    """Greedy decoding by full forwards over the last block_size tokens, one token at a time."""
    ids = list(ids)
    for _ in range(steps):
        ids.append(int(next_logprobs(ids[-BLOCK:])[:vocab].argmax()))
    return ids


def test_generate_until_is_greedy_decoding_cut_at_the_first_stop_sequence(lm):
    tok, next_logprobs = lm.tokenizer, reference(lm)
    contexts = ["To be, or not", "Is it not so", "First Citizen:\nBefore we proceed any further"]  # 2 of one length
    texts = []
    for context in contexts:
        ids = tok.encode(context)[-BLOCK:]
        texts.append(tok.decode(greedy_reference(next_logprobs, ids, 24, tok.vocab_size)[len(ids):]))
    stops = [[texts[0][5:7]], ["not in any text \u2603"], [texts[2][9:10], texts[2][3:5]]]
    eos = [tok.decode([GPT2_EOT])] if tok.name == "gpt2" else []
    got = lm.generate_until(requests("generate_until", [(c, {"until": s, "max_gen_toks": 24, "do_sample": False})
                                                        for c, s in zip(contexts, stops)]))
    for text, stop, answer in zip(texts, stops, got):
        cut = min([text.find(s) for s in stop + eos if s in text], default=len(text))
        assert answer == text[:cut]
    assert len(got[0]) <= 5  # the stop sequence did cut


def test_bad_settings_and_requests_are_one_line_errors_that_name_the_fix(tmp_path):
    run = write_run(tmp_path / "char", METAS["char"])
    synthetic = write_run(tmp_path / "copy", {"name": "copy", "vocab_size": 64})
    lm = CheckpointLM(out_dir=str(run), device="cpu")
    cases = [
        (lambda: CheckpointLM(out_dir=str(tmp_path / "absent")), CheckpointError,
         r"no usable checkpoint in .*absent.*point --model_args out_dir=RUN at a run"),
        (lambda: CheckpointLM(), HarnessError, "no run given: --model_args out_dir=RUN"),
        (lambda: CheckpointLM(out_dir=str(run), pretrained="gpt2"), HarnessError,
         "unknown model_args pretrained; valid: out_dir, dtype, device"),
        (lambda: CheckpointLM(out_dir=str(run), dtype="float16"), HarnessError, "dtype=float16: choose float32"),
        (lambda: CheckpointLM(out_dir=str(run), device="tpu"), HarnessError, "device = 'tpu'; valid: auto, cpu"),
        (lambda: CheckpointLM(out_dir=str(run), batch_size="many"), HarnessError,
         "--batch_size 'many': give a positive integer"),
        (lambda: CheckpointLM(out_dir=str(synthetic)), HarnessError,
         "'copy', which has no text tokenizer .* data/prepare.py"),
        (lambda: lm.loglikelihood(requests("loglikelihood", [("Say", " 日本")])), HarnessError,
         "'日' .* evaluate a byte or GPT-2 BPE model on this task"),
        (lambda: lm.loglikelihood(requests("loglikelihood", [("Say", " " + "a" * BLOCK)])), HarnessError,
         f"longer than the model's block_size {BLOCK}: it cannot be scored"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match) as info:
            call()
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------- lm-eval's command line, on local tasks

MC = [{"question": "The capital of France is", "choices": ["Paris", "a banana", "Καλή"], "answer": 0},
      {"question": "First Citizen:\nBefore we proceed any further, hear me", "choices": ["speak.", "🙂"],
       "answer": 0},
      {"question": "The sky on a clear day is", "choices": ["green", "blue"], "answer": 1}]
TEXTS = [SHAKESPEARE[:200], "Καλημέρα κόσμε — 日本語のテキスト 🙂", "Short."]
TASKS = {
    "t2i_mc": ("mc.jsonl", MC, "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: choices\n"
               "doc_to_target: answer\nmetric_list:\n  - metric: acc\n"),
    "t2i_rolling": ("text.jsonl", [{"text": t} for t in TEXTS], "output_type: loglikelihood_rolling\n"
                    "doc_to_text: ''\ndoc_to_target: '{{text}}'\nmetric_list:\n  - metric: bits_per_byte\n"),
    "t2i_gen": ("mc.jsonl", MC, "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: ''\n"
                "generation_kwargs:\n  until: ['.']\n  max_gen_toks: 10\n  do_sample: false\n"
                "metric_list:\n  - metric: exact_match\n"),
}


def write_tasks(folder: Path) -> Path:
    """Each task as a YAML file over a local JSONL (datasets' json builder: nothing is downloaded)."""
    folder.mkdir()
    for name, (data, rows, body) in TASKS.items():
        (folder / data).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        (folder / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                             f"    test: {folder / data}\ntest_split: test\n{body}", encoding="utf-8")
    return folder


def harness(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | OFFLINE | {"OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "harness.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_lm_eval_cli_on_local_tasks_reports_the_direct_computation(tmp_path):
    run = write_run(tmp_path / "run", METAS["byte"])
    result = harness("--model", "t2i", "--model_args", f"out_dir={run}", "--tasks", ",".join(TASKS), "--include_path",
                     str(write_tasks(tmp_path / "tasks")), "--device", "cpu", "--batch_size", "2",
                     "--output_path", str(tmp_path / "out"), "--log_samples")
    assert result.returncode == 0, result.stderr[-3000:]
    (results,) = (tmp_path / "out").rglob("results_*.json")
    scores = json.loads(results.read_text())["results"]
    lm = CheckpointLM(out_dir=str(run), device="cpu")
    tok, next_logprobs = lm.tokenizer, reference(lm)

    mc = [[loglikelihood_reference(next_logprobs, tok, d["question"], " " + c)[0] for c in d["choices"]]
          for d in MC]
    assert scores["t2i_mc"]["acc,none"] == pytest.approx(sum(
        max(range(len(s)), key=s.__getitem__) == d["answer"] for s, d in zip(mc, MC)) / len(MC))
    (samples,) = (tmp_path / "out").rglob("samples_t2i_mc_*.jsonl")
    for line in samples.read_text().splitlines():
        sample = json.loads(line)
        assert [float(r[0]) for r in sample["filtered_resps"]] == pytest.approx(mc[sample["doc_id"]], rel=1e-5)
    rolling = [rolling_reference(next_logprobs, tok.encode(t), tok.encode("\n")[0]) for t in TEXTS]
    n_bytes = sum(len(t.encode("utf-8")) for t in TEXTS)
    assert scores["t2i_rolling"]["bits_per_byte,none"] == pytest.approx(-sum(rolling) / (n_bytes * math.log(2)),
                                                                        rel=1e-5)
    (samples,) = (tmp_path / "out").rglob("samples_t2i_gen_*.jsonl")
    for line in samples.read_text().splitlines():
        sample = json.loads(line)
        ids = tok.encode(MC[sample["doc_id"]]["question"])[-BLOCK:]
        text = tok.decode(greedy_reference(next_logprobs, ids, 10, 256)[len(ids):])
        assert sample["filtered_resps"] == [text.split(".")[0]]


@pytest.mark.slow
def test_lm_eval_cli_without_a_checkpoint_is_one_line_naming_the_fix(tmp_path):
    result = harness("--model", "t2i", "--model_args", f"out_dir={tmp_path / 'none'}", "--tasks", "t2i_mc",
                     "--include_path", str(write_tasks(tmp_path / "tasks")), "--device", "cpu")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"harness.py: error: no usable checkpoint in {tmp_path / 'none'} (no such directory); train one first with "
        f"`python train.py CONFIG --train.out_dir={tmp_path / 'none'}`, or point --model_args out_dir=RUN at a run")


def test_without_lm_eval_the_harness_names_the_install_and_the_project_imports(tmp_path):
    block = "import sys; sys.modules['lm_eval'] = None; "
    result = subprocess.run([sys.executable, "-c", block + "import runpy; runpy.run_path('harness.py', "
                             "run_name='__main__')", "--model", "t2i"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("harness.py: error: ") and "pip install -e '.[lmeval]'" in result.stderr
    imports = "import eval, sample, train, study, data.prepare, engine.trainer, engine.evaluation, reporting.report"
    result = subprocess.run([sys.executable, "-c", block + imports], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_harness_help_names_the_model_and_hands_over_to_lm_evals_help():
    result = subprocess.run([sys.executable, "harness.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    for words in ("--model t2i --model_args out_dir=", "--include_path", "pip install -e '.[lmeval]'",
                  "tools/lm_harness.py", "Language Model Evaluation Harness", "run"):
        assert words in result.stdout, words
