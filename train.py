"""Train any registered model: python train.py CONFIG.toml [--section.key=value ...] [--summary] [--help]

One process:  python train.py configs/shakespeare_char_cpu.toml
Many GPUs:    torchrun --standalone --nproc_per_node=4 train.py configs/owt_gpt2.toml
Many nodes:   torchrun --nnodes=2 --node_rank=R --master_addr=HOST --master_port=29500 --nproc_per_node=8 train.py ...

The loop itself is engine/trainer.py (config, runtime, data, model new or resumed, optimizer, compile,
DDP, loop); this script only reads the command line and turns failures into one-line messages.
"""
from __future__ import annotations

import sys

from config import ConfigError, help_text, load_config
from data import DataError
from engine.checkpoint import CheckpointError
from engine.guard import Diverged, Preempted
from engine.summary import print_summary
from engine.trainer import train
from models.hf_gpt2 import HFLoadError

USAGE = "usage: python train.py CONFIG.toml [--section.key=value ...] [--summary] [--help]"


def main(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(f"{USAGE}\n\n  --summary  print parameters, FLOPs per token and training memory, then exit\n\n{help_text()}")
        return 0
    args = [a for a in argv if a != "--summary"]
    if not args or args[0].startswith("--"):
        print(f"{USAGE}\nthe ready-made configs are in configs/ (e.g. configs/shakespeare_char_cpu.toml); "
              f"--help lists every key", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args[0], args[1:])
        if "--summary" in argv:
            print_summary(cfg)
        else:
            train(cfg)
    except (ConfigError, DataError, CheckpointError, HFLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        return 1
    except Preempted as e:
        print(f"{e}; checkpoint written, continue with --train.init_from=resume", file=sys.stderr)
        return 128 + e.signum  # the shell's convention for "ended by a signal": not finished
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
