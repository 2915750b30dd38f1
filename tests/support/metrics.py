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


def buckets(text: str, name: str, **labels: str) -> dict[float, float]:
    """The cumulative buckets of a histogram in exposition text: upper bound (``inf`` last) -> count, summed over
    the series matching ``labels``."""
    found: dict[float, float] = {}
    for line in text.splitlines():
        if not line.startswith(name + "_bucket{"):
            continue
        head, _, value = line.rpartition(" ")
        if not all(f'{k}="{v}"' in head for k, v in labels.items()):
            continue
        bound = head.split('le="', 1)[1].split('"', 1)[0]
        edge = float("inf") if bound == "+Inf" else float(bound)
        found[edge] = found.get(edge, 0.0) + float(value)
    return dict(sorted(found.items()))


def label_values(text: str, name: str, label: str) -> list[str]:
    """The values ``label`` takes in the series of ``name``, in order of first appearance."""
    seen: dict[str, None] = {}
    for line in text.splitlines():
        if line.startswith(name) and f'{label}="' in line:
            seen[line.split(f'{label}="', 1)[1].split('"', 1)[0]] = None
    return list(seen)


def quantile(cumulative: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram's cumulative buckets, interpolated linearly within its bucket as
    Prometheus' histogram_quantile does (the upper bound of the last finite bucket when it falls in +Inf)."""
    if not cumulative:
        return None
    total = cumulative[max(cumulative)]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for edge, count in cumulative.items():
        if count >= rank:
            if edge == float("inf"):
                return lower
            inside = count - below
            return lower + (edge - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = edge, count
    return lower
