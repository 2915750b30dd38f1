"""A TCP proxy in front of a Redis for fault tests: forwards 127.0.0.1:<port> to an upstream port, counts the
chunks clients send (one per round trip), and can add latency, stop answering (a half-open link: connections
stay up, nothing moves) or reset every connection."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class FaultProxy:
    upstream_port: int
    #: Seconds added before each chunk is forwarded, both ways.
    latency: float = 0.0
    port: int = 0
    #: Chunks clients sent towards the upstream: one per round trip of a client that waits for its replies.
    client_writes: int = 0
    _server: asyncio.Server | None = None
    _links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = field(default_factory=set)
    _pumps: set[asyncio.Task[None]] = field(default_factory=set)
    _thawed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> str:
        """Listen on a free port; the ``redis://`` URL that goes through the proxy."""
        self._thawed.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.url

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def frozen(self) -> bool:
        """While frozen, nothing is forwarded (data waits); connections stay open."""
        return not self._thawed.is_set()

    def freeze(self) -> None:
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    def reset_all(self) -> None:
        """RST every open connection (new ones are accepted again at once)."""
        for client, upstream in list(self._links):
            client.transport.abort()
            upstream.transport.abort()
        self._links.clear()

    @property
    def connections(self) -> int:
        return len(self._links)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset_all()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self._server is not None:
            # Bounded: a client reconnecting while we close can keep wait_closed() waiting on its transport.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        link = (writer, up_writer)
        self._links.add(link)
        for source, sink, counted in ((reader, up_writer, True), (up_reader, writer, False)):
            pump = asyncio.create_task(self._pump(source, sink, link, counted))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        counted: bool,
    ) -> None:
        try:
            while chunk := await source.read(65536):
                await self._thawed.wait()
                if self.latency:
                    await asyncio.sleep(self.latency)  # the fault itself: a slow link
                if counted:
                    self.client_writes += 1
                sink.write(chunk)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._links.discard(link)
            for end in link:
                with contextlib.suppress(Exception):
                    end.transport.abort()
