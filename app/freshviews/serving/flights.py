"""Single flight: work shared per key, however many callers want it at once.

A caller asks for some keys. A key whose work is in flight is joined; the keys nobody is working on yet start
one flight each, and the flights one call starts share a single run of the work, as its own task (the reads
of a batch of keys are one Redis pipeline). The rules:

- A caller that is cancelled (its client left) only stops waiting: the work goes on for the others.
- A flight can be forgotten while in progress: later callers start their own, those already waiting still
  get its result. The process's memory forgets the read of a key when a newer version is announced, since
  that read may have reached Redis before the write.
- Every caller gets the work's result, its exception, or a cancellation when the work is cancelled (at
  shutdown, :meth:`Flights.aclose`): nobody waits forever.

Used for the reads of cached values from Redis (memory.py) and for refresh requests after a miss (refresh.py).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Generic, TypeVar

V = TypeVar("V")


class Flight(Generic[V]):
    """One key's share of some work in flight."""

    __slots__ = ("_result", "key")

    def __init__(self, key: str) -> None:
        self.key = key
        self._result: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        # Retrieved here for when every caller gave up: no "exception was never retrieved" at collection.
        self._result.add_done_callback(lambda result: result.cancelled() or result.exception())

    async def wait(self) -> V:
        """The work's result for this key (or its exception); cancelling the caller leaves the work alone."""
        return await asyncio.shield(self._result)


class Flights(Generic[V]):
    """The flights in progress, one per key; ``work(keys)`` returns one value per key, in order."""

    def __init__(self, work: Callable[[list[str]], Awaitable[Sequence[V]]], *, name: str) -> None:
        self._work = work
        self._name = name
        self._flights: dict[str, Flight[V]] = {}
        self._tasks: set[asyncio.Task[Sequence[V]]] = set()

    def __len__(self) -> int:
        """Keys in flight (forgotten flights no longer count)."""
        return len(self._flights)

    def __contains__(self, key: object) -> bool:
        return key in self._flights

    def start(self, keys: Iterable[str]) -> list[Flight[V]]:
        """The flight of each key: the one in progress, else a new one; the new ones run one work together."""
        keys = list(keys)
        new: dict[str, Flight[V]] = {}
        for key in keys:
            if key not in self._flights:
                self._flights[key] = new[key] = Flight(key)
        if new:
            started = list(new.values())
            task = asyncio.create_task(self._run(started), name=self._name)
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._landed, started))
        return [self._flights[key] for key in keys]

    async def get(self, keys: Iterable[str]) -> list[V]:
        """Start or join the flight of each key and wait for them all."""
        return [await flight.wait() for flight in self.start(keys)]

    def forget(self, key: str) -> None:
        """Later callers of ``key`` start their own flight; the one in progress still answers its callers."""
        self._flights.pop(key, None)

    def forget_all(self) -> None:
        self._flights.clear()

    async def aclose(self) -> None:
        """Cancel the work in flight; its callers see it cancelled."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, flights: list[Flight[V]]) -> Sequence[V]:
        values = await self._work([flight.key for flight in flights])
        if len(values) != len(flights):
            raise RuntimeError(f"{self._name}: {len(values)} values for {len(flights)} keys")
        return values

    def _landed(self, flights: list[Flight[V]], task: asyncio.Task[Sequence[V]]) -> None:
        # In a done callback rather than in _run: a task cancelled before it began never runs its body.
        self._tasks.discard(task)
        for flight in flights:
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]
        if task.cancelled():
            for flight in flights:
                flight._result.cancel()
            return
        error = task.exception()
        if error is not None:
            for flight in flights:
                flight._result.set_exception(error)
            return
        for flight, value in zip(flights, task.result(), strict=True):
            flight._result.set_result(value)
