"""Every Redis key and channel name the product uses, in one place.

Layout (``<p>`` is the configurable prefix, ``fv`` by default)::

    <p>:changes                 stream   the change log (XADD by publishers, consumer group of subscribers)
    <p>:dead                    stream   dead letters: changes that could not be applied, with the reason
    <p>:refresh                 stream   refresh requests from readers that missed: field "key" = one view key
                                         (consumer group of subscribers, the same group name as the change log)
    <p>:updates                 channel  update notifications "<version> <view key>" after each cache write
    <p>:v:{<view key>}          hash     one cached view: d=JSON bytes, v=version (ETag), h=digest,
                                         f=fence (the ticket of the newest recompute applied)
    <p>:hb:<consumer>           string   subscriber liveness heartbeat (JSON, with a TTL), read by `freshviews check`
    <p>:sweep                   hash     last sweep's outcome (for /healthz and operators)
    <p>:sweep:lock              string   held by the one subscriber sweeping now (several may run)
    <p>:pglog:<slot>            string   the PostgreSQL log source's status (JSON with a TTL: slot lag), for `check`

Each cached view is one hash, so every script touches exactly one key: safe for Redis Cluster, where the
braces make the view key the hash tag.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "fv"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "{}: \r\n*?[]"):
            raise ValueError(f"invalid key prefix {self.prefix!r}")

    @property
    def changes(self) -> str:
        return f"{self.prefix}:changes"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def refresh(self) -> str:
        return f"{self.prefix}:refresh"

    @property
    def updates_channel(self) -> str:
        return f"{self.prefix}:updates"

    @property
    def sweep(self) -> str:
        return f"{self.prefix}:sweep"

    @property
    def sweep_lock(self) -> str:
        return f"{self.prefix}:sweep:lock"

    def pglog(self, slot: str) -> str:
        return f"{self.prefix}:pglog:{slot}"

    @property
    def value_pattern(self) -> str:
        """SCAN pattern matching every cached view."""
        return f"{self.prefix}:v:*"

    def value(self, view_key: str) -> str:
        """The hash holding one view key. ``view_key`` must come from the registry (already validated)."""
        return f"{self.prefix}:v:{{{view_key}}}"

    def view_key_of(self, redis_key: bytes | str) -> str:
        """Inverse of :meth:`value`."""
        text = redis_key.decode() if isinstance(redis_key, bytes) else redis_key
        head = f"{self.prefix}:v:{{"
        if not text.startswith(head) or not text.endswith("}"):
            raise ValueError(f"{text!r} is not a cached view key")
        return text[len(head) : -1]

    def heartbeat(self, consumer: str) -> str:
        return f"{self.prefix}:hb:{consumer}"

    @property
    def heartbeat_pattern(self) -> str:
        """SCAN pattern matching every subscriber's heartbeat."""
        return f"{self.prefix}:hb:*"


# Fields of the per-view hash, shared by the scripts' callers and the read path.
DATA = b"d"
VERSION = b"v"
DIGEST = b"h"
FENCE = b"f"
#: The field of a refresh request naming the view key a reader found missing.
REFRESH_KEY = b"key"
#: The digest stored for a deleted view (a tombstone keeps its version so a stale recompute cannot resurrect it).
TOMBSTONE = b"-"
