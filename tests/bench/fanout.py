"""Benchmark 6: push fan-out, the delay from a write to each of K SSE clients receiving the new version.

Written against the route's contract: ``GET /cache/stream?key=...`` (sse-starlette) sends
``event: update`` / ``id: <version>`` / ``data: {"key": ..., "version": ..., "data": ...}``. K clients
stream one key; each round writes a score of that key's player and times, per client, the arrival of an
event whose id is at least the version the cache now holds, from the write's commit (change-log entry id)
and from the cache write (its update notification). Skipped, with the reason, while the route is missing.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from redis.asyncio import Redis

from freshviews.core.keys import Keys
from tests.bench.clients import Connection
from tests.bench.common import Config, Figures, percentile
from tests.bench.stack import Stack, commit_times

ROUTE = "/cache/stream"
PLAYER = 1
KEY = f"player/{PLAYER}"
ROUND_TIMEOUT = 10.0
#: Stream opens in flight at once, and attempts per client (a 503/429 is retried after its Retry-After).
CONNECTING = 100
CONNECT_ATTEMPTS = 5


class SseClient:
    """One streaming connection; records when each ``update`` event id first arrived."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[int, float]] = []
        self.connected = asyncio.Event()
        self.status: int | None = None
        self.error: str | None = None
        self.refusals = 0
        self._head = b""
        self._conn: Connection | None = None

    def newest(self) -> int:
        return self.arrivals[-1][0] if self.arrivals else -1

    async def run(self, port: int, key: str, gate: asyncio.Semaphore) -> None:
        """Open the stream (retrying a 503/429 as EventSource would, after Retry-After), then read events."""
        for _ in range(CONNECT_ATTEMPTS):
            async with gate:
                retry_after = await self._open(port, key)
            if retry_after is None:
                break
            self.refusals += 1
            await asyncio.sleep(retry_after)
        if not self.connected.is_set():
            self.connected.set()
        if self._conn is not None:
            await self._read(self._conn)

    async def _open(self, port: int, key: str) -> float | None:
        """Connect and read the response head; return a retry delay when refused, else None."""
        try:
            conn = await Connection.open("127.0.0.1", port)
        except OSError as exc:
            self.error = f"connect: {exc}"
            return None
        try:
            host = conn.host.decode()
            request = f"GET {ROUTE}?key={key} HTTP/1.1\r\nhost: {host}\r\naccept: text/event-stream\r\n\r\n"
            conn.writer.write(request.encode())
            self._head = await conn.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            await conn.close()
            return None
        self.status = int(self._head.split(b" ", 2)[1])
        if self.status in (429, 503):
            await conn.close()
            match = re.search(rb"retry-after: *([0-9]+)", self._head.lower())
            return float(match.group(1)) if match else 1.0
        self._conn = conn
        self.connected.set()
        return None

    async def _read(self, conn: Connection) -> None:
        try:
            chunked = b"transfer-encoding: chunked" in self._head.lower()
            event: dict[str, str] = {}
            buffer = b""
            async for piece in _body(conn.reader, chunked):
                buffer += piece
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    line = raw.rstrip(b"\r").decode()
                    if line:
                        name, _, value = line.partition(":")
                        event[name] = value.removeprefix(" ")
                        continue
                    if event.get("event") == "update" and event.get("id", "").isdigit():
                        self.arrivals.append((int(event["id"]), time.time()))
                    event = {}
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            await conn.close()


async def _body(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[bytes]:
    if not chunked:
        while piece := await reader.read(65536):
            yield piece
        return
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            return
        yield await reader.readexactly(size)
        await reader.readexactly(2)


async def _round(stack: Stack, redis: Redis, clients: list[SseClient], points: int) -> dict[str, Any]:
    keys = Keys()
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.updates_channel)
    try:
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as http:
            answer = await http.post("/api/scores", json={"player_id": PLAYER, "points": points})
        answer.raise_for_status()
        score_id = str(answer.json()["id"])
        notified, version = None, None
        deadline = time.monotonic() + ROUND_TIMEOUT
        while version is None and time.monotonic() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None:
                text, _, key = message["data"].decode().partition(" ")
                if key == KEY:
                    notified, version = time.time(), int(text)
    finally:
        await pubsub.aclose()
    if version is None:
        return {"version": None, "from_commit": [], "from_notification": [], "missing_clients": len(clients)}
    while time.monotonic() < deadline and any(c.newest() < version for c in clients):  # noqa: ASYNC110
        # Polling K clients' newest ids every 10 ms costs less than an Event per client per round.
        await asyncio.sleep(0.01)
    arrivals = [next((t for v, t in c.arrivals if v >= version), None) for c in clients]
    got = [t for t in arrivals if t is not None]
    committed = (await commit_times(redis, "scores")).get(score_id)
    return {
        "version": version,
        "from_commit": [t - committed for t in got] if committed is not None else [],
        "from_notification": [t - notified for t in got] if notified is not None else [],
        "missing_clients": len(clients) - len(got),
    }


async def _fan_out(stack: Stack, k: int, rounds: int) -> dict[str, Any]:
    clients = [SseClient() for _ in range(k)]
    # Connections open CONNECTING at a time, as clients arriving over a moment would, not all in one instant.
    gate = asyncio.Semaphore(CONNECTING)
    tasks = [asyncio.create_task(c.run(stack.app_port, KEY, gate)) for c in clients]
    redis = Redis.from_url(stack.redis_url)
    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(c.connected.wait() for c in clients))
        refused = [c for c in clients if c.status != 200]
        await asyncio.sleep(0.5)  # initial events (if the route sends the current value first) settle
        per_round = []
        for r in range(rounds):
            per_round.append(await _round(stack, redis, clients, points=10 + r))
            await asyncio.sleep(0.2)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await redis.aclose()
    commit = [x for r in per_round for x in r["from_commit"]]
    notify = [x for r in per_round for x in r["from_notification"]]
    last = [max(r["from_commit"]) for r in per_round if r["from_commit"]]
    return {
        "clients": k,
        "rounds": rounds,
        "refused_then_retried": sum(c.refusals for c in clients),
        "not_200": len(refused),
        "not_200_statuses": sorted({c.status for c in refused}, key=str),
        "client_errors": sorted({c.error for c in clients if c.error})[:5],
        "missing_deliveries": sum(r["missing_clients"] for r in per_round),
        "commit_to_client_p50_ms": _ms(percentile(commit, 50)),
        "commit_to_client_p99_ms": _ms(percentile(commit, 99)),
        "cache_write_to_client_p50_ms": _ms(percentile(notify, 50)),
        "cache_write_to_client_p99_ms": _ms(percentile(notify, 99)),
        "commit_to_last_client_median_ms": _ms(percentile(last, 50)),
    }


def _routes() -> set[str]:
    """Paths the backend serves, from its OpenAPI schema (building the app opens nothing: the lifespan does)."""
    from freshviews.scoreboard.main import create_app
    from freshviews.scoreboard.settings import AppSettings

    return set(create_app(AppSettings()).openapi().get("paths", {}))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


async def run(config: Config) -> dict[str, Any]:
    # The backend caps the streams one process holds (FRESHVIEWS_SSE_MAX_STREAMS, 1000 by default). Room for every K at
    # once: a closed stream's slot is released only when the server notices the disconnect (next event or ping).
    max_streams = sum(config.fanout_clients) + 50
    conditions = {
        "app_sse_max_streams": max_streams,
        "route": f"GET {ROUTE}?key={KEY} (text/event-stream)",
        "clients": list(config.fanout_clients),
        "rounds": config.fanout_rounds,
        "write": f"POST /api/scores for player {PLAYER}, one per round, 0.2 s apart",
        "processes": "1 uvicorn worker, 1 subscriber, 1 redis-server; clients in the bench process",
        "connecting": f"at most {CONNECTING} stream opens at once; 503/429 retried after Retry-After, "
        f"{CONNECT_ATTEMPTS} attempts",
    }
    figures = Figures()
    names = [f"{m}_k{k}" for k in config.fanout_clients for m in ("commit_to_client_p50_ms", "commit_to_client_p99_ms")]
    if ROUTE not in _routes():
        reason = f"GET {ROUTE} is not among the backend's routes yet (app.main.create_app().openapi())"
        print(f"  fanout: skipped: {reason}", flush=True)
        for name in names:
            figures.put(name, None, reason)
        return {
            "status": "skipped",
            "reason": reason,
            "conditions": conditions,
            "figures": figures.values,
            "missing": figures.missing,
            "goals": [],
        }
    stack = Stack(
        workdir=config.workdir("fanout"),
        database_file=config.database("fanout"),
        capture=True,
        sweep_interval=60.0,
        extra_env={"FRESHVIEWS_SSE_MAX_STREAMS": str(max_streams)},
    ).start()
    results = []
    try:
        await asyncio.to_thread(stack.wait_warm)
        for k in config.fanout_clients:
            result = await _fan_out(stack, k, config.fanout_rounds)
            results.append(result)
            print(
                f"  fanout K={k}: commit->client p50 {result['commit_to_client_p50_ms']} ms, "
                f"p99 {result['commit_to_client_p99_ms']} ms, last client (median round) "
                f"{result['commit_to_last_client_median_ms']} ms, missing {result['missing_deliveries']}",
                flush=True,
            )
            for metric_name in ("commit_to_client_p50_ms", "commit_to_client_p99_ms"):
                figures.put(f"{metric_name}_k{k}", result[metric_name], "no client received an update")
    finally:
        stack.stop()
    return {
        "conditions": conditions,
        "results": results,
        "figures": figures.values,
        "missing": figures.missing,
        "goals": [],
    }
