"""The subscriber's one settings object: its own (``SUBSCRIBER_*``) and the ones every process shares."""

from __future__ import annotations

import os
import socket
from typing import Annotated

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from freshviews.core.settings import RedisSettings
from freshviews.pglog.settings import PglogSettings


def _default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class SubscriberSettings(RedisSettings, PglogSettings):
    """The subscriber's settings; with ``FRESHVIEWS_PGLOG_URL`` (:class:`PglogSettings`) it also runs the
    PostgreSQL log source."""

    model_config = SettingsConfigDict(env_prefix="SUBSCRIBER_", extra="ignore", populate_by_name=True)

    #: ``module:attribute`` of the :class:`~freshviews.core.views.Registry` to serve (required: ``--views``).
    views: str | None = None
    group: str = Field(default="subscribers", min_length=1, max_length=64)
    consumer: str = Field(default_factory=_default_consumer, min_length=1, max_length=128)
    #: Changes read per XREADGROUP; all changes in one batch that touch a key cost one recompute.
    batch_size: int = Field(default=500, ge=1, le=10_000)
    block_ms: int = Field(default=1000, ge=1)
    #: Recomputes running at once (protects a small backend from bursts).
    concurrency: int = Field(default=4, ge=1, le=256)
    #: Seconds between sweeps; 0 disables the timer (``sweep --once`` still works). This bounds how long a
    #: change that never reached the log (Redis down at commit) stays visible. A sweep recomputes every key,
    #: so a short interval costs what polling would: 5 minutes keeps it a few percent of a 10 s warmer.
    sweep_interval: float = Field(default=300.0, ge=0)
    #: Recomputes running at once during a sweep, and the most keys it recomputes per second.
    sweep_concurrency: int = Field(default=2, ge=1, le=64)
    sweep_rate: float = Field(default=1000.0, gt=0)
    #: Seconds the sweep lock lasts unless renewed (every third of it while a sweep runs): how long a lock can
    #: outlive a sweep that died, e.g. with Redis restarted from its append-only file.
    sweep_lock_ttl: float = Field(default=5.0, ge=0.1, le=300)
    #: Keys per second the consistency sampler recomputes and compares with the cache (0 turns it off). Each
    #: sample costs one compute; 10/s is a few statements per second on the scoreboard (tests/bench/sampler.py).
    sample_rate: float = Field(default=10.0, ge=0, le=10_000)
    #: Per view (by name), the shortest time between two change-driven recomputes of one of its keys in this
    #: process, seconds: under sustained writes a heavy view (``{"stats": 1}``) is recomputed at most once per
    #: interval, and a change to it waits at most that long plus one compute; views not named are recomputed at
    #: once. JSON in the environment: ``SUBSCRIBER_MIN_INTERVALS='{"stats": 1}'``.
    min_intervals: dict[str, Annotated[float, Field(ge=0, le=3600)]] = Field(default_factory=dict)
    #: A change pending this long on a consumer is presumed abandoned and reclaimed.
    reclaim_idle_ms: int = Field(default=30_000, ge=100)
    reclaim_interval: float = Field(default=5.0, gt=0)
    #: Attempts at a failing recompute before its changes go to the dead-letter stream.
    max_attempts: int = Field(default=3, ge=1, le=100)
    retry_backoff: float = Field(default=0.1, ge=0)
    #: A key whose recompute for readers fails is not tried again for this long, doubled on each failure in a
    #: row up to ``refresh_backoff_max`` seconds; readers meanwhile get 503 with the remaining time as Retry-After.
    refresh_backoff: float = Field(default=1.0, gt=0, le=3600)
    refresh_backoff_max: float = Field(default=60.0, gt=0, le=86_400)
    #: A change delivered this many times without being acknowledged is dead-lettered (a crash loop guard).
    max_deliveries: int = Field(default=5, ge=1)
    dead_letter_maxlen: int = Field(default=10_000, ge=1)
    #: How long a deleted view's tombstone (and its version fence) is kept, seconds.
    tombstone_ttl: int = Field(default=86_400, ge=1)
    #: How long a "not found" for a key that never held a value is kept, seconds: a never-existing key readers
    #: ask for costs at most one recompute per key per this long.
    negative_ttl: int = Field(default=60, ge=1)
    #: Most such negative entries kept at once (the oldest are evicted first): bounds their Redis memory.
    negative_max: int = Field(default=10_000, ge=1)
    heartbeat_ttl: int = Field(default=15, ge=2)
    #: Port of the Prometheus /metrics endpoint; 0 disables it.
    metrics_port: int = Field(default=9101, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    #: The database whose outbox this subscriber relays (``postgresql://`` or ``sqlite:///``; unset: none). The
    #: writers relay their own changes after each commit; this relay picks up what one that died left behind.
    outbox_url: str | None = Field(default=None, validation_alias=AliasChoices("outbox_url", "FRESHVIEWS_OUTBOX_URL"))
    #: How often the relay looks at the outbox when nothing woke it, seconds.
    relay_interval: float = Field(default=1.0, gt=0)
    #: Seconds a shutdown waits for the batch in flight before handing it back.
    shutdown_timeout: float = Field(default=10.0, gt=0)
