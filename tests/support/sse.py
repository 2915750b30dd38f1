"""Reading a text/event-stream response as the EventSource rules do: events, and comments (heartbeats) apart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    event: str
    id: str | None
    data: str
    raw: str

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SSEReader:
    """Parses a text/event-stream response into events; comment lines (heartbeats) are kept apart."""

    response: httpx.Response
    comments: list[str] = field(default_factory=list)
    _lines: AsyncIterator[str] | None = None

    async def next(self, timeout: float = 5.0) -> Event:  # noqa: ASYNC109 (a deadline for a test read)
        if self._lines is None:
            self._lines = self.response.aiter_lines()
        fields: dict[str, list[str]] = {}
        raw: list[str] = []
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if line == "":
                    if fields:
                        return Event(
                            event=fields.get("event", ["message"])[-1],
                            id=fields.get("id", [None])[-1],
                            data="\n".join(fields.get("data", [])),
                            raw="\n".join(raw),
                        )
                    continue
                if line.startswith(":"):
                    self.comments.append(line)
                    continue
                raw.append(line)
                name, _, value = line.partition(":")
                fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
        raise EOFError("the stream ended")
