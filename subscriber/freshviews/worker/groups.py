"""Consumer-group plumbing shared by the change log and the refresh requests: create a group, read a batch."""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

logger = logging.getLogger(__name__)

#: One stream entry as redis-py returns it: (id, fields).
Entry = tuple[bytes, dict[bytes, bytes]]


async def ensure_group(redis: Redis, stream: str, group: str) -> bool:
    """Create ``group`` on ``stream`` (and the stream) if missing; True when it had to be created.

    A new group starts at the beginning of what the stream retains: replaying is safe (recomputes are
    idempotent and coalesced), skipping is not.
    """
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise
    logger.info("created consumer group %r on %s", group, stream)
    return True


async def read_group(
    redis: Redis, stream: str, group: str, consumer: str, *, count: int, block_ms: int | None, pending: bool
) -> list[Entry]:
    """The next batch for ``consumer``: new entries (waiting up to ``block_ms``; None: no wait), or with
    ``pending`` its own delivered but unacknowledged ones."""
    reply: Any = await redis.xreadgroup(
        group, consumer, {stream: "0" if pending else ">"}, count=count, block=None if pending else block_ms
    )
    if not reply:
        return []
    entries: list[Entry] = reply[0][1]
    return entries
