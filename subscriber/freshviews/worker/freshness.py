"""Measured freshness: the sampler's results per view, the share of fresh samples as nines, and its summary.

The share is taken over a sliding window of each view's last :data:`WINDOW` samples, so that it says how fresh
the cache is now rather than since the process started. Nines are ``-log10(1 - share)``: 0.999 is 3 nines. A
window with no stale sample cannot tell more than its size allows (1 in ``n`` is ``log10(n)`` nines), so that is
the cap: 10,000 fresh samples are "at least 4 nines", never infinity.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Result(StrEnum):
    #: The cached value equals a recompute.
    FRESH = "fresh"
    #: It differed, but a change affecting it was still on its way (outbox, log, a batch in flight).
    EXPLAINED = "explained"
    #: It differed with every change applied: a missed dependency or a lost change (repaired at once).
    UNEXPLAINED = "unexplained"
    #: The compute raised: nothing to compare (left out of the share).
    FAILED = "failed"


#: Samples per view the share is taken over.
WINDOW = 10_000


def nines(fresh: int, total: int) -> float:
    """``-log10(1 - fresh/total)``, capped at ``log10(total)`` (what ``total`` samples can tell); 0 with none."""
    if total <= 0:
        return 0.0
    cap = math.log10(total)
    stale = total - fresh
    if stale <= 0:
        return round(cap, 2)
    return round(min(cap, -math.log10(stale / total)), 2)


@dataclass
class ViewTally:
    """One view's results: totals since the start, and the last :data:`WINDOW` samples (fresh or not)."""

    totals: Counter[str] = field(default_factory=Counter)
    window: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))
    fresh_in_window: int = 0
    #: The last unexplained mismatch: key, stale age and when it was found.
    last_unexplained: dict[str, Any] | None = None

    def add(self, result: Result) -> None:
        self.totals[result.value] += 1
        if result is Result.FAILED:
            return
        fresh = result is Result.FRESH
        if len(self.window) == self.window.maxlen and self.window[0]:
            self.fresh_in_window -= 1
        self.window.append(fresh)
        self.fresh_in_window += fresh

    @property
    def nines(self) -> float:
        return nines(self.fresh_in_window, len(self.window))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {r.value: self.totals[r.value] for r in Result}
        out["samples"] = sum(self.totals.values())
        out["window"] = len(self.window)
        out["nines"] = self.nines
        if self.last_unexplained is not None:
            out["last_unexplained"] = self.last_unexplained
        return out
