"""The subscriber's PostgreSQL log source, from ``FRESHVIEWS_PGLOG_URL`` (see :mod:`freshviews.pglog`).

Built here, at the process's edge, from the one settings object, with the Redis client the subscriber already
has; the subscriber runs it as one of its supervised loops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from freshviews.core.clients import RedisClient
from freshviews.core.settings import ConfigError
from freshviews.core.views import Registry
from freshviews.worker.settings import SubscriberSettings

if TYPE_CHECKING:
    from freshviews.pglog.source import LogSource


def log_source(redis: RedisClient, settings: SubscriberSettings, registry: Registry[Any] | None) -> LogSource | None:
    """The log source ``settings`` configure (None without ``FRESHVIEWS_PGLOG_URL``).

    The watched tables are ``FRESHVIEWS_PGLOG_TABLES``, else every entity ``registry``'s views depend on; a
    change carries the columns those views need (every column without a registry).
    """
    if not settings.pglog_url:
        return None
    try:
        from freshviews.pglog.source import LogSource
    except ImportError as exc:
        raise ConfigError(
            f"FRESHVIEWS_PGLOG_URL needs psycopg2 ({exc.name} is missing): pip install 'freshviews[pglog]'"
        ) from None
    tables = settings.tables(registry.entities if registry is not None else frozenset())
    if not tables:
        raise ConfigError("FRESHVIEWS_PGLOG_TABLES: name the tables to watch (or pass --views)")
    return LogSource(
        url=settings.pglog_url,
        redis=redis,
        keys=settings.keys,
        slot=settings.pglog_slot,
        publication=settings.pglog_publication,
        tables=tables,
        columns=registry.columns if registry is not None else None,
        maxlen=settings.stream_maxlen,
        dead_letter_maxlen=settings.dead_letter_maxlen,
    )
