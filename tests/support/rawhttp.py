"""HTTP as raw bytes on a socket, for the tests of what a server does with slow, stalled and oversized requests."""

from __future__ import annotations

import asyncio
import contextlib


async def exchange(port: int, first: bytes, *, trickle: bytes = b"", every: float = 0.2) -> tuple[float, bytes]:
    """Open a connection, send ``first``, then ``trickle`` every ``every`` seconds (a slow client) until the server
    closes it; how long the connection lasted, and what the server sent."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = loop.time()

    async def send() -> None:
        writer.write(first)
        await writer.drain()
        while trickle:
            await asyncio.sleep(every)  # the slow client's pace
            writer.write(trickle)
            await writer.drain()

    sender = asyncio.create_task(send())
    received = b""
    try:
        async with asyncio.timeout(30):  # far past every deadline: a hang fails here
            with contextlib.suppress(ConnectionResetError):
                while chunk := await reader.read(65_536):
                    received += chunk
        return loop.time() - began, received
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
