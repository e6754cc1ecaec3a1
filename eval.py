"""Loss, perplexity and bits per byte of a trained run (or of OpenAI's GPT-2) on any text files.

    python eval.py --out_dir out/run --files notes.txt corpus.jsonl
    python eval.py --out_dir out/run --files notes.txt --stride 128          # sliding window
    python eval.py --init_from gpt2 --files notes.txt --block_size 256 --json

The files are tokenized with the run's tokenizer as data/prepare.py does it: a .txt file is one
document, each line of a .jsonl file is one ({"text": ...}); GPT-2 BPE appends <|endoftext|> after
every document, the char and byte tokenizers nothing. GPT-2 BPE and bytes encode any text; a char model
only the characters of its training data. The files are joined in the order given into one stream
of n ids, and each of its n-1 predictable tokens is scored exactly once; a file's figures are those of
its own tokens (the first file's first token has nothing before it and is not scored).

Context (--stride / --context): by default the ids are cut into non-overlapping windows of block_size
(the last one shorter): window i reads ids[i*T : i*T+T] and predicts ids[i*T+1 : i*T+T+1], so each
token is scored with the context its window gives it (0 to T-1 tokens before it, T-1 at best).
--stride S < block_size slides the window by S instead and scores only the last S targets of each
window after the first (the Hugging Face perplexity recipe): every scored token then has at least
T - S tokens of context, at T / S times the compute; --context C is the same as --stride T-C.

Reports, per file and overall: the mean next-token cross-entropy (nats/token), its perplexity, and
bits per byte = nats/token x tokens / (bytes x ln 2), bytes being the UTF-8 bytes of the scored tokens
(tokenizer.token_bytes(); <|endoftext|> counts 0), comparable across tokenizers.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

HF_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def load_model(init_from: str, out_dir: str, device):
    """(model in eval mode, tokenizer, its block_size)."""
    from data.tokenizer import load_tokenizer
    if init_from == "resume":
        from engine.checkpoint import load_for_inference
        model, cfg, meta = load_for_inference(out_dir, str(device))
        return model, load_tokenizer(meta), cfg.model.block_size
    from models.hf_gpt2 import load_hf_gpt2, offline_unless_hub_reachable
    offline_unless_hub_reachable()
    model = load_hf_gpt2(init_from).to(device).eval()
    return model, load_tokenizer({"tokenizer": "gpt2"}), model.cfg.block_size


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Loss, perplexity and bits per byte of a checkpoint on text files, "
                                "per file and overall.", epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="out", help="run directory holding the checkpoint (with --init_from resume)")
    p.add_argument("--init_from", default="resume", choices=("resume", *HF_MODELS),
                   help="resume: the checkpoint in --out_dir; gpt2*: OpenAI's weights (Hugging Face, needs internet once)")
    p.add_argument("--files", nargs="+", required=True, metavar="PATH", help=".txt or .jsonl ({\"text\": ...}) files")
    p.add_argument("--block_size", type=int, default=0, help="window length T; 0: the model's block_size")
    context = p.add_mutually_exclusive_group()
    context.add_argument("--stride", type=int, default=0, metavar="S",
                         help="slide windows by S < T, scoring the last S targets of each: every scored token has "
                              ">= T - S tokens of context; 0 (default): non-overlapping windows")
    context.add_argument("--context", type=int, default=None, metavar="C",
                         help="at least C tokens of context for every scored token (0 < C < T): --stride T-C")
    p.add_argument("--batch_size", type=int, default=8, help="windows per forward pass (memory: one batch of logits)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="float32", choices=("auto", "float32", "bfloat16"),
                   help="float32 (default: exact) or bf16 autocast (auto: on GPUs that support it)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads; 0: one per core not already busy (threads beyond the free cores only wait)")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.block_size < 0 or args.stride < 0 or args.threads < 0:
        p.error("--batch_size must be >= 1, and --block_size, --stride and --threads >= 0")
    if args.context is not None and args.context < 1:
        p.error("--context must be >= 1 (leave it out for non-overlapping windows)")
    return args


def free_cores() -> int:
    """Cores this process may use that no other process is running on right now (at least 1).

    On a shared machine, intra-op threads beyond the free cores do not add speed: each parallel region
    waits for its slowest thread, which waits for a time slice (seen: 2 threads with one core busy
    ran 2.5x slower than 1 thread). Linux: the fewest runnable tasks over a few samples of /proc/stat,
    less this one; elsewhere the 1-minute load average."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        samples = []
        for _ in range(5):
            stat = Path("/proc/stat").read_text()
            samples.append(int(stat.split("procs_running")[1].split()[0]) - 1)
            os.sched_yield()
        busy = min(samples)
    except (OSError, IndexError, ValueError):
        busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, cores - busy)


def reuse_freed_memory() -> None:
    """Keep freed memory in the process instead of returning it to the kernel (glibc only; a no-op elsewhere).

    Every batch allocates logits of B x T x V floats (412 MB for 8 x 256 x 50304). glibc serves blocks
    over 32 MB with a fresh mmap and unmaps them on free, so each batch page-faults and zeroes its
    memory again: more system time than compute (a 3M-parameter model with GPT-2's vocabulary on one
    core: 0.63 s a batch, 0.39 s of it in the kernel; 0.29 s with this). Taking every block from the
    heap and never trimming it reuses the same pages; memory stays about one batch's."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # <malloc.h>
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)


def read_files(files: list[str], tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(ids of all files joined, (n_files + 1,) offsets of each file's ids)."""
    from data.documents import read_ids
    from data.loader import DataError
    chunks = []
    for path in files:
        try:
            chunks.append(read_ids([path], tokenizer))
        except DataError:  # names the file and the fix already
            raise
        except ValueError as e:  # a character outside a char model's vocabulary (the only other failure)
            raise ValueError(f"{path}: {e}; remove or replace it, or score a run with a byte or GPT-2 BPE "
                             f"tokenizer (which encode any text)") from None
    offsets = np.cumsum([0] + [len(c) for c in chunks])
    return (np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)), offsets


def figures(nats: float, tokens: int, n_bytes: int) -> dict:
    """loss (nats/token), perplexity and bits per byte of `tokens` scored tokens holding `n_bytes` bytes."""
    loss = nats / tokens if tokens else float("nan")
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else float("inf"),
            "bits_per_byte": nats / (n_bytes * math.log(2)) if n_bytes else float("nan"),
            "tokens": tokens, "bytes": n_bytes}


def per_file(nll: np.ndarray, ids: np.ndarray, offsets: np.ndarray, token_bytes: np.ndarray,
             files: list[str]) -> list[dict]:
    """The figures of each file's scored tokens: nll[p - 1] is the loss of target ids[p], p >= 1."""
    out = []
    for path, lo, hi in zip(files, offsets[:-1], offsets[1:]):
        lo = max(int(lo), 1)
        hi = max(int(hi), lo)
        nats = float(nll[lo - 1:hi - 1].astype(np.float64).sum())
        out.append({"path": str(path), **figures(nats, hi - lo, int(token_bytes[ids[lo:hi]].sum()))})
    return out


def report(result: dict) -> str:
    """The table eval.py prints: one row per file, then the total."""
    rows = [(f["path"], f) for f in result["files"]] + [("all", result)]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'file':<{width}}  {'tokens':>11}  {'bytes':>12}  {'loss':>7}  {'perplexity':>10}  {'bits/byte':>9}"]
    for name, f in rows:
        lines.append(f"{name:<{width}}  {f['tokens']:>11,}  {f['bytes']:>12,}  {f['loss']:>7.4f}  "
                     f"{f['perplexity']:>10.2f}  {f['bits_per_byte']:>9.4f}")
    T, S = result["block_size"], result["stride"]
    lines.append(f"(non-overlapping windows of {T} tokens: each token scored once, with the context its window "
                 f"gives it)" if S == T else f"(windows of {T} tokens sliding by {S}: each token scored once, with "
                 f"at least {T - S} tokens of context)")
    return "\n".join(lines)


def evaluate_files(args: argparse.Namespace) -> dict:
    """Load, tokenize, score; the result dict eval.py prints (ValueError / OSError on user mistakes)."""
    import torch

    from engine.evaluation import score_ids
    from engine.runtime import pick_device, pick_dtype
    from schema import ConfigError
    try:
        device = pick_device(args.device)
    except ConfigError as e:
        message = str(e).replace("--train.device=auto", "--device auto").replace("train.device", "--device")
        raise ValueError(message) from None  # the runtime's message names the trainer's key
    torch.set_num_threads(args.threads or min(torch.get_num_threads(), free_cores()))
    model, tokenizer, model_block = load_model(args.init_from, args.out_dir, device)
    T = args.block_size or model_block
    if T > model_block:
        raise ValueError(f"--block_size {T} exceeds the model's block_size {model_block}; give at most "
                         f"{model_block}, or 0 for the model's own")
    S = T - args.context if args.context is not None else args.stride or T
    if not 0 < S <= T:
        given = f"--context {args.context}" if args.context is not None else f"--stride {args.stride}"
        raise ValueError(f"{given} must be below the window length {T}; leave it out for non-overlapping windows")
    ids, offsets = read_files(args.files, tokenizer)
    if len(ids) < 2:
        raise ValueError(f"the files give {len(ids)} token(s); at least 2 are needed to score one: give more text")
    nll = score_ids(model, ids, T, args.batch_size, device, pick_dtype(args.dtype, device), stride=S)
    files = per_file(nll, ids, offsets, np.asarray(tokenizer.token_bytes()), args.files)
    total = figures(float(nll.astype(np.float64).sum()), len(nll), sum(f["bytes"] for f in files))
    return {**total, "block_size": T, "stride": S, "threads": torch.get_num_threads(), "files": files}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from engine.checkpoint import CheckpointError
    from models.hf_gpt2 import HFLoadError
    try:
        result = evaluate_files(args)
    except (CheckpointError, HFLoadError, ValueError, OSError) as e:  # ConfigError and DataError are ValueErrors
        print(f"eval.py: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else report(result))
    return 0


if __name__ == "__main__":
    reuse_freed_memory()  # process-wide: only when eval.py is the process, not when imported
    sys.exit(main())
