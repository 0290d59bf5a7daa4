"""Exponential backoff with full jitter (AWS architecture blog's "full jitter"): sleep ~ U(0, min(cap, base * 2^n)).

Full jitter spreads the reconnects of many cameras that failed together (a switch reboot) instead of having
them hammer the recovering server in lockstep, which a fixed retry interval does.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial: float = 0.5
    cap: float = 30.0
    multiplier: float = 2.0
    # A connection that stayed up this long counts as healthy: the next failure starts from `initial` again.
    stable_after: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0
    _up_since: float | None = None

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * self.multiplier**self.attempts)
        self.attempts += 1
        return self.rng.uniform(0.0, ceiling)

    def mark_up(self, now: float | None = None) -> None:
        """Call when the connection works; `maybe_reset` later decides whether it was stable."""
        if self._up_since is None:
            self._up_since = time.monotonic() if now is None else now

    def mark_down(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._up_since is not None and now - self._up_since >= self.stable_after:
            self.attempts = 0
        self._up_since = None

    def reset(self) -> None:
        self.attempts = 0
        self._up_since = None
