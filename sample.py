"""Sample text from a trained run, or straight from OpenAI's GPT-2 weights.

  python sample.py --out_dir out/shakespeare_char --start "ROMEO:" --num_samples 3
  python sample.py --init_from gpt2 --start FILE:prompt.txt --top_p 0.9 --top_k None
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

from sampling import check_sampling_args, generate

HF_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


class StartError(ValueError):
    """A --start that cannot become a prompt; printed as one line, exit status 2."""


def read_start(start: str) -> str:
    """The prompt text of --start: the text itself, or a file's contents when written FILE:path."""
    if start.startswith("FILE:"):
        path = Path(start.removeprefix("FILE:"))
        if not path.is_file():
            raise StartError(f"--start {start}: there is no file {path} (relative paths start from the current "
                             f"directory); give an existing file, or the prompt itself without FILE:")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise StartError(f"--start {start}: cannot read {path} as UTF-8 text ({e})") from None
        if not text:
            raise StartError(f"--start {start}: the file is empty")
        return text
    if not start:
        raise StartError("--start is empty; give some text to start from, e.g. --start $'\\n'")
    return start


def encode_start(tokenizer, text: str) -> list[int]:
    """Token ids of the prompt, turning an encoding failure (a character outside a char vocabulary)
    into a StartError."""
    try:
        ids = tokenizer.encode(text)
    except (ValueError, KeyError) as e:
        raise StartError(f"--start cannot be encoded by this model's tokenizer: {e}; remove or replace it") from None
    if not ids:
        raise StartError("--start encodes to no tokens; give some text")
    return ids


def optional(cast):
    """argparse type for a value that may be written None (or none) to switch a filter off."""
    def parse(text: str):
        return None if text.lower() == "none" else cast(text)
    parse.__name__ = cast.__name__  # argparse names the type in its error message
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Sample text from a trained run or from GPT-2 weights.")
    p.add_argument("--out_dir", default="out", help="run directory holding the checkpoint (with --init_from resume)")
    p.add_argument("--init_from", default="resume", choices=("resume", *HF_MODELS),
                   help="resume: the checkpoint in --out_dir; gpt2*: OpenAI's weights from the Hugging Face hub")
    p.add_argument("--start", default="\n", help="prompt text, or FILE:path to read the prompt from a file")
    p.add_argument("--num_samples", type=int, default=3)
    p.add_argument("--max_new_tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (argmax)")
    p.add_argument("--top_k", type=optional(int), default=200, help="an integer >= 1, or None")
    p.add_argument("--top_p", type=optional(float), default=None, help="in (0, 1], or None")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="auto: bf16 autocast on GPUs that support it")
    args = p.parse_args(argv)
    try:
        check_sampling_args(args.temperature, args.top_k, args.top_p)
        if args.num_samples < 1 or args.max_new_tokens < 0:
            raise ValueError("--num_samples must be >= 1 and --max_new_tokens >= 0")
    except ValueError as e:
        p.error(str(e))  # usage and message on stderr, exit status 2
    return args


def load_model(args: argparse.Namespace, device: torch.device):
    """(model in eval mode on device, tokenizer) for --init_from."""
    from data.tokenizer import load_tokenizer
    if args.init_from == "resume":
        from engine.checkpoint import load_for_inference
        model, _, meta = load_for_inference(args.out_dir, str(device))
        return model, load_tokenizer(meta)
    from models.hf_gpt2 import load_hf_gpt2
    return load_hf_gpt2(args.init_from).to(device).eval(), load_tokenizer({"tokenizer": "gpt2"})


def fail(message: object, status: int) -> int:
    print(f"sample.py: error: {message}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        text = read_start(args.start)  # before loading: a typo in a path should not cost a model load
    except StartError as e:
        return fail(e, 2)
    from engine.checkpoint import CheckpointError
    from engine.runtime import pick_device, pick_dtype
    from models.hf_gpt2 import HFLoadError
    try:
        device = pick_device(args.device)
        dtype = pick_dtype(args.dtype, device)
        model, tokenizer = load_model(args, device)
        ids = encode_start(tokenizer, text)
    except StartError as e:
        return fail(e, 2)
    except (CheckpointError, HFLoadError, ValueError, OSError) as e:  # ConfigError and DataError are ValueErrors
        return fail(e, 1)
    torch.manual_seed(args.seed)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    idx = torch.tensor([ids] * args.num_samples, dtype=torch.long, device=device)  # (num_samples, T0)
    amp = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    with amp:
        out = generate(model, idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, generator=generator, vocab_size=tokenizer.vocab_size)
    for row in out.tolist():  # (num_samples, T0 + max_new_tokens) ids, prompt included
        print(tokenizer.decode(row))
        print("-" * 40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
