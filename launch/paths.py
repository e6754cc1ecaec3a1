"""The repository root, the one place study paths are resolved against. A study file names its arm
configs, out_dir and data_dir relative to the root, and the runs it plans record their paths relative
to it, so a moved checkout keeps its runs."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def in_root(path: str | Path) -> Path:
    """A path of a study file (or of a run it planned) as an absolute path."""
    path = Path(path)
    return path if path.is_absolute() else ROOT / path


def rel(path: Path) -> str:
    """Inside the repository: relative to it (runs start there), so a moved checkout keeps its runs."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def work_at_root() -> None:
    """Make the root the working directory: runs trained in this process read their relative data_dir
    and out_dir from it, as train.py started at the root does."""
    os.chdir(ROOT)
