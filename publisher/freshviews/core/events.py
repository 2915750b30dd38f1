"""The change event: the one contract between whatever captures a write and the subscriber.

A change names one row of the source of truth that a committed transaction inserted, updated or deleted: its
entity (the table), its primary key as text, and the values of the columns the views depend on before and after
the change (``before`` is None for an insert, ``after`` for a delete). On the wire it is one Redis Stream entry
with a single field ``c`` holding compact JSON with short names::

    {"s":2,"e":"scores","i":"42","o":"u","b":{"player_id":7,"points":10},"a":{"player_id":7,"points":25},
     "t":1732770000123,"x":"outbox:981"}

``x`` is where the change came from (the outbox row, or a position in the database's log): a change relayed
twice carries the same ``x``, and is harmless anyway, since a recompute reads the source, not the change. The
schema number ``s`` lets a newer subscriber read older entries (schema 1 carried the values as ``h``, "hints")
and reject entries from a future schema clearly.
"""

from __future__ import annotations

import enum
import json
import time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

SCHEMA_VERSION = 2
#: The stream field that carries the encoded change.
FIELD = b"c"
#: Entries larger than this are rejected by the decoder (a poison entry must not stall the consumer).
MAX_ENCODED_BYTES = 64 * 1024
#: Columns one change may carry, before or after.
MAX_COLUMNS = 64
#: The id of a change that removed every row of its entity (a ``TRUNCATE`` read from the database's log): it
#: affects every key of every view of the entity.
ALL_ROWS = "*"

#: A table (optionally schema-qualified) or another kind of entity.
Entity = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")]
Column = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
EntityId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
#: A column value as JSON carries it (the capture turns dates, decimals and UUIDs into text).
Value = str | int | float | bool | None
Row = dict[Column, Value | list[Value]]


class Operation(enum.StrEnum):
    CREATE = "c"
    UPDATE = "u"
    DELETE = "d"


class Change(BaseModel):
    """One committed change to one row of the source of truth.

    ``before`` and ``after`` hold the values of the columns the views depend on (at least those; a capture may
    carry more). A view's declared dependencies (:class:`freshviews.core.On`) read them to name the keys the
    change affects; a change that lacks a column a declaration needs makes the subscriber recompute every key of
    that view instead, so leaving values out costs work, never freshness.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    schema_version: int = Field(default=SCHEMA_VERSION, alias="s", ge=1, le=SCHEMA_VERSION)
    entity: Entity = Field(alias="e")
    id: EntityId = Field(alias="i")
    op: Operation = Field(alias="o")
    before: Row | None = Field(default=None, alias="b", max_length=MAX_COLUMNS)
    after: Row | None = Field(default=None, alias="a", max_length=MAX_COLUMNS)
    #: Commit time in epoch milliseconds, for the commit-to-cache latency metric.
    committed_ms: int = Field(default_factory=lambda: int(time.time() * 1000), alias="t", ge=0)
    #: Where the change came from (``outbox:<row id>``, a log position): the same for a change relayed twice.
    origin: str | None = Field(default=None, alias="x", max_length=128)

    @model_validator(mode="before")
    @classmethod
    def _schema_1(cls, data: Any) -> Any:
        # Schema 1 carried the row's values as "h" (hints): they are the after values.
        if isinstance(data, dict) and data.get("s") == 1 and isinstance(data.get("h"), dict):
            data = {k: v for k, v in data.items() if k != "h"} | {"a": {**data["h"], **(data.get("a") or {})}}
        return data

    def values(self, column: str) -> list[Value | list[Value]] | None:
        """The column's values before and after the change (one each, duplicates kept out); None when they are
        not known: neither side carries the column, or a side that is there lacks it (an old value the capture
        never had, a database log without the old row). A caller then cannot tell which keys the change left,
        and must assume every one."""
        found: list[Value | list[Value]] = []
        present = False
        for row in (self.before, self.after):
            if row is None:
                continue
            if column not in row:
                return None
            present = True
            if row[column] not in found:
                found.append(row[column])
        return found if present else None

    @property
    def all_rows(self) -> bool:
        """Whether the change removed every row of its entity (:data:`ALL_ROWS`)."""
        return self.id == ALL_ROWS

    def encode(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


def encode_change(
    *,
    entity: str,
    id: str,
    op: Operation,
    before: Row | None,
    after: Row | None,
    committed_ms: int,
    origin: str | None = None,
) -> str:
    """The wire JSON of a change, as :meth:`Change.encode` writes it, without building and validating a model.

    For captures that write thousands of changes in one statement: the names come from the database's own
    tables and the values are already plain JSON, so the decoder's validation at the subscriber is enough.
    """
    fields: dict[str, Any] = {"s": SCHEMA_VERSION, "e": entity, "i": id, "o": op.value}
    if before is not None:
        fields["b"] = before
    if after is not None:
        fields["a"] = after
    fields["t"] = committed_ms
    if origin is not None:
        fields["x"] = origin
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


class ChangeDecodeError(ValueError):
    """A stream entry that is not a valid change; the reason is meant for the dead-letter stream."""


def decode(fields: dict[bytes, bytes]) -> Change:
    """Parse one stream entry's fields into a :class:`Change`, or raise :class:`ChangeDecodeError`."""
    raw = fields.get(FIELD)
    if raw is None:
        raise ChangeDecodeError(f"entry has no {FIELD.decode()!r} field (fields: {sorted(_names(fields))})")
    if len(raw) > MAX_ENCODED_BYTES:
        raise ChangeDecodeError(f"entry is {len(raw)} bytes, over the {MAX_ENCODED_BYTES} byte limit")
    try:
        return Change.model_validate_json(raw)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise ChangeDecodeError(f"invalid change: {errors}") from None


def _names(fields: dict[Any, Any]) -> list[str]:
    return [k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in fields][:10]
