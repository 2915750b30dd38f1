"""The benchmark harness cannot rot: its quick mode runs here and must produce every figure (or say why not).

Timing goals are not asserted (this machine's noise would make them flaky); that the harness measures, and
reports each figure or the reason it is missing, is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

RUN = Path(__file__).resolve().parent / "run.py"

#: Figures every quick run must report, per benchmark (a None value needs its reason under "missing").
_PER_WINDOW = ("queries_per_min", "compute_calls_per_min", "read_p50_ms", "read_p99_ms", "achieved_over_intended")
EXPECTED: dict[str, list[str]] = {
    "load": [
        *(f"{s}_{f}_n{n}" for s in ("naive", "warmer", "change") for n in (5, 20) for f in _PER_WINDOW),
        "change_over_naive_queries_n20",
        "change_over_warmer_queries_n20",
        "change_queries_n20_over_n5",
        "change_sweep_queries_per_min_amortised",
    ],
    "freshness": [
        "change_staleness_p50_ms_at_10_per_s",
        "change_staleness_p99_ms_at_10_per_s",
        "change_staleness_p50_ms_at_100_per_s",
        "change_staleness_p99_ms_at_100_per_s",
        "warmer_staleness_p50_ms_at_10_per_s",
        "warmer_over_change_median_staleness",
        "player_compute_p99_ms_at_10_per_s",
        "player_compute_p99_ms_at_100_per_s",
        "stats_recomputes_per_s_throttled_at_100",
        "stats_recomputes_per_s_unthrottled_at_100",
        "player_staleness_p99_ms_throttled_at_100",
    ],
    "read": [
        "cache_200_over_bare_200",
        "cache_304_over_bare_304",
        "cache_200_over_naive_200",
        "hiredis_over_python_parser_200",
        "hiredis_over_python_parser_304",
    ],
    "write": [
        "capture_p50_ms",
        "no_hook_p50_ms",
        "capture_over_no_hook_p50",
        "capture_over_no_hook_p99",
        "xadd_per_relayed_row",
    ],
    "subscriber": ["changes_per_s", "round_trips_per_batch", "changes_per_batch"],
    "fanout": ["commit_to_client_p50_ms_k100", "commit_to_client_p99_ms_k100"],
    "sampler": [
        "statements_per_sample",
        "db_ms_per_sample",
        "wall_ms_per_sample",
        "hole_found_median_samples",
        "hole_found_worst_samples",
        "db_statements_per_s_at_10_per_s",
        "hole_found_median_s_at_10_per_s",
    ],
    "pglog": [
        "stream_changes_per_s",
        "polled_changes_per_s",
        "applied_changes_per_s",
        "pglog_commit_to_cache_p50_ms_at_100_per_s",
        "pglog_commit_to_cache_p99_ms_at_100_per_s",
        "sqlalchemy_commit_to_cache_p50_ms_at_100_per_s",
        "sqlalchemy_commit_to_cache_p99_ms_at_100_per_s",
    ],
    "ttl": [
        *(
            f"{s}_{f}_n20"
            for s in ("freshviews", "fastapi_cache2_1s", "cashews_1s")
            for f in ("queries_per_min", "staleness_p50_ms", "not_readable_in_1s_share")
        ),
        "freshviews_over_best_ttl_1s_queries_n20",
        "best_ttl_1s_over_freshviews_staleness_p50_n20",
    ],
}


def _check_figures(name: str, entry: dict[str, Any]) -> None:
    figures, missing = entry["figures"], entry["missing"]
    for figure in EXPECTED[name]:
        assert figure in figures, f"{name}: figure {figure} is not reported"
        value = figures[figure]
        if value is None:
            assert missing.get(figure), f"{name}: {figure} is missing without a reason"
        else:
            assert isinstance(value, int | float), f"{name}: {figure} = {value!r} is not a number"
    # A skipped benchmark is only acceptable with a reason (the fan-out route may not exist yet).
    if entry["status"] == "skipped":
        assert entry.get("reason")


@pytest.mark.bench
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    # Run as the user runs it; the product measured is the working tree as it is now.
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(out)], capture_output=True, text=True, timeout=280
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "quick"
    assert results["machine"]["cores"]
    assert results["machine"]["python"]
    assert set(results["benchmarks"]) == set(EXPECTED)
    for name, entry in results["benchmarks"].items():
        assert entry["status"] in ("ok", "skipped"), f"{name}: {entry.get('reason')}"
        assert entry["status"] == "ok" or name == "fanout", f"{name} was skipped: {entry.get('reason')}"
        assert entry["conditions"], f"{name}: conditions are not reported"
        _check_figures(name, entry)
    load = results["benchmarks"]["load"]["systems"]
    # The measurement must have seen work: the naive system computes on reads, the cached ones do not.
    assert load["naive"]["windows"][-1]["app_queries_per_min"] > 0
    assert load["change"]["windows"][-1]["reads"]["achieved_requests_per_s"] > 0
    assert (out / "summary.md").read_text().startswith("# freshviews benchmark results")
