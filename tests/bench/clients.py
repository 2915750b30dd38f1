"""A small HTTP/1.1 keep-alive client on asyncio streams, pollers on a schedule, and wrk.

Why not httpx for the load: at a thousand polling clients the generator shares two cores with the server it
measures, and httpx spends ~0.5 ms of CPU per request where writing a request line and reading a
Content-Length body costs a few microseconds. The generator reports its own CPU use and the rate it achieved
against the rate it intended, so an overloaded generator shows in the results instead of hiding in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.bench.common import percentile, seconds_of

#: An idle connection older than this is closed rather than reused: uvicorn closes idle keep-alive connections
#: after 5 s (``timeout_keep_alive``), and a request sent on one the server is closing fails on the client's side
#: of the race, an error the server never made.
IDLE_EXPIRY = 4.0


class HttpError(Exception):
    """The server closed the connection or answered something this client does not parse."""


class ClosedIdle(HttpError):
    """A reused connection was closed by the server before any answer: safe to retry an idempotent request."""


class Connection:
    """One keep-alive connection. Not shared between concurrent requests (the pool hands it to one at a time)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host
        self.requests = 0
        #: When the last answer was read (monotonic), for the pool's idle expiry.
        self.idle_since = time.monotonic()

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer, f"{host}:{port}".encode())

    async def request(
        self, method: str, path: str, *, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        extra = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers)
        if body:
            extra += b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
        self.writer.write(b"%s %s HTTP/1.1\r\nhost: %s\r\n%s\r\n" % (method.encode(), path.encode(), self.host, extra))
        if body:
            self.writer.write(body)
        reused = self.requests > 0
        self.requests += 1
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            nothing = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
            error = ClosedIdle if reused and nothing else HttpError
            raise error(f"connection closed: {exc}") from None
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        fields: dict[bytes, bytes] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(b":")
                fields[name.strip().lower()] = value.strip()
        if b"content-length" in fields:
            payload = await self.reader.readexactly(int(fields[b"content-length"]))
        elif fields.get(b"transfer-encoding") == b"chunked":
            payload = await self._chunked()
        else:
            payload = b""
        self.idle_since = time.monotonic()
        return status, fields, payload

    async def _chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


class Pool:
    """At most ``size`` connections to one server, handed to one request at a time."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port, self.size = host, port, size
        self._idle: list[Connection] = []
        self._slots = asyncio.Semaphore(size)
        self.opened = 0
        #: Idle connections closed for age, and requests resent once on a fresh connection (GET and HEAD only).
        self.expired = 0
        self.retried = 0

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[bytes, bytes], bytes]:
        async with self._slots:
            try:
                return await self._once(await self._connection(), method, path, **kwargs)
            except ClosedIdle:
                if method not in ("GET", "HEAD"):
                    raise  # the server may have acted on it: never sent twice
                # The server closed a connection the expiry had not caught yet; a fresh one answers.
                self.retried += 1
                return await self._once(await self._open(), method, path, **kwargs)

    async def _connection(self) -> Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < IDLE_EXPIRY:
                return conn
            await conn.close()
            self.expired += 1
        return await self._open()

    async def _open(self) -> Connection:
        self.opened += 1
        return await Connection.open(self.host, self.port)

    async def _once(
        self, conn: Connection, method: str, path: str, **kwargs: Any
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        try:
            result = await conn.request(method, path, **kwargs)
        except BaseException:
            await conn.close()
            raise
        if result[1].get(b"connection") == b"close":
            await conn.close()
        else:
            self._idle.append(conn)
        return result

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


@dataclass
class PollResult:
    intended_rate: float
    duration: float
    completed: int = 0
    skipped_ticks: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    generator_cpu: float = 0.0

    @property
    def achieved_rate(self) -> float:
        return self.completed / self.duration if self.duration else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "intended_requests_per_s": round(self.intended_rate, 2),
            "achieved_requests_per_s": round(self.achieved_rate, 2),
            "achieved_over_intended": round(self.achieved_rate / self.intended_rate, 4) if self.intended_rate else None,
            "skipped_ticks": self.skipped_ticks,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(self.errors),
            "latency_p50_ms": _ms(percentile(self.latencies, 50)),
            "latency_p99_ms": _ms(percentile(self.latencies, 99)),
            "generator_cpu_share_of_one_core": round(self.generator_cpu / self.duration, 3) if self.duration else None,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


async def poll(
    pool: Pool,
    client_paths: Sequence[Sequence[str]],
    *,
    rate_per_client: float,
    warmup: float,
    duration: float,
    seed: int = 1,
) -> PollResult:
    """Each client polls its paths in turn, one request every 1/``rate_per_client`` s, for warmup + duration.

    A client waits for its answer before its next request (as a polling page does); a tick that finds the
    previous request still waiting is skipped and counted, so the achieved rate falls below the intended one
    when the server (or this generator) cannot keep up. Latency runs from the tick to the answer. Only
    requests sent after ``warmup`` are counted; client start times are spread over one period.
    """
    rng = random.Random(seed)
    period = 1 / rate_per_client
    result = PollResult(intended_rate=len(client_paths) * rate_per_client, duration=duration)
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from, end = start + warmup, start + warmup + duration
    cpu_at: list[float] = []

    async def client(paths: Sequence[str], offset: float) -> None:
        tick = start + offset
        i = rng.randrange(len(paths))
        while True:
            now = loop.time()
            if now >= end:
                return
            if now > tick + period:
                # The answer took longer than a period: the ticks in between were not sent.
                missed = int((now - tick) / period)
                if tick >= measure_from:
                    result.skipped_ticks += missed
                tick += missed * period
            await asyncio.sleep(max(0.0, tick - loop.time()))
            if tick >= end:
                return
            counted = tick >= measure_from
            path = paths[i % len(paths)]
            i += 1
            try:
                status, _, _ = await pool.request("GET", path)
            except (HttpError, OSError) as exc:
                if counted:
                    result.errors[type(exc).__name__] += 1
            else:
                if counted and loop.time() <= end:
                    result.completed += 1
                    result.statuses[status] += 1
                    result.latencies.append(loop.time() - tick)
            tick += period

    async def cpu_marks() -> None:
        await asyncio.sleep(max(0.0, measure_from - loop.time()))
        cpu_at.append(time.process_time())
        await asyncio.sleep(max(0.0, end - loop.time()))
        cpu_at.append(time.process_time())

    n = len(client_paths)
    async with asyncio.TaskGroup() as group:
        group.create_task(cpu_marks())
        for index, paths in enumerate(client_paths):
            group.create_task(client(paths, period * index / n))
    if len(cpu_at) == 2:
        result.generator_cpu = cpu_at[1] - cpu_at[0]
    return result


# --- closed-loop rate measurement: wrk, or a Python fallback -------------------------------------------------


@dataclass
class RateResult:
    tool: str
    requests_per_s: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    non_2xx_3xx: int
    errors: str


_RPS = re.compile(r"Requests/sec:\s*([0-9.]+)")
_PCT = re.compile(r"^\s*(50|99)(?:\.000)?%\s+(\S+)\s*$", re.MULTILINE)
_NON = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")
_SOCK = re.compile(r"Socket errors:.*")


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(url: str, *, seconds: float, connections: int, headers: Sequence[tuple[str, str]] = ()) -> RateResult:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    for name, value in headers:
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = _RPS.search(out)
    pct = {m.group(1): seconds_of(m.group(2)) for m in _PCT.finditer(out)}
    non = _NON.search(out)
    sock = _SOCK.search(out)
    return RateResult(
        tool="wrk -t1",
        requests_per_s=float(rps.group(1)) if rps else None,
        latency_p50_ms=_ms(pct.get("50")),
        latency_p99_ms=_ms(pct.get("99")),
        non_2xx_3xx=int(non.group(1)) if non else 0,
        errors=sock.group(0) if sock else "",
    )


async def run_python_rate(
    host: str, port: int, path: str, *, seconds: float, connections: int, headers: Sequence[tuple[str, str]] = ()
) -> RateResult:
    """The wrk fallback: ``connections`` closed loops on this module's client for ``seconds``."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    bad = 0
    end = loop.time() + seconds

    async def worker() -> None:
        nonlocal bad
        conn = await Connection.open(host, port)
        try:
            while loop.time() < end:
                sent = loop.time()
                status, _, _ = await conn.request("GET", path, headers=headers)
                latencies.append(loop.time() - sent)
                bad += not 200 <= status < 400
        finally:
            await conn.close()

    started = loop.time()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = loop.time() - started
    return RateResult(
        tool="python asyncio client (wrk not installed)",
        requests_per_s=len(latencies) / elapsed if elapsed else None,
        latency_p50_ms=_ms(percentile(latencies, 50)),
        latency_p99_ms=_ms(percentile(latencies, 99)),
        non_2xx_3xx=bad,
        errors="",
    )
