"""Column values from the log's text to what a change carries, by the column's type OID.

The SQLAlchemy capture writes Python values through :func:`freshviews.outbox.capture.plain`: integers and
booleans as JSON numbers and booleans, decimals and UUIDs as text, dates and times in ISO 8601. The log's text
is turned into the same, so that a change reads alike from either source and declared dependencies (which parse
a value's text as a key parameter) name the same keys. A type not listed here stays text.
"""

from __future__ import annotations

import datetime
import math

from freshviews.core.events import Value

_INTEGERS = frozenset({20, 21, 23, 26})  # int8, int2, int4, oid
_FLOATS = frozenset({700, 701})  # float4, float8
_BOOL = 16
_BYTEA = 17
_TIMESTAMPS = frozenset({1114, 1184})  # timestamp, timestamptz
_TIMES = frozenset({1083, 1266})  # time, timetz


def convert(type_oid: int, raw: bytes) -> Value:
    """The value of a column of type ``type_oid`` whose text is ``raw``, as the SQLAlchemy capture writes it."""
    text = raw.decode()
    try:
        if type_oid in _INTEGERS:
            return int(text)
        if type_oid == _BOOL:
            return text == "t"
        if type_oid in _FLOATS:
            number = float(text)
            return number if math.isfinite(number) else text
        if type_oid in _TIMESTAMPS:
            return datetime.datetime.fromisoformat(_iso_offset(text)).isoformat()
        if type_oid in _TIMES:
            return datetime.time.fromisoformat(_iso_offset(text)).isoformat()
        if type_oid == _BYTEA:
            return text.removeprefix("\\x")
    except ValueError:
        # Infinity timestamps, BC dates: the text is what the database said, and no key is built from it.
        return text
    return text


def _iso_offset(text: str) -> str:
    """PostgreSQL writes offsets as ``+02`` or ``+05:30``; Python 3.11 reads both, but only ``+HH:MM`` reliably."""
    if len(text) >= 3 and text[-3] in "+-" and text[-2:].isdigit():
        return f"{text}:00"
    return text
