"""Benchmark 4: what capturing the changes adds to a write route's latency.

Two backends on one database file and one Redis: one with the capture (APP_CAPTURE=true: the outbox rows
written in the write's transaction, relayed to the change log right after the commit by the same process), one
without any hook (APP_CAPTURE=false). One client sends ``POST /api/scores`` to each in turn (A, B, A, B, ...:
drift of a noisy machine falls on both alike), one request at a time, so the two never contend for the SQLite
write lock. No subscriber runs: this isolates the capture and its relay from everything else. The relay's
cost in Redis is counted too: its XADDs per relayed row, and the relay rounds per write.
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
    with_capture = Stack(workdir=work / "capture", database_file=database, capture=True)
    without = Stack(workdir=work / "no-hook", database_file=database, capture=False)
    rng = random.Random(5)
    latencies: dict[str, list[float]] = {"capture": [], "no_hook": []}
    try:
        with_capture.launch()
        without.launch()
        with_capture.ready()
        without.ready()
        connections = {
            "capture": await Connection.open("127.0.0.1", with_capture.app_port),
            "no_hook": await Connection.open("127.0.0.1", without.app_port),
        }
        for i in range(WARMUP + config.write_pairs):
            order = ("capture", "no_hook") if i % 2 == 0 else ("no_hook", "capture")
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
        text = scrape(f"{with_capture.base_url}/metrics")
        relayed = metric(text, "freshviews_outbox_relayed_total")
        relay_errors = metric(text, "freshviews_outbox_relay_errors_total")
        xadds = await _commands(with_capture.redis_url, "xadd")
        logged = await _log_length(with_capture.redis_url)
    finally:
        with_capture.stop()
        without.stop()
    figures = Figures()
    stats: dict[str, dict[str, float | None]] = {}
    for name, values in latencies.items():
        stats[name] = {f"p{q}_ms": rounded(_ms(percentile(values, q)), 3) for q in (50, 90, 99)}
        for q in (50, 90, 99):
            figures.put(f"{name}_p{q}_ms", stats[name][f"p{q}_ms"])
    p50 = ratio(percentile(latencies["capture"], 50), percentile(latencies["no_hook"], 50))
    p99 = ratio(percentile(latencies["capture"], 99), percentile(latencies["no_hook"], 99))
    figures.put("capture_over_no_hook_p50", rounded(p50, 3))
    figures.put("capture_over_no_hook_p99", rounded(p99, 3))
    writes = WARMUP + config.write_pairs
    figures.put("xadd_per_relayed_row", rounded(ratio(xadds, relayed), 3), "nothing was relayed")
    print(
        f"  write p50 capture {stats['capture']['p50_ms']} ms / no hook {stats['no_hook']['p50_ms']} ms = "
        f"{rounded(p50, 3)}; p99 {stats['capture']['p99_ms']} / {stats['no_hook']['p99_ms']} ms = {rounded(p99, 3)}; "
        f"{relayed:g} rows relayed for {writes} writes in {xadds:g} XADDs ({logged} log entries)",
        flush=True,
    )
    return {
        "conditions": {
            "route": "POST /api/scores (random player, 10 points)",
            "pairs": config.write_pairs,
            "warmup_pairs": WARMUP,
            "order": "alternating, one request at a time, keep-alive connection per backend",
            "database": f"SQLite (WAL, synchronous=NORMAL), {config.seed.players} players, shared by both backends",
            "subscriber": "none (the capture and its in-process relay alone)",
            "outbox_rows_relayed": relayed,
            "relay_errors": relay_errors,
            "change_log_entries": logged,
        },
        "figures": figures.values,
        "missing": figures.missing,
        "goals": [
            goal("write p50 with capture / without any hook", "<= 1.05", p50, None if p50 is None else p50 <= 1.05),
            goal("write p99 with capture / without any hook", "<= 1.05", p99, None if p99 is None else p99 <= 1.05),
        ],
    }


async def _commands(redis_url: str, name: str) -> float:
    """How many times Redis ran command ``name`` (INFO commandstats)."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        stats = await redis.info("commandstats")
    finally:
        await redis.aclose()
    return float(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


async def _log_length(redis_url: str) -> int:
    from redis.asyncio import Redis

    from freshviews.core.keys import Keys

    redis = Redis.from_url(redis_url)
    try:
        return int(await redis.xlen(Keys().changes))
    finally:
        await redis.aclose()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000
