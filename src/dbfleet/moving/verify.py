"""``fleet verify``: whether two databases hold the same rows of models, and which differ.

Both sides are read in primary-key order, a batch of keys at a time (an index
range each, as ``fleet copy`` reads), and merged by key: a key on one side only is
a missing or an extra row, and two rows of one key are compared value by value in
the normal form of :mod:`dbfleet.values` (decimals without their scale, times in
UTC, JSON without its key order; text exactly, to the byte). No checksum stands
for the rows, so no difference can hide in a collision, and one read of each side
finds every differing row. Keys are compared in Python, so both engines must order
them as Python does: integer and UUID keys.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.management.base import CommandError
from django.db import connections, models

from dbfleet.moving.copy import chosen
from dbfleet.values import canonical

#: Rows read at a time from each side.
BATCH_SIZE = 10_000
#: Keys listed of each kind of difference (all are counted).
SHOWN = 20
#: Primary keys both engines order as Python does.
ORDERED_KEYS = (
    models.AutoField,
    models.BigAutoField,
    models.SmallAutoField,
    models.IntegerField,
    models.UUIDField,
)


@dataclass
class RowDifference:
    """A key whose rows differ: the columns that do, and their values on each side."""

    key: Any
    columns: list[str]
    first: list[Any]
    second: list[Any]


@dataclass
class ModelVerify:
    model: str
    first: str
    second: str
    rows_first: int = 0
    rows_second: int = 0
    #: Keys on the first database only (the first SHOWN), and how many there are.
    missing: list[Any] = field(default_factory=list)
    missing_count: int = 0
    #: Keys on the second database only.
    extra: list[Any] = field(default_factory=list)
    extra_count: int = 0
    different: list[RowDifference] = field(default_factory=list)
    different_count: int = 0
    seconds: float = 0.0

    @property
    def equal(self) -> bool:
        return not (self.missing_count or self.extra_count or self.different_count)


@dataclass
class VerifyReport:
    first: str
    second: str
    models: list[ModelVerify] = field(default_factory=list)

    @property
    def differs(self) -> bool:
        return any(not model.equal for model in self.models)


def key_field(model: type[models.Model]) -> Any:
    """The field ``model``'s key compares as (a parent's, for a multi-table child)."""
    field: Any = model._meta.pk
    while field.is_relation:
        field = field.target_field
    return field


def orders_as_python(model: type[models.Model], mysql: bool) -> bool:
    """Whether every engine (MariaDB's native UUID type aside) orders ``model``'s keys as
    Python does."""
    field = key_field(model)
    if isinstance(field, models.UUIDField):
        return not mysql  # MariaDB's uuid type sorts by its groups swapped.
    return isinstance(field, ORDERED_KEYS)


def rows_in_key_order(
    model: type[models.Model], alias: str, names: Sequence[str], batch_size: int
) -> Iterator[tuple[Any, ...]]:
    """``model``'s rows on ``alias`` as tuples of ``names`` (the key first), in key order."""
    ordered = model._base_manager.using(alias).order_by("pk").values_list(*names)
    last: Any = None
    while True:
        batch = list((ordered if last is None else ordered.filter(pk__gt=last))[:batch_size])
        yield from batch
        if len(batch) < batch_size:
            return
        last = batch[-1][0]


def verify_models(
    labels: Sequence[str], first: str, second: str, *, batch_size: int = BATCH_SIZE
) -> VerifyReport:
    """Compare the rows of the models ``labels`` name on ``first`` and on ``second``."""
    if first == second:
        raise CommandError(f"--between names {first!r} twice: name two databases.")
    for alias in (first, second):
        if alias not in connections:
            raise CommandError(f"No database {alias!r}; the aliases: {', '.join(connections)}.")
    picked = chosen(labels)
    engines = {connections[alias].vendor for alias in (first, second)}
    for model in picked:
        if not orders_as_python(model, mysql="mysql" in engines):
            raise CommandError(
                f"{model._meta.label}: its key ({type(key_field(model)).__name__}) may be "
                "ordered differently by each engine; fleet verify compares integer keys, "
                "and UUID keys where neither database is MariaDB/MySQL."
            )
    report = VerifyReport(first, second)
    for model in picked:
        report.models.append(_verify_model(model, first, second, batch_size))
    return report


def _verify_model(
    model: type[models.Model], first: str, second: str, batch_size: int
) -> ModelVerify:
    started = time.perf_counter()
    fields = [model._meta.pk, *(f for f in model._meta.local_concrete_fields if not f.primary_key)]
    names = [f.attname for f in fields]
    columns = [str(f.column) for f in fields]
    result = ModelVerify(model._meta.label, first, second)
    ours = rows_in_key_order(model, first, names, batch_size)
    theirs = rows_in_key_order(model, second, names, batch_size)
    a, b = next(ours, None), next(theirs, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[0] < b[0]):
            result.missing_count += 1
            if len(result.missing) < SHOWN:
                result.missing.append(canonical(a[0]))  # type: ignore[index]
            result.rows_first += 1
            a = next(ours, None)
        elif a is None or b[0] < a[0]:
            result.extra_count += 1
            if len(result.extra) < SHOWN:
                result.extra.append(canonical(b[0]))
            result.rows_second += 1
            b = next(theirs, None)
        else:
            _compare(result, columns, a, b)
            result.rows_first += 1
            result.rows_second += 1
            a, b = next(ours, None), next(theirs, None)
    result.seconds = time.perf_counter() - started
    return result


def _compare(
    result: ModelVerify, columns: list[str], a: tuple[Any, ...], b: tuple[Any, ...]
) -> None:
    """Record the columns where ``a`` and ``b`` differ in normal form, if any.

    Always in normal form, never by Python's ``==``, which takes ``True`` for ``1``
    inside a JSON object.
    """
    differing = [
        (column, x, y)
        for column, x, y in zip(columns, map(canonical, a), map(canonical, b), strict=True)
        if x != y
    ]
    if not differing:
        return
    result.different_count += 1
    if len(result.different) < SHOWN:
        result.different.append(
            RowDifference(
                canonical(a[0]),
                [column for column, _, _ in differing],
                [x for _, x, _ in differing],
                [y for _, _, y in differing],
            )
        )
