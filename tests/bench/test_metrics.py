"""The histogram reading the benchmarks use for compute times per view, on a real Prometheus exposition."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from tests.bench.freshness import compute_times
from tests.support.metrics import buckets, label_values, quantile


def _exposition(observations: dict[str, list[float]]) -> str:
    registry = CollectorRegistry()
    histogram = Histogram(
        "freshviews_recompute_seconds", "compute", ["view"], buckets=(0.001, 0.002, 0.005, 0.01), registry=registry
    )
    for view, values in observations.items():
        for value in values:
            histogram.labels(view).observe(value)
    return generate_latest(registry).decode()


def test_buckets_and_quantiles_read_back_what_was_observed() -> None:
    text = _exposition({"player": [0.0015] * 90 + [0.008] * 10, "team": [0.0005]})
    assert label_values(text, "freshviews_recompute_seconds_count", "view") == ["player", "team"]
    player = buckets(text, "freshviews_recompute_seconds", view="player")
    assert player == {0.001: 0, 0.002: 90, 0.005: 90, 0.01: 100, float("inf"): 100}
    # The median falls in (1 ms, 2 ms], the 99th percentile in (5 ms, 10 ms]: interpolated within them.
    assert quantile(player, 0.5) == pytest.approx(0.001 + 0.001 * 50 / 90)
    assert quantile(player, 0.99) == pytest.approx(0.005 + 0.005 * 9 / 10)
    assert quantile({}, 0.5) is None


def test_compute_times_are_the_difference_between_two_scrapes() -> None:
    before = _exposition({"player": [0.0015] * 10})
    after = _exposition({"player": [0.0015] * 10 + [0.008] * 10, "team": [0.0005]})
    times = compute_times(before, after)
    assert times["player"]["computes"] == 10
    assert times["player"]["mean_ms"] == pytest.approx(8.0)
    assert 5.0 < (times["player"]["p50_ms"] or 0) <= 10.0  # only the new, slower computes count
    assert times["team"]["computes"] == 1
