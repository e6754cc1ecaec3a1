"""Loss of a trained run (or of OpenAI's GPT-2) on any text files, every token scored exactly once.

    python eval.py --out_dir out/run --files notes.txt corpus.jsonl
    python eval.py --init_from gpt2 --files notes.txt --block_size 256 --json

The files are tokenized with the run's tokenizer as data/prepare.py does it: a .txt file is one
document, each line of a .jsonl file is one ({"text": ...}); GPT-2 BPE appends <|endoftext|> after
every document, the char tokenizer nothing. The ids are cut into non-overlapping windows of
block_size (the last one shorter): window i reads ids[i*T : i*T+T] and predicts ids[i*T+1 : i*T+T+1],
so each of the n-1 predictable tokens is scored once, with the context its window gives it.
Reports the mean next-token cross-entropy (nats) and its perplexity.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

from data.documents import read_ids
from engine.evaluation import score_ids

HF_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def load_model(init_from: str, out_dir: str, device: torch.device):
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
    p = argparse.ArgumentParser(description="Mean next-token loss of a checkpoint on text files.")
    p.add_argument("--out_dir", default="out", help="run directory holding the checkpoint (with --init_from resume)")
    p.add_argument("--init_from", default="resume", choices=("resume", *HF_MODELS),
                   help="resume: the checkpoint in --out_dir; gpt2*: OpenAI's weights (Hugging Face, needs internet once)")
    p.add_argument("--files", nargs="+", required=True, metavar="PATH", help=".txt or .jsonl ({\"text\": ...}) files")
    p.add_argument("--block_size", type=int, default=0, help="window length; 0: the model's block_size")
    p.add_argument("--batch_size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="float32", choices=("auto", "float32", "bfloat16"),
                   help="float32 (default: exact) or bf16 autocast (auto: on GPUs that support it)")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.block_size < 0:
        p.error("--batch_size must be >= 1 and --block_size >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from engine.checkpoint import CheckpointError
    from engine.runtime import pick_device, pick_dtype
    from models.hf_gpt2 import HFLoadError
    try:
        device = pick_device(args.device)
        model, tokenizer, model_block = load_model(args.init_from, args.out_dir, device)
        block_size = args.block_size or model_block
        if block_size > model_block:
            raise ValueError(f"--block_size {block_size} exceeds the model's block_size {model_block}")
        ids = read_ids(args.files, tokenizer)
        if len(ids) < 2:
            raise ValueError(f"the files give {len(ids)} token(s); at least 2 are needed to score one")
        total, count = score_ids(model, ids, block_size, args.batch_size, device, pick_dtype(args.dtype, device))
    except (CheckpointError, HFLoadError, ValueError, OSError) as e:  # ConfigError and DataError are ValueErrors
        print(f"eval.py: error: {e}", file=sys.stderr)
        return 1
    loss = total / count
    out = {"loss": loss, "perplexity": math.exp(loss), "tokens": count, "block_size": block_size,
           "files": [str(f) for f in args.files]}
    print(json.dumps(out) if args.json else
          f"loss {loss:.4f} nats/token, perplexity {math.exp(loss):.2f}, {count} tokens scored "
          f"(windows of {block_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
