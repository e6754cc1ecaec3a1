"""Look at the images an image-model run paints for a text: PNG files, one row per token.

    python visualize.py --out_dir out/run --text "To be, or not to be"
    python visualize.py --out_dir out/run --text "$(cat prompt.txt)" --out figs --max_tokens 24

Writes, for each image block of the model (image_sum / image_mean / image_attn / image_none layers; a
chained preset has n_chain of them):
  painted.png    each token's painted image a_t: one row per token, one column per channel
  mixed.png      its causally mixed image A_t (running sum or mean, or attention): what the CNN reads
  attention.png  idea 2 (an image_attn layer): each head's weights of every token over the past
One colour scale per row (per token), symmetric about 0. The computing and drawing are in
reporting/images.py, which the study report uses too.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

IMAGE_FIX = ("point --out_dir at a run of an image model (train one with e.g. "
             "python train.py configs/tiny_image_attn.toml)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Render the token images (painted a_t, mixed A_t) and idea 2's attention "
                                "weights that an image-model run computes for a text, as PNG files.",
                                epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", required=True, metavar="RUN", help="run directory holding the checkpoint")
    p.add_argument("--text", required=True, help="the prompt whose tokens' images are drawn")
    p.add_argument("--out", default="", metavar="DIR", help="where the PNG files go (default: RUN/images)")
    p.add_argument("--max_tokens", type=int, default=16, metavar="N",
                   help="draw the first N tokens of the text (at most the model's block_size; default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | mps | auto")
    args = p.parse_args(argv)
    if args.max_tokens < 1:
        p.error("--max_tokens must be >= 1")
    if not args.text:
        p.error("--text is empty; give some text, e.g. --text 'To be, or not to be'")
    return args


def render_run(args: argparse.Namespace) -> list[Path]:
    """Load the run, compute its images for --text and write the PNGs (errors as ValueError and friends)."""
    from reporting.images import NoImages, render, token_images
    from data.tokenizer import load_tokenizer
    from engine.checkpoint import load_for_inference
    from engine.runtime import pick_device
    from schema import ConfigError
    try:
        device = pick_device(args.device)
    except ConfigError as e:
        message = str(e).replace("--train.device=auto", "--device auto").replace("train.device", "--device")
        raise ValueError(message) from None  # the runtime's message names the trainer's key
    model, _, meta = load_for_inference(args.out_dir, str(device))
    tokenizer = load_tokenizer(meta)
    try:
        images = token_images(model, tokenizer, args.text, args.max_tokens)
    except NoImages as e:
        raise NoImages(f"{args.out_dir}: {e}; {IMAGE_FIX}") from None
    except ValueError as e:  # a character outside a char vocabulary, or no tokens at all
        raise ValueError(f"--text: {e}") from None
    return render(images, Path(args.out) if args.out else Path(args.out_dir) / "images")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from engine.checkpoint import CheckpointError
    try:
        paths = render_run(args)
    except (CheckpointError, ValueError, OSError) as e:  # NoImages, ConfigError and DataError are ValueErrors
        print(f"visualize.py: error: {e}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
