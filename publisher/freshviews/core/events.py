"""The change event: the one contract between a backend's write path and the subscriber.

On the wire a change is one Redis Stream entry with a single field ``c`` holding compact JSON with short
names (``{"s":1,"e":"score","i":"42","o":"c","h":{"player_id":7},"t":1732770000123}``). The schema
number ``s`` lets a newer subscriber read older entries and reject entries from a future schema clearly.
"""

from __future__ import annotations

import enum
import time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

SCHEMA_VERSION = 1
#: The stream field that carries the encoded change.
FIELD = b"c"
#: Entries larger than this are rejected by the decoder (a poison entry must not stall the consumer).
MAX_ENCODED_BYTES = 64 * 1024

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]
EntityId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
HintValue = str | int | float | bool | None


class Operation(enum.StrEnum):
    CREATE = "c"
    UPDATE = "u"
    DELETE = "d"


class Change(BaseModel):
    """One committed change to one row of the source of truth.

    ``hints`` carry facts the writer already knows (a score's ``player_id``, a player's old and new
    ``region``) so the subscriber can find the affected keys without a lookup. They are advisory:
    a view must still be correct when a hint is missing.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    schema_version: int = Field(default=SCHEMA_VERSION, alias="s", ge=1, le=SCHEMA_VERSION)
    entity: Name = Field(alias="e")
    id: EntityId = Field(alias="i")
    op: Operation = Field(alias="o")
    hints: dict[Name, HintValue | list[HintValue]] = Field(default_factory=dict, alias="h", max_length=32)
    #: Commit time in epoch milliseconds, for the commit-to-cache latency metric.
    committed_ms: int = Field(default_factory=lambda: int(time.time() * 1000), alias="t", ge=0)

    def encode(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_defaults=False).encode()


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
