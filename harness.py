"""lm-eval (EleutherAI's lm-evaluation-harness) with this project's checkpoints registered as model `t2i`.

    python harness.py --model t2i --model_args out_dir=out/byte_gpt --tasks hellaswag,lambada_openai --batch_size 16
    python harness.py --model t2i --model_args out_dir=RUN --tasks my_task --include_path my_tasks/   # local YAML

Every other argument is lm-eval's own (`python harness.py run --help`); lm-eval is an optional extra
(pip install -e '.[lmeval]'). The model and how it answers requests: tools/lm_harness.py.
"""
from __future__ import annotations

import sys


def main() -> int:
    try:
        from engine.checkpoint import CheckpointError
        from tools.lm_harness import HarnessError  # registers the model (its ImportError names the install)
        from lm_eval.__main__ import cli_evaluate
    except ImportError as e:
        print(f"harness.py: error: {e}", file=sys.stderr)
        return 1
    if len(sys.argv) == 1 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
    try:
        cli_evaluate()  # reads sys.argv as the lm-eval command would
    except (CheckpointError, HarnessError) as e:
        print(f"harness.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
