"""Prometheus figures for assertions: a sample of this process's registry, or of another process's /metrics page.

Nothing of the product is imported here (the benchmarks load it before the measured snapshot is on ``sys.path``).
"""

from __future__ import annotations

import httpx
from prometheus_client import REGISTRY


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """Current value of a sample of this process's registry (0 when the labelled child was never created)."""
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a sample in exposition text (another process's /metrics) over the series matching ``labels``
    (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def scrape(url: str) -> str:
    """A /metrics page."""
    return httpx.get(url, timeout=10).text
