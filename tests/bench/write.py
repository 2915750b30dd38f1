"""Benchmark 4: what the publish hook adds to a write route's latency.

Two backends on one database file and one Redis: one with the hook (FRESHVIEWS_PUBLISH_ENABLED=true), one
without. One client sends ``POST /api/scores`` to each in turn (A, B, A, B, ...: drift of a noisy machine
falls on both alike), one request at a time, so the two never contend for the SQLite write lock. No
subscriber runs: this isolates the hook (one XADD after the commit) from everything else.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from tests.bench.clients import Connection
from tests.bench.common import Config, Figures, goal, percentile, ratio, rounded
from tests.bench.stack import Stack
from tests.support.metrics import metric, scrape

WARMUP = 30


async def run(config: Config) -> dict[str, Any]:
    database = config.database("write")
    work = config.workdir("write")
    with_hook = Stack(workdir=work / "hook", database_file=database, publish=True)
    without = Stack(workdir=work / "no-hook", database_file=database, publish=False)
    rng = random.Random(5)
    latencies: dict[str, list[float]] = {"hook": [], "no_hook": []}
    publish_seconds: tuple[float, float] | None = None
    try:
        with_hook.launch()
        without.launch()
        with_hook.ready()
        without.ready()
        connections = {
            "hook": await Connection.open("127.0.0.1", with_hook.app_port),
            "no_hook": await Connection.open("127.0.0.1", without.app_port),
        }
        for i in range(WARMUP + config.write_pairs):
            order = ("hook", "no_hook") if i % 2 == 0 else ("no_hook", "hook")
            for name in order:
                body = json.dumps({"player_id": rng.randint(1, config.seed.players), "points": 10}).encode()
                started = time.perf_counter()
                status, _, payload = await connections[name].request("POST", "/api/scores", body=body)
                elapsed = time.perf_counter() - started
                if status != 201:
                    raise RuntimeError(f"write to the {name} backend answered {status}: {payload[:200]!r}")
                if i >= WARMUP:
                    latencies[name].append(elapsed)
        for conn in connections.values():
            await conn.close()
        text = scrape(f"{with_hook.base_url}/metrics")
        publish_seconds = (
            metric(text, "freshviews_publish_seconds_sum"),
            metric(text, "freshviews_publish_seconds_count"),
        )
        published = metric(text, "freshviews_changes_published_total")
        failed = metric(text, "freshviews_changes_publish_failed_total")
    finally:
        with_hook.stop()
        without.stop()
    figures = Figures()
    stats: dict[str, dict[str, float | None]] = {}
    for name, values in latencies.items():
        stats[name] = {f"p{q}_ms": rounded(_ms(percentile(values, q)), 3) for q in (50, 90, 99)}
        for q in (50, 90, 99):
            figures.put(f"{name}_p{q}_ms", stats[name][f"p{q}_ms"])
    p50 = ratio(percentile(latencies["hook"], 50), percentile(latencies["no_hook"], 50))
    p99 = ratio(percentile(latencies["hook"], 99), percentile(latencies["no_hook"], 99))
    figures.put("hook_over_no_hook_p50", rounded(p50))
    figures.put("hook_over_no_hook_p99", rounded(p99))
    mean_publish = ratio(publish_seconds[0], publish_seconds[1]) if publish_seconds else None
    figures.put("publish_mean_ms_from_app_metrics", rounded(_ms(mean_publish), 3), "no publish was recorded")
    print(
        f"  write p50 hook {stats['hook']['p50_ms']} ms / no hook {stats['no_hook']['p50_ms']} ms = {rounded(p50)}; "
        f"p99 {stats['hook']['p99_ms']} / {stats['no_hook']['p99_ms']} ms = {rounded(p99)}; "
        f"publish itself {rounded(_ms(mean_publish), 3)} ms on average",
        flush=True,
    )
    return {
        "conditions": {
            "route": "POST /api/scores (random player, 10 points)",
            "pairs": config.write_pairs,
            "warmup_pairs": WARMUP,
            "order": "alternating, one request at a time, keep-alive connection per backend",
            "database": f"SQLite (WAL, synchronous=NORMAL), {config.seed.players} players, shared by both backends",
            "subscriber": "none (the hook alone)",
            "changes_published": published,
            "publish_failures": failed,
        },
        "figures": figures.values,
        "missing": figures.missing,
        "goals": [goal("write p50 with hook / without", "<= 1.10", p50, None if p50 is None else p50 <= 1.10)],
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000
