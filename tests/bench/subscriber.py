"""Benchmark 5: changes the subscriber consumes per second, with cheap views, and its Redis traffic per batch.

A backlog of changes to ``sub_keys`` keys (``tests.support.world.counter_registry``) is put in the change log, then one
subscriber drains it (``Subscriber.drain``, the code path of ``python -m subscriber run --burst``), in this
process so that its Redis round trips can be counted on the client side. Commands per batch come from
Redis's ``INFO commandstats`` deltas. Each repeat starts from a fresh change log.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from typing import Any

from redis.asyncio.connection import AbstractConnection

from freshviews.core.connections import create_redis
from freshviews.core.embedded import EmbeddedRedis
from freshviews.core.events import FIELD, Change, Operation
from freshviews.core.keys import Keys
from freshviews.worker.service import MAX_COALESCE, Subscriber
from freshviews.worker.settings import SubscriberSettings
from tests.bench.common import Config, Figures, rounded
from tests.support import world
from tests.support.helpers import redis_executable

FILL_CHUNK = 5000


class RoundTrips:
    """Counts packed sends (one per command, one per pipeline) of every redis-py asyncio connection."""

    def __init__(self) -> None:
        self.count = 0
        self._original = AbstractConnection.send_packed_command

    def __enter__(self) -> RoundTrips:
        original = self._original
        counter = self

        async def counted(conn: AbstractConnection, command: Any, check_health: bool = True) -> None:
            counter.count += 1
            await original(conn, command, check_health)

        AbstractConnection.send_packed_command = counted  # type: ignore[method-assign, assignment]
        return self

    def __exit__(self, *_exc: object) -> None:
        AbstractConnection.send_packed_command = self._original  # type: ignore[method-assign]


def _commandstats(info: dict[str, Any]) -> Counter[str]:
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items() if isinstance(v, dict)})


async def run(config: Config) -> dict[str, Any]:
    keys = Keys()
    world.COUNTER.count = config.sub_keys
    server = EmbeddedRedis(config.workdir("subscriber") / "redis", executable=redis_executable())
    server.start()
    redis = create_redis(server.url, timeout=30)
    runs: list[dict[str, Any]] = []
    try:
        rng = random.Random(11)
        for repeat in range(config.sub_repeats):
            await redis.delete(keys.changes)
            for start in range(0, config.sub_changes, FILL_CHUNK):
                async with redis.pipeline(transaction=False) as pipe:
                    for _ in range(min(FILL_CHUNK, config.sub_changes - start)):
                        change = Change(entity="item", id=str(rng.randint(1, config.sub_keys)), op=Operation.UPDATE)
                        pipe.xadd(keys.changes, {FIELD: change.encode()})
                    await pipe.execute()
            settings = SubscriberSettings(
                redis_url=server.url, metrics_port=0, consumer=f"bench-{repeat}", group=f"bench-{repeat}"
            )
            subscriber = Subscriber(redis=redis, registry=world.counter_registry, ctx=world.COUNTER, settings=settings)
            await subscriber.start(warm=False)
            computes_before = world.COUNTER.computes
            await redis.config_resetstat()
            with RoundTrips() as trips:
                started = time.perf_counter()
                handled = await subscriber.drain()
                elapsed = time.perf_counter() - started
            commands = _commandstats(await redis.info("commandstats"))
            commands.pop("info", None)
            commands.pop("config|resetstat", None)
            batches = max(subscriber.batches, 1)
            run = {
                "changes": handled,
                "seconds": round(elapsed, 3),
                "changes_per_s": round(handled / elapsed, 1),
                "batches": subscriber.batches,
                "changes_per_batch": round(handled / batches, 1),
                "recomputes": world.COUNTER.computes - computes_before,
                "round_trips": trips.count,
                "round_trips_per_batch": round(trips.count / batches, 2),
                "commands_per_batch": {k: round(v / batches, 2) for k, v in sorted(commands.items())},
            }
            runs.append(run)
            print(
                f"  subscriber: {handled} changes in {elapsed:.2f}s = {run['changes_per_s']:.0f}/s, "
                f"{subscriber.batches} batches, {run['recomputes']} recomputes, "
                f"{run['round_trips_per_batch']} round trips/batch",
                flush=True,
            )
    finally:
        await redis.aclose()
        server.stop()
    figures = Figures()
    rates = [r["changes_per_s"] for r in runs]
    median = statistics.median(rates) if rates else None
    figures.put("changes_per_s", rounded(median, 1))
    figures.put("round_trips_per_batch", runs[0]["round_trips_per_batch"] if runs else None)
    figures.put("changes_per_batch", runs[0]["changes_per_batch"] if runs else None)
    figures.put(
        "recomputes_per_batch", rounded(runs[0]["recomputes"] / max(runs[0]["batches"], 1), 1) if runs else None
    )
    return {
        "conditions": {
            "changes": config.sub_changes,
            "keys": config.sub_keys,
            "views": "tests.support.world:counter_registry: item/{id}, compute = a counter",
            "mode": "backlog drained by Subscriber.drain() in the bench process (the --burst code path)",
            "batch_size": SubscriberSettings().batch_size,
            "max_coalesce": MAX_COALESCE,
            "concurrency": SubscriberSettings().concurrency,
            "repeats": config.sub_repeats,
        },
        "runs": runs,
        "figures": figures.values,
        "missing": figures.missing,
        "goals": [
            {
                "goal": "changes consumed per second",
                "target": ">= 20000",
                "measured": rounded(median, 1),
                "met": None if median is None else median >= 20_000,
                "note": "",
            }
        ],
    }
