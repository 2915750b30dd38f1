"""The change event on the wire: round trip, and a clear ChangeDecodeError for everything else."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from freshviews.core.events import (
    FIELD,
    MAX_COLUMNS,
    MAX_ENCODED_BYTES,
    SCHEMA_VERSION,
    Change,
    ChangeDecodeError,
    Operation,
    decode,
    encode_change,
)

#: Leave a field out of the wire body.
_DROP = object()


def _wire(**overrides: Any) -> dict[bytes, bytes]:
    body: dict[str, Any] = {"s": SCHEMA_VERSION, "e": "item", "i": "42", "o": "u", "a": {}, "t": 1_700_000_000_000}
    body.update(overrides)
    return {FIELD: json.dumps({k: v for k, v in body.items() if v is not _DROP}).encode()}


def test_round_trip_keeps_every_field() -> None:
    change = Change(
        entity="score",
        id="p-7",
        op=Operation.DELETE,
        before={"player_id": 7, "region": "eu", "ratio": 0.5, "final": True, "gone": None, "tags": ["a", 1]},
        committed_ms=1_732_770_000_123,
        origin="outbox:12",
    )
    encoded = change.encode()
    assert json.loads(encoded)["e"] == "score"  # the short wire names
    decoded = decode({FIELD: encoded})
    assert decoded == change
    assert decoded.before is not None
    assert decoded.before["final"] is True  # a bool stays a bool, not 1
    assert decoded.before["player_id"] == 7
    assert decoded.origin == "outbox:12"
    assert decoded.schema_version == SCHEMA_VERSION


def test_committed_ms_defaults_to_now() -> None:
    before = int(time.time() * 1000)
    assert decode({FIELD: Change(entity="item", id="1", op=Operation.CREATE).encode()}).committed_ms >= before


def test_change_is_frozen() -> None:
    change = Change(entity="item", id="1", op=Operation.CREATE)
    with pytest.raises(ValueError, match="frozen"):
        change.id = "2"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({b"x": b"{}"}, "no 'c' field"),
        ({}, "no 'c' field"),
        ({FIELD: b""}, "invalid change"),
        ({FIELD: b"not json"}, "invalid change"),
        ({FIELD: b"[1, 2]"}, "invalid change"),
        ({FIELD: b"\xff\xfe"}, "invalid change"),
        (_wire(e=_DROP), "e"),
        (_wire(i=_DROP), "i"),
        (_wire(o=_DROP), "o"),
        (_wire(e=5), "e"),
        (_wire(e="9starts-with-a-digit"), "e"),
        (_wire(i=""), "i"),
        (_wire(i="x" * 129), "i"),
        (_wire(o="x"), "o"),
        (_wire(a=[1]), "a"),
        (_wire(a={"bad key": 1}), "a"),
        (_wire(a={"k": {"nested": 1}}), "a"),
        (_wire(b={"k": {"nested": 1}}), "b"),
        (_wire(h=[1]), "h"),
        (_wire(a={f"k{n}": n for n in range(MAX_COLUMNS + 1)}), "a"),
        (_wire(t=-1), "t"),
        (_wire(t="yesterday"), "t"),
        (_wire(extra=1), "extra"),
        (_wire(s=SCHEMA_VERSION + 1), "s"),
        (_wire(s=0), "s"),
    ],
)
def test_decode_errors_name_the_problem(fields: dict[bytes, bytes], reason: str) -> None:
    with pytest.raises(ChangeDecodeError) as info:
        decode(fields)
    assert reason in str(info.value)
    assert isinstance(info.value, ValueError)


def test_oversize_entry_is_refused_before_parsing() -> None:
    big = _wire(a={"blob": "x" * MAX_ENCODED_BYTES})
    with pytest.raises(ChangeDecodeError, match="byte limit"):
        decode(big)
    # Just under the limit still decodes.
    body = json.loads(_wire()[FIELD])
    body["a"] = {"blob": ""}
    pad = MAX_ENCODED_BYTES - len(json.dumps(body).encode())
    body["a"]["blob"] = "x" * pad
    assert len(json.dumps(body).encode()) == MAX_ENCODED_BYTES
    assert (decode({FIELD: json.dumps(body).encode()}).after or {})["blob"] == "x" * pad


def test_missing_schema_version_reads_as_current() -> None:
    # Older writers may omit optional fields; the decoder fills the defaults.
    assert decode(_wire(s=_DROP, a=_DROP)).schema_version == SCHEMA_VERSION


def test_a_schema_1_entry_reads_its_hints_as_after_values() -> None:
    old = decode(_wire(s=1, a=_DROP, h={"player_id": 7, "region": "eu"}))
    assert (old.schema_version, old.before, old.after) == (1, None, {"player_id": 7, "region": "eu"})


def test_the_fast_encoder_writes_what_the_model_writes() -> None:
    fields: dict[str, Any] = {
        "entity": "players", "id": "7", "op": Operation.UPDATE, "before": {"total": 1, "name": "Zoë"},
        "after": {"total": 2.5, "name": None}, "committed_ms": 1_700_000_000_000,
    }  # fmt: skip
    assert encode_change(**fields, origin="outbox:3") == Change(**fields, origin="outbox:3").encode().decode()
    assert decode({FIELD: encode_change(**fields).encode()}) == Change(**fields)


def test_a_side_that_lacks_a_column_makes_its_values_unknown() -> None:
    moved = Change(entity="items", id="1", op=Operation.UPDATE, before={"id": 1}, after={"id": 1, "color": "blue"})
    assert moved.values("color") is None  # the old colour is not known: which key it left cannot be said
    assert moved.values("id") == [1]
    told = Change(entity="items", id="1", op=Operation.UPDATE, after={"color": "blue"})
    assert told.values("color") == ["blue"]  # a writer that gives only the after values names those
    assert Change(entity="items", id="1", op=Operation.CREATE).values("color") is None
