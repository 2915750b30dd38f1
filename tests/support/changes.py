"""Reading the changes writes left: once the app's relay has moved them out of the outbox, the change log from
where it was left."""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from freshviews.core import Change, Keys
from freshviews.core.events import decode
from freshviews.outbox.relay import DELETE_DELAY
from freshviews.outbox.table import outbox_status
from freshviews.scoreboard.models import OUTBOX
from tests.support.helpers import BUSY_MARGIN, wait_until


class Log:
    """The changes writes left, in order, as the subscriber will read them. The app's relay sends each commit's
    rows from memory and deletes them within ``DELETE_DELAY``: an empty outbox means they are all in the log.
    (Draining the outbox from here instead would send rows the app's relay has already sent again.)"""

    def __init__(self, engine: AsyncEngine, redis: Redis) -> None:
        self.engine = engine
        self.redis = redis
        self.last = "0-0"

    async def new(self) -> list[Change]:
        async def relayed() -> bool:
            return (await outbox_status(self.engine, OUTBOX)).rows == 0

        await wait_until(relayed, timeout=DELETE_DELAY + BUSY_MARGIN, message="the app's relay left rows behind")
        entries = await self.redis.xrange(Keys().changes, min=f"({self.last}")
        if entries:
            self.last = entries[-1][0].decode()
        return [decode(cast("dict[bytes, bytes]", fields)) for _, fields in entries]
