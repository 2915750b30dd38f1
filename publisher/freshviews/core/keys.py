"""Every Redis key and channel name the product uses, in one place.

Layout (``<p>`` is the configurable prefix, ``fv`` by default)::

    <p>:{changes}               stream   the change log (XADD by publishers, consumer group of subscribers)
    <p>:{changes}:dead          stream   dead letters: changes that could not be applied, with the reason (in the
                                         change log's hash slot: acknowledged with them in one MULTI)
    <p>:refresh                 stream   refresh requests from readers that missed: field "key" = one view key
                                         (consumer group of subscribers, the same group name as the change log)
    <p>:updates                 channel  update notifications "<version> <view key>" after each cache write
    <p>:v:{<view key>}          hash     one cached view: d=JSON bytes, v=version (ETag), h=digest,
                                         f=fence (the ticket of the newest recompute applied), n=1 on a
                                         negative entry (a key that never held a value, short-lived)
    <p>:t:{<view key>}          string   the highest ticket issued for a view key (by the ticket script, on the
                                         key's own node) while it is above the fence, with a TTL: no ticket
                                         goes below it, whatever the clock of the node that issues the next
    <p>:fail:{<view key>}       hash     a key whose recompute for readers keeps failing: a=attempts, r=when the next
                                         may run (ms, Redis clock), e=the reason; with a TTL (backoff + its max)
    <p>:hb:<consumer>           string   subscriber liveness heartbeat (JSON, with a TTL), read by `freshviews check`
    <p>:misses                  zset     the keys whose "not found" is kept as a short-lived negative entry (a
                                         tombstone marked n=1), by when; capped, the oldest evicted with their entry
    <p>:sweep                   hash     last sweep's outcome (for /healthz and operators)
    <p>:sweep:lock              string   the lease of the one subscriber sweeping now (value: its consumer name;
                                         a short TTL renewed while it sweeps)
    <p>:warm                    string   set once the cache is filled (a sweep completed, or a subscriber found
                                         it warm); gone when Redis loses its data: the readiness signal
    <p>:sampler                 string   the consistency sampler's summary (JSON: per view samples, results,
                                         nines), read by `freshviews check`, /healthz and the dashboard; with
                                         several subscribers, the one that published last (it names itself)
    <p>:{due}                   zset     keys whose recompute waits for the end of their view's minimum interval
                                         (SUBSCRIBER_MIN_INTERVALS), by when (ms)
    <p>:{due}:claimed           zset     due keys a subscriber is recomputing, by when its lease ends (ms); one
                                         hash tag with the due set, which scripts move keys between
    <p>:pglog:<slot>            string   the PostgreSQL log source's status (JSON with a TTL: slot lag), for `check`

Redis Cluster: a script or a transaction must touch keys of one hash slot. Each cached view is one hash, and
its issued ticket and its failure state carry the same hash tag (the braces), so a key's scripts touch one
slot; the change log and its dead letters share the tag ``{changes}``, so that settling a batch (dead letters
added, entries acknowledged) is one MULTI. :meth:`Keys.atomic_sets` lists every key set a script or transaction
touches together, and the test of the layout asserts that each is one slot. Other keys (misses, sweep,
heartbeats...) are only ever touched one at a time, so where they land does not matter.
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
        return f"{self.prefix}:{{changes}}"

    @property
    def dead_letters(self) -> str:
        """The change log's dead letters, in the change log's hash slot."""
        return f"{self.prefix}:{{changes}}:dead"

    @property
    def refresh(self) -> str:
        return f"{self.prefix}:refresh"

    @property
    def updates_channel(self) -> str:
        return f"{self.prefix}:updates"

    @property
    def misses(self) -> str:
        return f"{self.prefix}:misses"

    @property
    def sweep(self) -> str:
        return f"{self.prefix}:sweep"

    @property
    def sweep_lock(self) -> str:
        return f"{self.prefix}:sweep:lock"

    def pglog(self, slot: str) -> str:
        return f"{self.prefix}:pglog:{slot}"

    @property
    def due(self) -> str:
        return f"{self.prefix}:{{due}}"

    @property
    def due_claimed(self) -> str:
        return f"{self.prefix}:{{due}}:claimed"

    @property
    def warm(self) -> str:
        return f"{self.prefix}:warm"

    @property
    def sampler(self) -> str:
        return f"{self.prefix}:sampler"

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

    def issued(self, view_key: str) -> str:
        """The highest ticket issued for one view key, in the same hash slot as :meth:`value`."""
        return f"{self.prefix}:t:{{{view_key}}}"

    def failure(self, view_key: str) -> str:
        """The failure state of one view key (its backoff), in the same hash slot as :meth:`value`."""
        return f"{self.prefix}:fail:{{{view_key}}}"

    def heartbeat(self, consumer: str) -> str:
        return f"{self.prefix}:hb:{consumer}"

    @property
    def heartbeat_pattern(self) -> str:
        """SCAN pattern matching every subscriber's heartbeat."""
        return f"{self.prefix}:hb:*"

    def atomic_sets(self, view_key: str) -> dict[str, tuple[str, ...]]:
        """Every set of keys one script or one transaction touches together, by what does it (for ``view_key``):
        on Redis Cluster each must lie in one hash slot. A new script or MULTI over several keys belongs here."""
        value = self.value(view_key)
        return {
            "settle a batch: dead letters added, entries acknowledged (worker/consumer.py, one MULTI)": (
                self.changes,
                self.dead_letters,
            ),
            "a transaction from the log source: its changes and dead letters (pglog/source.py, one MULTI)": (
                self.changes,
                self.dead_letters,
            ),
            "a ticket: the fence read, the issued ticket raised (worker/store.py, script)": (
                value,
                self.issued(view_key),
            ),
            "the fenced write: the issued ticket dropped once the fence reaches it (worker/store.py, script)": (
                value,
                self.issued(view_key),
            ),
            "a negative entry evicted (worker/store.py, script)": (value,),
            "the misses recorded (worker/store.py, script)": (self.misses,),
            "the sweep lease (worker/lease.py, scripts)": (self.sweep_lock,),
            "keys put off to the end of their view's interval (worker/throttle.py, script)": (self.due,),
            "due keys claimed, and the claim finished (worker/throttle.py, scripts)": (self.due, self.due_claimed),
        }


# Fields of the per-view hash, shared by the scripts' callers and the read path.
DATA = b"d"
VERSION = b"v"
DIGEST = b"h"
FENCE = b"f"
#: Marks a negative entry: the "not found" of a key that never held a value, kept briefly (a real deletion's
#: tombstone has no such field and lasts the tombstone TTL).
NEGATIVE = b"n"
# Fields of a key's failure state (Keys.failure), written by the subscriber, read by the read side.
FAILURE_ATTEMPTS = b"a"
FAILURE_RETRY_AT = b"r"
FAILURE_REASON = b"e"
#: The field of a refresh request naming the view key a reader found missing.
REFRESH_KEY = b"key"
#: The digest stored for a deleted view (a tombstone keeps its version so a stale recompute cannot resurrect it).
TOMBSTONE = b"-"
