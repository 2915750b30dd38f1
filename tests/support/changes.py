"""Reading the changes writes left: the outbox relayed, then the change log from where it was left."""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from freshviews.core import Change, Keys, RedisSettings
from freshviews.core.events import decode
from freshviews.outbox import Relay
from freshviews.scoreboard.models import OUTBOX


class Log:
    """The changes writes left, in order, as the subscriber will read them: every outbox row is relayed first (this
    relay and the app's take turns on the SQLite file), then the change log is read from where it was left."""

    def __init__(self, engine: AsyncEngine, redis: Redis, redis_url: str) -> None:
        self.relay = Relay(engine, redis, RedisSettings(redis_url=redis_url), table=OUTBOX)
        self.redis = redis
        self.last = "0-0"

    async def new(self) -> list[Change]:
        await self.relay.drain()
        entries = await self.redis.xrange(Keys().changes, min=f"({self.last}")
        if entries:
            self.last = entries[-1][0].decode()
        return [decode(cast("dict[bytes, bytes]", fields)) for _, fields in entries]
