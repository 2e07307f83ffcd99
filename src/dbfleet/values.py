"""A value as every engine gives it back: the form rows are compared in across databases.

Both ``fleet sync --check`` and ``fleet verify`` compare rows read from two engines
through Django, which hands back the same Python types everywhere but not always
the same values of them: a decimal keeps its engine's scale, a time its
connection's offset, a JSON object its engine's key order. ``canonical`` removes
exactly those differences and keeps every other (text is compared exactly).
``orders_as_python`` says which keys every engine sorts as Python does.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Iterable
from decimal import Context, Decimal
from typing import Any

from django.db import models


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


def compared_field(field: Any) -> Any:
    """The field whose values ``field`` holds: a foreign key's target, followed to the end."""
    while getattr(field, "is_relation", False) and getattr(field, "target_field", None):
        field = field.target_field
    return field


def orders_as_python(field: Any, mysql: bool) -> bool:
    """Whether every engine sorts the values of ``field`` as Python does: integers, and
    UUIDs unless MariaDB/MySQL is one side (its ``uuid`` type sorts by groups swapped)."""
    field = compared_field(field)
    if isinstance(field, models.UUIDField):
        return not mysql
    return isinstance(field, models.IntegerField | models.AutoField)
