"""Benchmark every model family on this machine and print a markdown table.

  python scripts/bench_models.py            # tiny presets, then the original study's configs at T=1024
  python scripts/bench_models.py --tiny     # tiny presets only (a minute)

Each row is one bench.py process (so peak memory is that configuration's own): ms/iter (median),
tokens/s, training FLOPs per token, achieved FLOP/s, its share of the peak (GPU datasheet, or this
CPU's measured float32 matmul rate) and peak memory. The original configs run as shipped (the CNN's
activation checkpointing on, chunks of 256 images), and the two plain VGG models once more without it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ["tiny_gpt", "tiny_image_sum", "tiny_image_attn", "tiny_image_sum_chain", "tiny_image_attn_chain"]
ORIGINAL = ["owt_gpt2", "owt_idea1_vgg", "owt_idea1_resnet", "owt_idea2_vgg", "owt_idea2_vgg_wide",
            "owt_idea1_chain", "owt_idea2_chain"]
# one sequence of the original's length per step, no accumulation, whatever the GPU configs say
ORIGINAL_ARGS = ["--train.batch_size=1", "--train.grad_accum=1", "--train.compile=false", "--steps", "1",
                 "--warmup", "1"]  # a step of a 1024-token sequence takes seconds to minutes on a CPU
NO_CHECKPOINT = ("owt_idea1_vgg", "owt_idea2_vgg")  # memory without the CNN's checkpointing, for comparison


def bench(config: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "bench.py", f"configs/{config}.toml", "--model.vocab_size=50304", *extra]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(name: str, r: dict) -> str:
    share = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
    return (f"| {name} | {r['block_size']} x {r['batch_size']} | {r['ms_per_iter']:.0f} | {r['tokens_per_s']:.0f} | "
            f"{r['flops_per_token'] / 1e9:.3f} | {r['achieved_flops'] / 1e9:.1f} | {share} | "
            f"{r['peak_memory_bytes'] / 2 ** 30:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="tiny presets only")
    args = parser.parse_args()
    runs = [(name, name, ["--steps", "5"]) for name in TINY]
    if not args.tiny:
        for name in ORIGINAL:
            runs.append((name, name, ORIGINAL_ARGS))
            if name in NO_CHECKPOINT:
                runs.append((f"{name}, no checkpointing", name,
                             ORIGINAL_ARGS + ["--model.cnn_checkpoint=false", "--model.cnn_chunk=0"]))
    lines = ["| config | T x batch | ms/iter | tokens/s | train GFLOP/token | achieved GFLOP/s | of peak | peak memory GiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, config, extra in runs:
        result = bench(config, extra)
        lines.append(row(label, result))
        print(lines[-1], flush=True)
    print(f"\ndevice: {result['device']}, {result['threads']} threads, dtype {result['dtype']}; "
          f"peak: {result['peak_flops'] / 1e9:.0f} GFLOP/s" if result["peak_flops"] else "")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
