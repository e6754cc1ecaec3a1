import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")

import torch

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two threads per
# process oversubscribe the cores (seen: steps 40x slower). Subprocesses get OMP_NUM_THREADS=1 too.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
