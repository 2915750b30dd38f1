"""Which key the consistency sampler recomputes next (see :mod:`freshviews.worker.sampler`).

Half the picks walk every cached key in turn: a catalogue listed with SCAN, in a shuffled order, relisted after
a full pass, at most once per :data:`RELIST_EVERY` (every :data:`RELIST_EMPTY` while it is empty). So each of K
cached keys is picked within 2K picks of any moment, whatever the other half does. The other half go to a random
cached key of a *busy* view, one whose entities changed in the last :data:`BUSY_FOR` seconds (the change consumer
tells, :meth:`KeyPicker.on_changes`): a declaration that misses a case leaves its keys stale where writes land.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

from freshviews.core.events import Change
from freshviews.core.views import Registry
from freshviews.worker.store import CacheStore

#: The catalogue of cached keys is relisted after a full pass, at most this often (5 s while it is empty).
RELIST_EVERY = 60.0
RELIST_EMPTY = 5.0
#: A view stays busy this long after a change to one of its entities, seconds.
BUSY_FOR = 60.0


class KeyPicker:
    """Picks the next cached key to sample from ``store``'s keys of ``registry``'s views."""

    def __init__(self, store: CacheStore, registry: Registry[Any], *, seed: int | None = None) -> None:
        self._store = store
        self._registry = registry
        self._random = random.Random(seed)
        self._catalogue: list[str] = []
        self._by_view: dict[str, list[str]] = {}
        self._cursor = 0
        self._listed_at = -RELIST_EVERY
        self._busy: dict[str, float] = {}
        self._picks = 0

    @property
    def cached(self) -> int:
        """Keys in the catalogue as last listed."""
        return len(self._catalogue)

    def on_changes(self, changes: Sequence[Change]) -> None:
        """A batch of ``changes`` was applied: the views of its entities are busy now."""
        now = time.monotonic()
        for entity in {change.entity for change in changes}:
            for view in self._registry.views_for(entity):
                self._busy[view.name] = now

    async def pick(self) -> str | None:
        """The next key to sample; None while nothing is cached."""
        self._picks += 1
        if self._picks % 2 == 0 and (key := self._busy_key()) is not None:
            return key
        return await self._walk()

    def _busy_key(self) -> str | None:
        now = time.monotonic()
        busy = [name for name, at in self._busy.items() if now - at < BUSY_FOR and self._by_view.get(name)]
        if not busy:
            return None
        return self._random.choice(self._by_view[self._random.choice(busy)])

    async def _walk(self) -> str | None:
        if self._cursor >= len(self._catalogue):
            wait = RELIST_EVERY if self._catalogue else RELIST_EMPTY
            if time.monotonic() - self._listed_at >= wait:
                await self._relist()
            self._cursor = 0
            if not self._catalogue:
                return None
        key = self._catalogue[self._cursor]
        self._cursor += 1
        return key

    async def _relist(self) -> None:
        self._listed_at = time.monotonic()
        # Tombstones are sampled too: a row that came back with no change saying so is a hole as well.
        self._catalogue = await self._store.cached_view_keys()
        self._random.shuffle(self._catalogue)
        self._by_view = {}
        for key in self._catalogue:
            self._by_view.setdefault(key.split("/", 1)[0], []).append(key)
