"""The messages of PostgreSQL's ``pgoutput`` logical decoding plugin (protocol version 1), parsed.

A replication slot using ``pgoutput`` streams, per committed transaction: ``Begin``, a ``Relation`` message for
every table before its first row change in the session (and again after DDL changed it), the row changes
(``Insert``, ``Update``, ``Delete``, ``Truncate``) and ``Commit``. Row values arrive as text, typed by the
relation's column type OIDs (see :mod:`freshviews.pglog.values`). ``Type`` and ``Origin`` messages are parsed
only far enough to be skipped.

Reference: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 UTC), for commit timestamps.
PG_EPOCH_US = 946_684_800_000_000


class ProtocolError(ValueError):
    """A message this parser cannot read (a newer protocol version, a truncated message)."""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    #: Part of the replica identity (the primary key, unless REPLICA IDENTITY says otherwise).
    key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    id: int
    namespace: str
    name: str
    #: ``d`` default (primary key), ``n`` nothing, ``f`` full (every column), ``i`` an index.
    replica_identity: str
    columns: tuple[Column, ...]


#: One row's values in column order: the text bytes, None for NULL, or :data:`UNCHANGED` for a TOASTed value the
#: log did not repeat.
Values = list[bytes | object | None]


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_us: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_us: int


@dataclass(frozen=True, slots=True)
class Insert:
    relation_id: int
    new: Values


@dataclass(frozen=True, slots=True)
class Update:
    relation_id: int
    #: The old row: every column with REPLICA IDENTITY FULL (``O``), the key columns when the key changed
    #: (``K``), else None.
    old: Values | None
    old_kind: str | None
    new: Values


@dataclass(frozen=True, slots=True)
class Delete:
    relation_id: int
    old: Values
    old_kind: str


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Skipped:
    """A message the source does not need (``Type``, ``Origin``, logical decoding messages)."""

    kind: str


Message = Begin | Commit | Relation | Insert | Update | Delete | Truncate | Skipped

#: An unchanged TOASTed value in a tuple (``u``): the log does not repeat it.
UNCHANGED = object()


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> tuple[int, ...]:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ProtocolError(f"message cut short at byte {self.pos} (needs {size} more)")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def byte(self) -> str:
        if self.pos >= len(self.data):
            raise ProtocolError(f"message cut short at byte {self.pos}")
        value = chr(self.data[self.pos])
        self.pos += 1
        return value

    def string(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError(f"unterminated string at byte {self.pos}")
        value = self.data[self.pos : end].decode()
        self.pos = end + 1
        return value

    def tuple_data(self) -> list[bytes | object | None]:
        (count,) = self.take("!h")
        values: list[bytes | object | None] = []
        for _ in range(count):
            kind = self.byte()
            if kind == "n":
                values.append(None)
            elif kind == "u":
                values.append(UNCHANGED)
            elif kind in "tb":
                (length,) = self.take("!i")
                if self.pos + length > len(self.data):
                    raise ProtocolError(f"value cut short at byte {self.pos}")
                values.append(self.data[self.pos : self.pos + length])
                self.pos += length
            else:
                raise ProtocolError(f"unknown tuple value kind {kind!r}")
        return values


def parse(payload: bytes) -> Message:
    """One ``pgoutput`` message; :class:`ProtocolError` when it cannot be read."""
    if not payload:
        raise ProtocolError("empty message")
    reader = _Reader(payload)
    kind = reader.byte()
    if kind == "B":
        final_lsn, commit_us, xid = reader.take("!QqI")
        return Begin(final_lsn, commit_us, xid)
    if kind == "C":
        _flags, commit_lsn, end_lsn, commit_us = reader.take("!BQQq")
        return Commit(commit_lsn, end_lsn, commit_us)
    if kind == "R":
        (relation_id,) = reader.take("!I")
        namespace, name = reader.string(), reader.string()
        identity = reader.byte()
        (count,) = reader.take("!h")
        columns = []
        for _ in range(count):
            (flags,) = reader.take("!B")
            column = reader.string()
            type_oid, _typmod = reader.take("!Ii")
            columns.append(Column(column, type_oid, bool(flags & 1)))
        return Relation(relation_id, namespace, name, identity, tuple(columns))
    if kind == "I":
        (relation_id,) = reader.take("!I")
        if reader.byte() != "N":
            raise ProtocolError("insert without a new tuple")
        return Insert(relation_id, reader.tuple_data())
    if kind == "U":
        (relation_id,) = reader.take("!I")
        marker = reader.byte()
        old, old_kind = None, None
        if marker in "KO":
            old, old_kind = reader.tuple_data(), marker
            marker = reader.byte()
        if marker != "N":
            raise ProtocolError(f"update without a new tuple (got {marker!r})")
        return Update(relation_id, old, old_kind, reader.tuple_data())
    if kind == "D":
        (relation_id,) = reader.take("!I")
        marker = reader.byte()
        if marker not in "KO":
            raise ProtocolError(f"delete without an old tuple (got {marker!r})")
        return Delete(relation_id, reader.tuple_data(), marker)
    if kind == "T":
        count, _options = reader.take("!IB")
        return Truncate(tuple(reader.take(f"!{count}I")) if count else ())
    if kind in "YOM":
        return Skipped(kind)
    raise ProtocolError(f"unknown message kind {kind!r}")


def epoch_ms(commit_us: int) -> int:
    """A commit timestamp (µs since 2000-01-01) in epoch milliseconds, as a change carries it."""
    return (commit_us + PG_EPOCH_US) // 1000


def lsn_text(lsn: int) -> str:
    """``16/B374D848``: how PostgreSQL writes an LSN."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)
