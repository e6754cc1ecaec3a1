"""Guards of a long run: pre-emption signals and bad losses.

Pre-emption (SIGTERM from a scheduler, Ctrl-C): the first signal only sets a flag, so the step in
flight and any checkpoint being written complete; the trainer then checkpoints and exits. A second
signal restores the default handler and interrupts at once.

Bad losses: a NaN or infinite loss, or (when enabled) a spike far above the recent mean, makes the
trainer roll back to its last good checkpoint and continue on batches it has not seen.
"""
from __future__ import annotations

import collections
import math
import signal


class Preempted(Exception):
    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step


class Diverged(RuntimeError):
    """Rollbacks did not help; the message says what to change."""


class StopFlag:
    """Catches SIGTERM and SIGINT while active (main thread only, as Python requires)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self.previous = {}

    def __enter__(self) -> "StopFlag":
        for s in self.SIGNALS:
            self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # asked twice: stop waiting for the step to finish
            signal.signal(signum, self.previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: finishing this step, then checkpointing "
              f"(send it again to stop at once, losing the steps since the last checkpoint)", flush=True)


class LossGuard:
    """Says why a step's loss is unusable, or None. A spike is a loss above spike_factor times the
    mean of the last `window` good losses (0 disables spike detection)."""

    def __init__(self, spike_factor: float = 0.0, window: int = 50):
        self.spike_factor = spike_factor
        self.recent: collections.deque[float] = collections.deque(maxlen=window)

    def check(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return f"loss is {loss}"
        if self.spike_factor and len(self.recent) == self.recent.maxlen:
            mean = sum(self.recent) / len(self.recent)
            if loss > self.spike_factor * mean:
                return f"loss {loss:.4g} is over {self.spike_factor}x the recent mean {mean:.4g}"
        self.recent.append(loss)
        return None

    def reset(self) -> None:
        self.recent.clear()
