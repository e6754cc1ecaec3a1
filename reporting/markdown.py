"""The words and number formats report.md is written in, shared by its sections."""
from __future__ import annotations

from typing import Callable

BUDGET_WORDS = {"flops": "training FLOPs", "time_s": "seconds of training wall-clock (evaluation excluded)",
                "tokens": "training tokens", "iters": "optimizer steps"}
NO_INTERVAL = "one seed: no interval"


def na(value, fmt: Callable[[float], str] = lambda v: f"{v:.4f}") -> str:
    return "n/a" if value is None else fmt(value)


def signed(value: float | None) -> str:
    """A difference in nats, its sign shown."""
    return na(value, lambda v: f"{v:+.3f}")


def ci(pair: list[float] | None, estimate: float | None = None) -> str:
    """A 95% interval; where the estimate exists but the interval does not, the estimate rests on one seed."""
    if pair is not None:
        return f"[{pair[0]:.3f}, {pair[1]:.3f}]"
    return NO_INTERVAL if estimate is not None else "n/a"


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
