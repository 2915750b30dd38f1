"""The PostgreSQL log source, measured: ``python tests/bench/pglog.py [--quick] [--out DIR]``.

On a PostgreSQL cluster of its own (wal_level=logical, ``tests/support/pgcluster.py``) and a redis-server of its
own, over the views of ``tests/pglog/views.py`` (``item/{id}`` only, so that every write costs one recompute):

- **throughput**: one transaction of ``bulk`` inserts; the rate the source decodes and appends its changes to
  the change log (from the commit to the last change appended), and the rate a subscriber then applies them
  (burst mode: read, resolve, recompute, fenced write, acknowledge). Beside it, the other way to read a slot:
  polling ``pg_logical_slot_get_binary_changes`` over an ordinary connection (a second slot over the same
  transaction), fetched and decoded, not appended;
- **commit → cache** at 100 and 1,000 writes/s (single-row INSERT transactions over asyncpg, a new row each):
  from the moment the write's COMMIT returned to the arrival of the cache's update notification for its key
  (published by the script that writes the value, so the value is readable then), p50 and p99; once through
  the log source and once through the SQLAlchemy capture (the ORM write, its outbox row, the relay woken at
  commit), with the same subscriber, database and views. Writer, source and subscriber share one event loop,
  as the subscriber process runs the source: the figures include that contention.

Results go to ``DIR/results.json`` and ``DIR/summary.md`` (default ``tests/bench/results/pglog``). ``run.py``
runs it too (``--only pglog``; its quick mode, a smaller transaction and 100 writes/s only, in the suite).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == BENCH_DIR:
    sys.path[0] = str(REPO)

import asyncpg  # noqa: E402
import psycopg2  # noqa: E402
from redis.asyncio import Redis  # noqa: E402
from sqlalchemy import Integer, String  # noqa: E402
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column  # noqa: E402

from freshviews.core.embedded import EmbeddedRedis  # noqa: E402
from freshviews.core.views import Registry  # noqa: E402
from freshviews.outbox import capturing, outbox_table  # noqa: E402
from freshviews.pglog.decoding import Decoder  # noqa: E402
from freshviews.worker.pglog import log_source  # noqa: E402
from freshviews.worker.service import Subscriber  # noqa: E402
from freshviews.worker.settings import SubscriberSettings  # noqa: E402
from tests.bench.common import machine_info, percentile, rounded  # noqa: E402
from tests.pglog.views import SCHEMA, VIEWS, Source, source  # noqa: E402
from tests.support.helpers import redis_executable, wait_until  # noqa: E402
from tests.support.pgcluster import Cluster, NoServer, own_cluster  # noqa: E402

ITEMS: Registry[Source] = Registry([VIEWS[0]], context=source)
#: Writes in flight at once (each its own transaction and connection).
IN_FLIGHT = 32


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    color: Mapped[str] = mapped_column(String)
    name: Mapped[str | None] = mapped_column(String, nullable=True)


def _settings(redis_url: str, cluster: Cluster, db: str, **extra: Any) -> SubscriberSettings:
    return SubscriberSettings(
        redis_url=redis_url, consumer="bench", sweep_interval=0, metrics_port=0, block_ms=100,
        stream_maxlen=1_000_000, pglog_url=cluster.url(db), pglog_slot=db, pglog_publication=db, sample_rate=0,
        **extra,
    )  # fmt: skip


def _database(cluster: Cluster, name: str) -> str:
    cluster.psql("postgres", f"CREATE DATABASE {name}")
    cluster.psql(name, SCHEMA)
    return name


def _poll_slot(url: str, slot: str, publication: str) -> tuple[int, float]:
    """Fetch and decode everything ``slot`` holds through ``pg_logical_slot_get_binary_changes``."""
    started = time.perf_counter()
    decoder, changes = Decoder(entities=frozenset({"items"})), 0
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT data FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL, 'proto_version', '1',"
                " 'publication_names', %s)",
                (slot, publication),
            )
            for (data,) in cur:
                done = decoder.feed(bytes(data))
                if done is not None:
                    changes += len(done.changes)
        conn.commit()
    finally:
        conn.close()
    return changes, time.perf_counter() - started


async def throughput(cluster: Cluster, redis: Redis, redis_url: str, bulk: int) -> dict[str, Any]:
    db = _database(cluster, "bench_throughput")
    settings = _settings(redis_url, cluster, db)
    await redis.flushall()
    log = log_source(redis, settings, ITEMS)
    assert log is not None
    await log.prepare()
    cluster.psql(db, "SELECT pg_create_logical_replication_slot('bench_polled', 'pgoutput')")
    task = asyncio.create_task(log.run())
    try:
        await wait_until(lambda: _active(cluster, db), 20)
        cluster.psql(db, f"INSERT INTO items SELECT g, 'red', 'n' FROM generate_series(1, {bulk}) g")
        committed = time.perf_counter()
        await wait_until(lambda: log.changes >= bulk, 300, interval=0.005)
        streamed = time.perf_counter() - committed
    finally:
        log.stop()
        await task
    polled, polled_s = await asyncio.to_thread(_poll_slot, cluster.url(db), "bench_polled", db)
    async with source(cluster.url(db)) as ctx:
        subscriber = Subscriber(redis=redis, registry=ITEMS, ctx=ctx, settings=settings)
        await subscriber.start(warm=False)
        started = time.perf_counter()
        applied = await subscriber.drain()
        applied_s = time.perf_counter() - started
    cluster.psql("postgres", "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")
    return {
        "bulk_rows": bulk,
        "stream_changes_per_s": rounded(bulk / streamed, 1),
        "polled_changes_per_s": rounded(polled / polled_s, 1) if polled else None,
        "polled_changes": polled,
        "applied_changes_per_s": rounded(applied / applied_s, 1),
        "applied_batches": subscriber.batches,
    }


def _active(cluster: Cluster, db: str) -> bool:
    return cluster.psql(db, "SELECT count(*) FROM pg_replication_slots WHERE active").strip() == "1"


async def _notifications(redis: Redis, channel: str, arrived: dict[str, float]) -> None:
    pubsub = redis.pubsub()
    await pubsub.subscribe(channel)
    try:
        async for message in pubsub.listen():
            if message["type"] == "message":
                key = message["data"].decode().split(" ", 1)[1]
                arrived.setdefault(key, time.time())
    finally:
        await pubsub.aclose()


async def latency(
    cluster: Cluster, redis: Redis, redis_url: str, *, capture: str, rate: float, window: float
) -> dict[str, Any]:
    db = _database(cluster, f"bench_{capture}_{int(rate)}")
    settings = _settings(redis_url, cluster, db)
    await redis.flushall()
    url = cluster.url(db)
    arrived: dict[str, float] = {}
    committed: dict[str, float] = {}
    async with contextlib.AsyncExitStack() as stack:
        ctx = await stack.enter_async_context(source(url))
        log = log_source(redis, settings, ITEMS) if capture == "pglog" else None
        subscriber = Subscriber(redis=redis, registry=ITEMS, ctx=ctx, settings=settings, log=log)
        write = await stack.enter_async_context(_writer(capture, url, redis, settings))
        listener = asyncio.create_task(_notifications(redis, settings.keys.updates_channel, arrived))
        running = asyncio.create_task(subscriber.run())
        try:
            if log is not None:
                await wait_until(lambda: _active(cluster, db), 20)
            await wait_until(lambda: redis.exists(settings.keys.sweep), 20)  # warmed (nothing to warm)
            in_flight: set[asyncio.Task[None]] = set()
            total = int(rate * window)
            start = time.perf_counter()

            gate = asyncio.Semaphore(IN_FLIGHT)

            async def one(n: int) -> None:
                try:
                    await write(n)
                    committed[f"item/{n}"] = time.time()
                finally:
                    gate.release()

            for n in range(1, total + 1):
                delay = start + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)  # the write schedule
                await gate.acquire()  # a writer that cannot keep up falls behind the schedule, and says so
                task = asyncio.create_task(one(n))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            achieved = total / (time.perf_counter() - start)
            await asyncio.gather(*in_flight)
            await wait_until(lambda: len(arrived) >= total, 120, interval=0.01)
        finally:
            subscriber.stop()
            await running
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
    lags = [(arrived[k] - t) * 1000 for k, t in committed.items() if k in arrived]
    return {
        f"{capture}_commit_to_cache_p50_ms_at_{int(rate)}_per_s": rounded(percentile(lags, 50), 2),
        f"{capture}_commit_to_cache_p99_ms_at_{int(rate)}_per_s": rounded(percentile(lags, 99), 2),
        f"{capture}_achieved_writes_per_s_at_{int(rate)}_per_s": rounded(achieved, 1),
    }


@contextlib.asynccontextmanager
async def _writer(capture: str, url: str, redis: Redis, settings: SubscriberSettings) -> AsyncIterator[Any]:
    if capture == "pglog":
        pool = await asyncpg.create_pool(url, min_size=4, max_size=16)
        try:

            async def insert(n: int) -> None:
                await pool.execute("INSERT INTO items VALUES ($1, 'red', 'bench')", n)

            yield insert
        finally:
            await pool.close()
        return
    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://"), pool_size=16)
    outbox = outbox_table()
    async with engine.begin() as conn:
        await conn.run_sync(outbox.metadata.create_all)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    try:
        async with capturing(sessions, ITEMS, redis=redis, settings=settings, table=outbox, engine=engine):

            async def add(n: int) -> None:
                async with sessions() as session:
                    session.add(Item(id=n, color="red", name="bench"))
                    await session.commit()

            yield add
    finally:
        await engine.dispose()


async def measure(quick: bool, out: Path | None = None) -> dict[str, Any]:
    """Every figure, with the conditions; written to ``out`` as they come when given."""
    bulk, window, rates = (2000, 2.0, (100.0,)) if quick else (10_000, 5.0, (100.0, 1000.0))
    figures: dict[str, Any] = {}
    results = {
        "mode": "quick" if quick else "full",
        "machine": machine_info(),
        "conditions": {
            "bulk_rows": bulk, "window_s": window, "rates": rates, "writes_in_flight": IN_FLIGHT,
            "postgres": "the bench's own cluster, fsync=off (synchronous_commit on: WAL is sent once flushed)",
            "views": "item/{id} only (one recompute per write, one query each)",
        },
        "figures": figures,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch, own_cluster() as cluster:
        server = EmbeddedRedis(Path(scratch) / "redis", executable=redis_executable())
        with server:
            redis = Redis.from_url(server.url)
            try:
                figures.update(await throughput(cluster, redis, server.url, bulk))
                if out is not None:
                    write_results(out, results)
                for rate in rates:
                    for capture in ("pglog", "sqlalchemy"):
                        figures.update(
                            await latency(cluster, redis, server.url, capture=capture, rate=rate, window=window)
                        )
                        if out is not None:
                            write_results(out, results)  # what was measured so far survives a later failure
            finally:
                await redis.aclose()
    return results


async def run(config: Any) -> dict[str, Any]:
    """For ``tests/bench/run.py``: the quick or full figures (the cluster is the bench's own)."""
    try:
        results = await measure(config.quick)
    except NoServer as exc:
        return {"status": "skipped", "reason": str(exc), "figures": {}, "missing": {}}
    figures = results["figures"]
    missing = {name: "not measured" for name, value in figures.items() if value is None}
    return {"conditions": results["conditions"], "figures": figures, "missing": missing, "goals": []}


def write_results(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# pglog benchmark", "", f"Mode: {results['mode']}; conditions: {results['conditions']}", ""]
    lines += ["| figure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in results["figures"].items())]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python tests/bench/pglog.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "pglog")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.quick, args.out))["figures"], indent=2))
