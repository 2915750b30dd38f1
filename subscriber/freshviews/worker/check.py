"""``freshviews check``: is a subscriber alive, and has the sweep run as often as it should?

Every subscriber refreshes a heartbeat key with a TTL (``<p>:hb:<consumer>``, written by the heartbeat loop of
:mod:`freshviews.worker.service`) and every sweep records its outcome (``<p>:sweep``). This reads both, the way
arq's ``--check`` reads its health key, so a container or a supervisor can probe liveness without a port. A
subscriber is alive while its heartbeat is younger than ``heartbeat_ttl``; the cache is "warm" once a subscriber
filled it (``<p>:warm``), "warming" before (a detail, not a failure: readers are served by the miss path); the
sweep is late once more than twice its interval (plus the time one sweep may take) passed since the last one
finished, or since the oldest live subscriber started when none finished yet. A subscriber that relays an outbox
also reports its depth and the age of its oldest change: one waiting longer than ``OUTBOX_LATE`` means changes are
not reaching the log. The consistency sampler's summary (``<p>:sampler``: per view, samples, results and nines)
is shown as it is: an unexplained mismatch was repaired when it was found, so it names a view whose dependencies
to fix rather than a subscriber that is down. With
``FRESHVIEWS_PGLOG_URL`` it reports the replication slot's lag: the bytes of WAL it holds, from the database
itself (so a log source that is down is visible), and the seconds its oldest unappended transaction has waited,
from the source's status; it fails past ``FRESHVIEWS_PGLOG_LATE_BYTES`` / ``_LATE_SECONDS``, when the slot is
missing, or when no source has reported for a while.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from freshviews.core.clients import RedisClient, is_cluster, ping_every_primary, primaries
from freshviews.core.connections import describe
from freshviews.worker.settings import SubscriberSettings

#: Beyond twice the interval, the time a sweep may itself take before it counts as late, seconds.
SWEEP_GRACE = 60.0
#: A change waiting in the outbox longer than this means no relay is moving it, seconds.
OUTBOX_LATE = 30.0
#: How often a log source reports its status (``freshviews.pglog.source.STATUS_INTERVAL``), seconds.
STATUS_EVERY = 2.0


@dataclass
class Health:
    details: dict[str, Any] = field(default_factory=dict)
    #: Why the check fails, one line each; empty when healthy.
    problems: list[str] = field(default_factory=list)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def heartbeats(redis: RedisClient, settings: SubscriberSettings) -> list[dict[str, Any]]:
    """Every heartbeat of ``settings.group`` still in Redis (each ``{"consumer", "group", "at", "started"}``)."""
    keys = settings.keys
    names = [name async for name in redis.scan_iter(match=keys.heartbeat_pattern, count=1000)]
    beats: list[dict[str, Any]] = []
    # Heartbeats lie in any slot of a cluster: MGET there is one per slot (no atomicity is needed).
    found = (await redis.mget_nonatomic(names) if is_cluster(redis) else await redis.mget(names)) if names else []
    for raw in found:
        if raw is None:
            continue  # expired between SCAN and MGET
        try:
            beat = json.loads(raw)
        except ValueError:
            continue
        if isinstance(beat, dict) and beat.get("group") == settings.group:
            beats.append(beat)
    return sorted(beats, key=lambda beat: str(beat.get("consumer")))


async def sampler_summary(redis: RedisClient, settings: SubscriberSettings) -> dict[str, Any] | None:
    """The consistency sampler's last summary (see :mod:`freshviews.worker.sampler`), None if it never ran."""
    raw = await redis.get(settings.keys.sampler)
    try:
        summary = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return summary if isinstance(summary, dict) else None


async def check(redis: RedisClient, settings: SubscriberSettings, *, consumer: str | None = None) -> Health:
    """The subscribers' health as ``freshviews check`` reports it."""
    now = time.time()
    health = Health()
    health.details["redis_primaries"] = primaries(redis)
    if is_cluster(redis):
        # One master down is a slot range without a master: every change and view there waits for a failover.
        try:
            await ping_every_primary(redis)
        except (RedisError, RedisClusterException, OSError) as exc:
            health.problems.append(f"a Redis Cluster master does not answer: {describe(exc)}")
    beats = [b for b in await heartbeats(redis, settings) if consumer is None or b.get("consumer") == consumer]
    alive = [b for b in beats if now - float(b.get("at", 0)) <= settings.heartbeat_ttl]
    health.details["subscribers"] = [
        {"consumer": b.get("consumer"), "heartbeat_age_s": round(now - float(b.get("at", 0)), 1)} for b in beats
    ]
    if not alive:
        who = f"subscriber {consumer!r}" if consumer else f"subscriber of group {settings.group!r}"
        health.problems.append(f"no {who} has a heartbeat younger than {settings.heartbeat_ttl}s")
    health.details["cache"] = "warm" if await redis.exists(settings.keys.warm) else "warming"
    record = await redis.hgetall(settings.keys.sweep)
    sweep = {_text(k): _text(v) for k, v in record.items()}
    health.details["last_sweep"] = sweep or None
    if settings.sweep_interval > 0 and alive:
        late_after = 2 * settings.sweep_interval + SWEEP_GRACE
        if sweep:
            since = now - float(sweep.get("at", 0))
            if since > late_after:
                health.problems.append(
                    f"the last sweep finished {since:.0f}s ago (expected every {settings.sweep_interval:g}s)"
                )
        else:
            running = now - min(float(b.get("started", now)) for b in alive)
            if running > late_after:
                health.problems.append(f"no sweep has finished in the {running:.0f}s the subscribers have run")
    outboxes = [b["outbox"] for b in alive if isinstance(b.get("outbox"), dict)]
    if outboxes:
        health.details["outbox"] = outboxes[0]
        oldest = max(float(o.get("oldest_seconds", 0)) for o in outboxes)
        if oldest > OUTBOX_LATE:
            health.problems.append(f"the oldest change in the outbox has waited {oldest:.0f}s: is Redis reachable?")
        errors = [str(o["error"]) for o in outboxes if "error" in o]
        if errors and len(errors) == len(outboxes):
            health.problems.append(f"the outbox cannot be read: {errors[0]}")
    health.details["sampler"] = await sampler_summary(redis, settings)
    if settings.pglog_url:
        await _pglog(redis, settings, health, now)
    health.details["status"] = "ok" if not health.problems else "failing"
    return health


async def _pglog(redis: RedisClient, settings: SubscriberSettings, health: Health, now: float) -> None:
    assert settings.pglog_url is not None
    slot = settings.pglog_slot
    raw = await redis.get(settings.keys.pglog(slot))
    try:
        status = json.loads(raw) if raw else None
    except ValueError:
        status = None
    details: dict[str, Any] = {"slot": slot, "source": status}
    health.details["pglog"] = details
    try:
        from freshviews.pglog import database

        lag = await asyncio.to_thread(database.slot_lag, settings.pglog_url, slot)
    except Exception as exc:  # the probe reports any failure to read the slot as one line, never a traceback
        health.problems.append(f"the replication slot {slot!r} cannot be read: {str(exc).strip().splitlines()[0]}")
        return
    if lag is None:
        health.problems.append(f"there is no replication slot {slot!r}: is the log source configured?")
        return
    details.update(lag_bytes=lag.lag_bytes, active=lag.active)
    if lag.lag_bytes > settings.pglog_late_bytes:
        health.problems.append(
            f"the replication slot {slot!r} holds {lag.lag_bytes} bytes of WAL (over {settings.pglog_late_bytes}): "
            "is the log source running? (a slot nobody reads fills the database's disk)"
        )
    if not isinstance(status, dict) or now - float(status.get("at", 0)) > 5 * STATUS_EVERY:
        health.problems.append(f"no log source has reported on slot {slot!r} in the last {5 * STATUS_EVERY:g}s")
    elif float(status.get("lag_seconds", 0)) > settings.pglog_late_seconds:
        health.problems.append(
            f"the log source's oldest transaction not yet in the change log has waited {status['lag_seconds']}s"
        )
