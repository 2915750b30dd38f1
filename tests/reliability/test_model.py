"""A Hypothesis state machine over the subscriber: any interleaving of writes, lost and duplicated changes,
crashes, restarts and sweeps keeps every key's version monotonic (V) and ends converged.

Rules: write (published), write whose change is lost, re-deliver an old change (reordering and duplicates),
apply (drain the log), crash mid-batch (read a batch, never acknowledge it) and restart under the same or a
new consumer name, sweep, read. After every step: no stored version went down. After quiescence (apply,
then sweep): every key equals its recompute from the world, and deleted items are tombstones.

CI runs a bounded number of examples (FRESHVIEWS_MODEL_EXAMPLES changes it); ``-m chaos`` runs 2000.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from redis.asyncio import Redis

from freshviews.core.events import Change, Operation
from freshviews.core.keys import DATA, DIGEST, TOMBSTONE, VERSION, Keys
from freshviews.publish.publisher import Publisher
from freshviews.worker.recompute import serialize
from freshviews.worker.service import Subscriber
from freshviews.worker.settings import SubscriberSettings
from tests.support.world import COLORS, World, registry, seeded_world

T = TypeVar("T")

EXAMPLES = int(os.environ.get("FRESHVIEWS_MODEL_EXAMPLES", "25"))
ITEM_IDS = st.integers(min_value=1, max_value=6)


class CacheModel(RuleBasedStateMachine):
    redis_url = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = Redis.from_url(self.redis_url)
        self.keys = Keys()
        self.world: World = seeded_world(4)
        self.publisher = Publisher(self.redis, self.keys, timeout=5.0)
        self.published: list[Change] = []
        self.highest: dict[str, int] = {}
        self.generation = 0
        self.run(self.redis.flushall())
        self.subscriber = self._subscriber()
        self.run(self.subscriber.start())

    def run(self, step: Awaitable[T]) -> T:
        return self.loop.run_until_complete(step)

    def _subscriber(self, *, same_name: bool = True) -> Subscriber[World]:
        if not same_name:
            self.generation += 1
        settings = SubscriberSettings(
            redis_url=self.redis_url,
            consumer=f"model-{self.generation}",
            sweep_interval=0,
            metrics_port=0,
            reclaim_idle_ms=100,
            retry_backoff=0,
            batch_size=3,  # small batches: crashes land mid-burst
        )
        return Subscriber(redis=self.redis, registry=registry, ctx=self.world, settings=settings)

    def _mutate(self, item_id: int, color: str | None, name: str) -> Change:
        old = self.world.items.get(item_id)
        before = {"color": old["color"]} if old else None
        if color is None:
            self.world.items.pop(item_id, None)
            return Change(entity="item", id=str(item_id), op=Operation.DELETE, before=before)
        self.world.items[item_id] = {"id": item_id, "name": name, "color": color}
        op = Operation.UPDATE if old else Operation.CREATE
        return Change(entity="item", id=str(item_id), op=op, before=before, after={"color": color})

    @rule(item_id=ITEM_IDS, color=st.sampled_from([*COLORS, None]), name=st.text(max_size=5))
    def write(self, item_id: int, color: str | None, name: str) -> None:
        change = self._mutate(item_id, color, name)
        self.run(self.publisher.publish(change))
        self.published.append(change)

    @rule(item_id=ITEM_IDS, color=st.sampled_from([*COLORS, None]), name=st.text(max_size=5))
    def write_lost(self, item_id: int, color: str | None, name: str) -> None:
        """The commit happened; its change never reached the log (only the sweep can repair it)."""
        self._mutate(item_id, color, name)

    @precondition(lambda self: bool(self.published))
    @rule(data=st.data())
    def redeliver_old(self, data: st.DataObject) -> None:
        """An old change again, after newer ones: reordering and duplicates."""
        self.run(self.publisher.publish(data.draw(st.sampled_from(self.published))))

    @rule()
    def apply(self) -> None:
        self.run(self.subscriber.drain())

    @rule(same_name=st.booleans())
    def crash_mid_batch_and_restart(self, same_name: bool) -> None:
        # The batch is read (pending on this consumer) and never acknowledged: a kill -9 before the ack.
        self.run(self.subscriber.consumer.read(block=False))
        self.subscriber = self._subscriber(same_name=same_name)
        self.run(self.subscriber.start())
        if not same_name:
            # Another consumer takes the dead one's changes once they are idle for reclaim_idle_ms.
            self.run(asyncio.sleep(0.11))
            reclaimed = self.run(self.subscriber.consumer.reclaim())
            if reclaimed:
                self.run(self.subscriber.process(reclaimed))

    @rule()
    def sweep(self) -> None:
        self.run(self.subscriber.sweep("model", lock=False))

    @invariant()
    def versions_never_go_down(self) -> None:
        for key in self.world.view_keys() | set(self.highest):
            raw = self.run(self.redis.hget(self.keys.value(key), VERSION))
            if raw is None:
                continue
            version = int(raw)
            assert version >= self.highest.get(key, 0), f"{key}: version went down"
            self.highest[key] = version

    def teardown(self) -> None:
        try:
            self.run(self.subscriber.drain())
            self.run(self.subscriber.sweep("final", lock=False))
            self._assert_converged()
        finally:
            self.run(self.redis.aclose())
            self.loop.close()

    def _assert_converged(self) -> None:
        keys = {f"item/{i}" for i in range(1, 7)} | {f"color/{c}" for c in COLORS}
        for key in sorted(keys):
            parsed = registry.parse(key)
            expected = serialize(self.run(parsed.view.compute(self.world, **parsed.params)))
            stored = self.run(self.redis.hmget(self.keys.value(key), [DATA, DIGEST]))
            if expected is None:
                assert stored[0] is None, f"{key} should be gone"
                # A key that never existed has nothing stored; one that was deleted keeps a tombstone.
                assert stored[1] in (None, TOMBSTONE), f"{key}: {stored}"
            else:
                assert stored[0] == expected, f"{key}: {stored[0]!r} != {expected!r}"


# About 0.4 s per example here: the long run needs far more than the suite's default timeout.
@pytest.mark.parametrize(
    "examples", [EXAMPLES, pytest.param(2000, marks=[pytest.mark.chaos, pytest.mark.timeout(2400)])]
)
def test_any_interleaving_keeps_versions_monotonic_and_converges(redis_url: str, examples: int) -> None:
    CacheModel.redis_url = redis_url
    run_state_machine_as_test(
        CacheModel,
        settings=settings(
            max_examples=examples,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
