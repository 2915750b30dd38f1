"""The log source on a real PostgreSQL (wal_level=logical): what it writes to the change log, for what writes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from freshviews.core.connections import create_redis
from freshviews.core.embedded import EmbeddedRedis
from freshviews.core.events import ALL_ROWS, Operation
from freshviews.core.keys import Keys
from freshviews.worker.check import check
from freshviews.worker.pglog import log_source
from freshviews.worker.settings import SubscriberSettings
from tests.pglog.conftest import RunSource, logged
from tests.pglog.views import SCHEMA, registry
from tests.support.helpers import wait_until
from tests.support.pgcluster import Database
from tests.support.proxy import FaultProxy

pytestmark = pytest.mark.postgres


async def test_each_write_becomes_the_change_the_capture_writes(
    db: Database, redis: Redis, keys: Keys, running_source: RunSource
) -> None:
    async with running_source() as source:
        await wait_until(lambda: source.transactions == 0 and source.tables == ("items",), 5)
        await _ready(db)
        db.psql("INSERT INTO items VALUES (1, 'red', 'one'), (2, 'blue', 'two');")
        db.psql("UPDATE items SET color = 'green' WHERE id = 1;")  # REPLICA IDENTITY DEFAULT: no old values
        db.psql("ALTER TABLE items REPLICA IDENTITY FULL; UPDATE items SET color = 'blue' WHERE id = 1;")
        db.psql("DELETE FROM items WHERE id = 2;")
        db.psql("TRUNCATE items;")
        await wait_until(lambda: source.changes >= 6, 5, message=lambda: f"{source.changes} changes")
    changes = await logged(redis, keys)
    assert [(c.entity, c.id, c.op, c.before, c.after) for c in changes] == [
        ("items", "1", Operation.CREATE, None, {"id": 1, "color": "red"}),
        ("items", "2", Operation.CREATE, None, {"id": 2, "color": "blue"}),
        # Without the old row only the key is known: a view mapping the colour must assume every colour.
        ("items", "1", Operation.UPDATE, {"id": 1}, {"id": 1, "color": "green"}),
        ("items", "1", Operation.UPDATE, {"id": 1, "color": "green"}, {"id": 1, "color": "blue"}),
        ("items", "2", Operation.DELETE, {"id": 2, "color": "blue"}, None),
        ("items", ALL_ROWS, Operation.DELETE, None, None),
    ]
    # The columns carried are the key and what the views map (not the name), as the capture records them.
    assert changes[2].values("color") is None
    assert changes[3].values("color") == ["green", "blue"]
    # The two inserts were one transaction: one commit position, in order; every change says when it committed.
    origins = [str(c.origin).rsplit(":", 1) for c in changes]
    assert origins[0][0] == origins[1][0] != origins[2][0]
    assert [o[1] for o in origins[:2]] == ["0", "1"]
    assert all(c.committed_ms > 0 for c in changes)
    affected = await registry.affected(None, [changes[2]])  # type: ignore[arg-type]
    assert affected.everything == {"color/{color}"}
    assert (await registry.affected(None, [changes[5]])).everything == {"item/{id}", "color/{color}"}  # type: ignore[arg-type]


async def _ready(db: Database) -> None:
    """Wait until the slot exists (the source created it): writes before it are not in its stream."""
    await wait_until(
        lambda: db.psql(f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{db.slot}'").strip() == "1", 10
    )


async def test_a_table_the_views_do_not_depend_on_produces_no_change(
    db: Database, redis: Redis, keys: Keys, running_source: RunSource
) -> None:
    async with running_source() as source:
        await _ready(db)
        db.psql("INSERT INTO audit VALUES (1, 'not watched');")
        db.psql("INSERT INTO items VALUES (7, 'red', 'seven');")
        await wait_until(lambda: source.changes >= 1, 5)
    assert [(c.entity, c.id) for c in await logged(redis, keys)] == [("items", "7")]
    publication = db.psql(f"SELECT tablename FROM pg_publication_tables WHERE pubname = '{db.slot}'")
    assert publication.split() == ["items"]


async def test_ddl_on_a_watched_table_is_reported_and_never_stops_the_source(
    db: Database, redis: Redis, keys: Keys, running_source: RunSource, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="freshviews.pglog")
    async with running_source() as source:
        await _ready(db)
        db.psql("INSERT INTO items VALUES (1, 'red', 'one');")
        db.psql("ALTER TABLE items ADD COLUMN extra integer; INSERT INTO items VALUES (2, 'blue', 'two', 5);")
        db.psql("ALTER TABLE items DROP COLUMN color; INSERT INTO items VALUES (3, 'three', 6);")
        db.psql("ALTER TABLE items ADD COLUMN color text; INSERT INTO items VALUES (4, 'four', 7, 'green');")
        await wait_until(lambda: source.changes >= 4, 5, message=lambda: f"{source.changes} changes")
    changes = await logged(redis, keys)
    assert [(c.id, c.after) for c in changes] == [
        ("1", {"id": 1, "color": "red"}),
        ("2", {"id": 2, "color": "blue"}),
        ("3", {"id": 3}),  # the colour is gone: the change says so by lacking it
        ("4", {"id": 4, "color": "green"}),
    ]
    assert changes[2].values("color") is None  # so every colour's key is recomputed, none left stale
    warnings = [r.getMessage() for r in caplog.records if "no column color" in r.getMessage()]
    assert warnings == [
        "table items has no column color that views need: its changes now affect every key of those views"
    ]


async def test_slot_lag_is_visible_in_check_while_the_source_is_down(
    db: Database, redis: Redis, settings: SubscriberSettings, running_source: RunSource
) -> None:
    async with running_source() as source:
        await _ready(db)
        await wait_until(lambda: redis.exists(settings.keys.pglog(db.slot)), 5)
        health = await check(redis, settings)
        assert not [p for p in health.problems if "slot" in p], health.problems
        assert health.details["pglog"]["active"] is True
        assert source.lag_seconds() == 0.0
    await redis.delete(settings.keys.pglog(db.slot))  # as if the source never came back: its status expired
    db.psql("INSERT INTO items SELECT g, 'red', repeat('x', 100) FROM generate_series(1, 2000) g;")
    health = await check(redis, settings.model_copy(update={"pglog_late_bytes": 10_000}))
    details = health.details["pglog"]
    assert details["active"] is False, details
    assert details["lag_bytes"] > 10_000, details
    assert any(f"no log source has reported on slot {db.slot!r}" in p for p in health.problems), health.problems
    assert any("holds" in p and "bytes of WAL" in p for p in health.problems), health.problems


async def test_redis_failing_under_the_source_loses_no_change(
    db: Database, redis: Redis, keys: Keys, settings: SubscriberSettings, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    failures_before = _redis_failures()
    proxy = FaultProxy(upstream_port=redis_server.port)
    client = create_redis(await proxy.start(), timeout=0.5)
    source = log_source(client, settings, registry)
    assert source is not None
    task = asyncio.create_task(source.run())
    writes = 1000
    script = tmp_path / "writes.sql"
    script.write_text("".join(f"INSERT INTO items VALUES ({i}, 'red', 'x');\n" for i in range(1, writes + 1)))
    try:
        await _ready(db)
        writer = await asyncio.create_subprocess_exec(
            "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script), db.url
        )
        await wait_until(lambda: source.changes >= 100, 20)
        proxy.reset_all()  # every connection reset mid-append
        await wait_until(lambda: source.changes >= 300, 20)
        # Then a Redis that stops answering, until the client's own retries give up and the source's take over.
        proxy.freeze()
        await wait_until(lambda: _redis_failures() > failures_before, 30)
        assert source.lag_seconds() > 0  # a transaction waits, unconfirmed, for the log
        proxy.thaw()
        assert await writer.wait() == 0
        expected = set(range(1, writes + 1))

        async def missing() -> set[int]:
            return expected - {int(c.id) for c in await logged(redis, keys)}

        await wait_until(lambda: _none(missing()), 30)
    finally:
        source.stop()
        await asyncio.wait_for(task, 10)
        await client.aclose()
        await proxy.close()


def _redis_failures() -> float:
    return REGISTRY.get_sample_value("freshviews_pglog_errors_total", {"kind": "redis"}) or 0.0


async def _none(found: Awaitable[set[int]]) -> bool:
    return not await found


async def test_the_replication_connection_killed_under_writes_loses_no_change(
    db: Database, redis: Redis, keys: Keys, running_source: RunSource, tmp_path: Path
) -> None:
    failures_before = REGISTRY.get_sample_value("freshviews_pglog_errors_total", {"kind": "database"}) or 0.0
    writes = 1000
    script = tmp_path / "writes.sql"
    script.write_text("".join(f"INSERT INTO items VALUES ({i}, 'red', 'x');\n" for i in range(1, writes + 1)))
    async with running_source() as source:
        await _ready(db)
        writer = await asyncio.create_subprocess_exec(
            "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script), db.url
        )
        await wait_until(lambda: source.changes >= 100, 20)
        # The database ends the source's session (as a restart or a failover would): it reconnects and resumes.
        db.psql(f"SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{db.slot}'")
        assert await writer.wait() == 0
        expected = set(range(1, writes + 1))

        async def missing() -> set[int]:
            return expected - {int(c.id) for c in await logged(redis, keys)}

        await wait_until(lambda: _none(missing()), 30)
    failures = REGISTRY.get_sample_value("freshviews_pglog_errors_total", {"kind": "database"}) or 0.0
    assert failures > failures_before


async def test_a_source_started_before_its_tables_waits_for_them(
    pg_database: Database, redis: Redis, keys: Keys, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = SubscriberSettings(
        redis_url=redis_url, pglog_url=pg_database.url, pglog_slot=pg_database.slot,
        pglog_publication=pg_database.slot, metrics_port=0,
    )  # fmt: skip
    source = log_source(redis, settings, registry)
    assert source is not None
    task = asyncio.create_task(source.run())
    try:
        await wait_until(lambda: "no table 'items' in the database (yet?)" in caplog.text, 10)
        assert not task.done()
        pg_database.psql(SCHEMA)  # the app starts and creates its tables
        await _ready(pg_database)
        pg_database.psql("INSERT INTO items VALUES (1, 'red', 'first')")
        await wait_until(lambda: source.changes == 1, 15)
    finally:
        source.stop()
        await asyncio.wait_for(task, 10)
    assert [c.id for c in await logged(redis, keys)] == ["1"]
