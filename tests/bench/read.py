"""Benchmark 3: what the cache read route costs, as a ratio of request rates under the same load tool.

``GET /cache/{key}`` (stored bytes from Redis, ETag) against a bare FastAPI route returning the same bytes
and headers from memory (``bare_app.py``, same uvicorn settings), for 200s and for 304s
(``If-None-Match`` with the current version), against the naive route computing the view, and with
redis-py's parser switched from hiredis to pure Python (``nohiredis.py``). Configurations run in
turns, ``read_rounds`` times each, and the median rate of each is used, so slow drift of a noisy machine
falls on all of them alike.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from typing import Any

import httpx

from freshviews.core.connections import create_redis
from freshviews.core.keys import Keys
from freshviews.scoreboard.db import open_database
from freshviews.scoreboard.views import registry
from freshviews.worker.recompute import Recomputer
from freshviews.worker.store import CacheStore
from tests.bench.clients import RateResult, run_python_rate, run_wrk, wrk_available
from tests.bench.common import BENCH_DIR, Config, Figures, ratio, rounded
from tests.bench.stack import Stack
from tests.support.helpers import free_port
from tests.support.processes import Process, wait_http

KEY = "leaderboard/eu"


async def populate(stack: Stack, key: str) -> None:
    """Write one view into the stack's cache exactly as the subscriber would (ticket, compute, fenced write)."""
    db = open_database(f"sqlite+aiosqlite:///{stack.database_file}")
    redis = create_redis(stack.redis_url)
    try:
        result = await Recomputer(CacheStore(redis, Keys()), db, concurrency=1).run(
            {key: registry.parse(key)}, trigger="bench"
        )
        if result.failures:
            raise RuntimeError(f"could not compute {key}: {result.failures}")
    finally:
        await redis.aclose()
        await db.close()


async def _rate(port: int, path: str, config: Config, headers: list[tuple[str, str]]) -> RateResult:
    if wrk_available():
        url = f"http://127.0.0.1:{port}{path}"
        return await asyncio.to_thread(
            run_wrk, url, seconds=config.read_seconds, connections=config.read_connections, headers=headers
        )
    return await run_python_rate(
        "127.0.0.1", port, path, seconds=config.read_seconds, connections=config.read_connections, headers=headers
    )


async def run(config: Config) -> dict[str, Any]:
    work = config.workdir("read")
    database = config.database("read")
    stacks = {
        "hiredis": Stack(workdir=work / "hiredis", database_file=database),
        "python_parser": Stack(
            workdir=work / "python-parser", database_file=database, launcher=[str(BENCH_DIR / "nohiredis.py")]
        ),
    }
    bare: Process | None = None
    try:
        for stack in stacks.values():
            stack.launch()
        for stack in stacks.values():
            await asyncio.to_thread(stack.ready)
            await populate(stack, KEY)
        parser_app = stacks["python_parser"].app
        parser_log = parser_app.log() if parser_app is not None else ""
        parser_line = next((line for line in parser_log.splitlines() if "redis parser" in line), "")
        first = await asyncio.to_thread(httpx.get, f"{stacks['hiredis'].base_url}/cache/{KEY}", timeout=5)
        first.raise_for_status()
        etag, cache_control = first.headers["etag"], first.headers["cache-control"]
        body_file = work / "body.json"
        body_file.write_bytes(first.content)
        bare_port = free_port()
        bare = Process(
            "bare",
            [sys.executable, str(BENCH_DIR / "bare_app.py"), str(bare_port), str(body_file), etag, cache_control],
            stacks["hiredis"].env(),
            work / "bare.log",
            cwd=work,
        ).start()
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{bare_port}/bare/{KEY}", bare)
        parser_answer = await asyncio.to_thread(httpx.get, f"{stacks['python_parser'].base_url}/cache/{KEY}", timeout=5)
        parser_etag = parser_answer.headers.get("etag", "")
        match = [("If-None-Match", etag)]
        configs: dict[str, tuple[int, str, list[tuple[str, str]]]] = {
            "cache_200": (stacks["hiredis"].app_port, f"/cache/{KEY}", []),
            "cache_304": (stacks["hiredis"].app_port, f"/cache/{KEY}", match),
            "bare_200": (bare_port, f"/bare/{KEY}", []),
            "bare_304": (bare_port, f"/bare/{KEY}", match),
            "naive_200": (stacks["hiredis"].app_port, "/api/leaderboard/eu", []),
            "cache_200_python_parser": (stacks["python_parser"].app_port, f"/cache/{KEY}", []),
            "cache_304_python_parser": (
                stacks["python_parser"].app_port,
                f"/cache/{KEY}",
                [("If-None-Match", parser_etag)],
            ),
        }
        statuses = {}
        for name, (port, path, headers) in configs.items():
            answer = await asyncio.to_thread(
                httpx.get, f"http://127.0.0.1:{port}{path}", headers=dict(headers), timeout=10
            )
            statuses[name] = {"status": answer.status_code, "bytes": len(answer.content)}
        for port, path, headers in configs.values():
            # A fresh server's first second is slower (connections to Redis and the database being opened).
            await run_python_rate("127.0.0.1", port, path, seconds=0.2, connections=4, headers=headers)
        runs: dict[str, list[RateResult]] = {name: [] for name in configs}
        for _ in range(config.read_rounds):
            for name, (port, path, headers) in configs.items():
                runs[name].append(await _rate(port, path, config, headers))
    finally:
        if bare is not None:
            bare.stop()
        for stack in stacks.values():
            stack.stop()
    table: dict[str, dict[str, Any]] = {}
    for name, results in runs.items():
        rates = [r.requests_per_s for r in results if r.requests_per_s is not None]
        table[name] = {
            **statuses[name],
            "requests_per_s_median": round(statistics.median(rates), 1) if rates else None,
            "requests_per_s_runs": rates,
            "latency_p50_ms": results[-1].latency_p50_ms,
            "latency_p99_ms": results[-1].latency_p99_ms,
            "non_2xx_3xx": sum(r.non_2xx_3xx for r in results),
            "socket_errors": [r.errors for r in results if r.errors],
        }
        print(
            f"  read {name:24s} status {statuses[name]['status']}: {table[name]['requests_per_s_median']} req/s "
            f"(runs {rates}), p99 {table[name]['latency_p99_ms']} ms",
            flush=True,
        )

    def rate(name: str) -> float | None:
        value = table[name]["requests_per_s_median"]
        return float(value) if value is not None else None

    figures = Figures()
    for name in configs:
        figures.put(f"{name}_requests_per_s", rate(name))
    figures.put("cache_200_over_bare_200", rounded(ratio(rate("cache_200"), rate("bare_200"))))
    figures.put("cache_304_over_bare_304", rounded(ratio(rate("cache_304"), rate("bare_304"))))
    figures.put("cache_200_over_naive_200", rounded(ratio(rate("cache_200"), rate("naive_200"))))
    figures.put("hiredis_over_python_parser_200", rounded(ratio(rate("cache_200"), rate("cache_200_python_parser"))))
    figures.put("hiredis_over_python_parser_304", rounded(ratio(rate("cache_304"), rate("cache_304_python_parser"))))
    tool = runs["cache_200"][0].tool if runs["cache_200"] else "none"
    return {
        "conditions": {
            "tool": tool,
            "tool_note": "" if wrk_available() else "wrk is not installed (apt-get install -y wrk): Python fallback",
            "connections": config.read_connections,
            "seconds_per_run": config.read_seconds,
            "rounds": config.read_rounds,
            "key": KEY,
            "body_bytes": len(first.content),
            "server": "uvicorn, 1 worker, default loop/http (uvloop, httptools), no access log",
            "python_parser_check": parser_line.strip() or "parser line not found in the app log",
            "note": "load tool, server and redis-server share 2 cores",
        },
        "configs": table,
        "figures": figures.values,
        "missing": figures.missing,
        "goals": [],
    }
