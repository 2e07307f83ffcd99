"""A value as every engine gives it back: the form rows are compared in across databases.

Both ``fleet sync --check`` and ``fleet verify`` compare rows read from two engines
through Django, which hands back the same Python types everywhere but not always
the same values of them: a decimal keeps its engine's scale, a time its
connection's offset, a JSON object its engine's key order. ``canonical`` removes
exactly those differences and keeps every other (text is compared exactly).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Iterable
from decimal import Context, Decimal
from typing import Any


def canonical(value: Any) -> Any:
    """``value`` as both sides give it back: times in UTC, decimals without trailing zeros."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Decimal):
        # Precise enough for every digit: the default context would round past 28.
        return str(value.normalize(Context(prec=max(1, len(value.as_tuple().digits)))))
    if isinstance(value, datetime.datetime) and value.utcoffset() is not None:
        return value.astimezone(datetime.UTC).replace(tzinfo=None).isoformat()
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, int | float | str) or value is None:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def row_hash(row: Iterable[Any]) -> int:
    """64 bits of BLAKE2b of ``row``'s canonical values."""
    digest = hashlib.blake2b(repr(tuple(canonical(v) for v in row)).encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big")
