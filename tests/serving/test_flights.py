"""The single-flight primitive under the shared Redis reads and the refresh requests: work shared per key, one
run for the keys a call starts, callers that give up leave it alone, and a forgotten flight is not joined."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from freshviews.serving.flights import Flights
from tests.support.helpers import wait_until


class Work:
    """Work that records each run's keys and ends when the test says, with a value per key (or an error)."""

    def __init__(self) -> None:
        self.runs: list[list[str]] = []
        self.go = asyncio.Event()
        self.error: Exception | None = None

    async def __call__(self, keys: list[str]) -> Sequence[str]:
        self.runs.append(keys)
        run = len(self.runs)
        await self.go.wait()
        if self.error is not None:
            raise self.error
        return [f"{key}@{run}" for key in keys]

    async def started(self, count: int) -> None:
        await wait_until(lambda: len(self.runs) >= count, 2, message=f"{count} runs did not start")


async def test_callers_of_a_key_share_one_run_and_the_keys_one_call_starts_share_it_too() -> None:
    work = Work()
    flights = Flights(work, name="test")
    first = asyncio.create_task(flights.get(["a", "b", "a"]))
    await work.started(1)
    second = asyncio.create_task(flights.get(["b", "c"]))  # joins b, starts c
    await work.started(2)
    assert len(flights) == 3
    assert "a" in flights
    work.go.set()
    assert await first == ["a@1", "b@1", "a@1"]
    assert await second == ["b@1", "c@2"]
    assert work.runs == [["a", "b"], ["c"]]
    assert len(flights) == 0  # landed flights are gone: the next caller starts anew
    assert await flights.get(["a"]) == ["a@3"]


async def test_a_caller_that_is_cancelled_leaves_the_work_to_the_others() -> None:
    work = Work()
    flights = Flights(work, name="test")
    leaving = asyncio.create_task(flights.get(["a"]))
    staying = asyncio.create_task(flights.get(["a"]))
    await work.started(1)
    leaving.cancel()
    await asyncio.wait({leaving})
    work.go.set()
    assert await staying == ["a@1"]
    assert leaving.cancelled()
    assert len(work.runs) == 1


async def test_a_forgotten_flight_answers_its_callers_but_later_ones_start_their_own() -> None:
    work = Work()
    flights = Flights(work, name="test")
    early = asyncio.create_task(flights.get(["a"]))
    await work.started(1)
    flights.forget("a")
    assert "a" not in flights
    late = asyncio.create_task(flights.get(["a"]))
    await work.started(2)
    flights.forget("nothing in flight")  # harmless
    work.go.set()
    assert (await early, await late) == (["a@1"], ["a@2"])
    assert work.runs == [["a"], ["a"]]
    held = Work()
    flights = Flights(held, name="test")
    early = asyncio.create_task(flights.get(["a", "b"]))
    await held.started(1)
    flights.forget_all()
    late = asyncio.create_task(flights.get(["b"]))
    await held.started(2)
    held.go.set()
    assert (await early, await late) == (["a@1", "b@1"], ["b@2"])


async def test_every_caller_gets_the_works_error_and_no_one_waits_after_aclose() -> None:
    work = Work()
    work.error = ConnectionError("redis went away")
    flights = Flights(work, name="test")
    callers = [asyncio.create_task(flights.get(["a", "b"])) for _ in range(3)]
    await work.started(1)
    work.go.set()
    for caller in callers:
        with pytest.raises(ConnectionError, match="went away"):
            await caller
    blocked = Work()
    flights = Flights(blocked, name="test")
    waiting = asyncio.create_task(flights.get(["a"]))
    await blocked.started(1)
    never_ran = flights.start(["b"])  # its task has not had a first step yet
    await flights.aclose()
    done, _ = await asyncio.wait({waiting}, timeout=2)
    assert done, "a caller still waits on work that was cancelled"
    assert waiting.cancelled()
    with pytest.raises(asyncio.CancelledError):
        await never_ran[0].wait()
    assert blocked.runs == [["a"]]
    assert len(flights) == 0


async def test_work_returning_the_wrong_number_of_values_fails_its_callers() -> None:
    async def short(keys: list[str]) -> Sequence[str]:
        return []

    with pytest.raises(RuntimeError, match="0 values for 1 keys"):
        await Flights(short, name="short").get(["a"])
