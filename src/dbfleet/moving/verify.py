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
from django.db.models import Q

from dbfleet.moving.copy import chosen
from dbfleet.values import canonical, compared_field, orders_as_python

#: Rows read at a time from each side.
BATCH_SIZE = 10_000
#: Keys listed of each kind of difference (all are counted).
SHOWN = 20


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


def key_names(model: type[models.Model], by_pk: bool = False) -> list[str]:
    """What identifies a row: its key; for a many-to-many table, the pair it links (the ids
    of its rows are arbitrary: a fixture gives them anew), unless ``by_pk``."""
    meta = model._meta
    if meta.auto_created and not by_pk:
        return [field.attname for field in meta.local_concrete_fields if field.is_relation]
    return [meta.pk.attname]


def rows_in_key_order(
    model: type[models.Model],
    alias: str,
    keys: Sequence[str],
    names: Sequence[str],
    batch_size: int,
) -> Iterator[tuple[Any, ...]]:
    """``model``'s rows on ``alias`` as tuples of ``keys`` then ``names``, in key order."""
    ordered = model._base_manager.using(alias).order_by(*keys).values_list(*keys, *names)
    after: Q | None = None
    while True:
        batch = list((ordered if after is None else ordered.filter(after))[:batch_size])
        yield from batch
        if len(batch) < batch_size:
            return
        # After the last row's key (keys compared in order, as a tuple).
        last = batch[-1]
        after = Q()
        for index in reversed(range(len(keys))):
            step = Q(**{f"{keys[index]}__gt": last[index]})
            after = (
                step if index == len(keys) - 1 else step | (Q(**{keys[index]: last[index]}) & after)
            )


def verify_models(
    labels: Sequence[str],
    first: str,
    second: str,
    *,
    batch_size: int = BATCH_SIZE,
    by_pk: bool = False,
    shown: int | None = SHOWN,
) -> VerifyReport:
    """Compare the rows of the models ``labels`` name on ``first`` and on ``second``.

    ``by_pk``: rows of many-to-many tables too are matched by their key (a copy keeps
    it). ``shown``: how many keys of each kind of difference are kept (None: all).
    """
    if first == second:
        raise CommandError(f"--between names {first!r} twice: name two databases.")
    for alias in (first, second):
        if alias not in connections:
            raise CommandError(f"No database {alias!r}; the aliases: {', '.join(connections)}.")
    picked = chosen(labels)
    comparable(picked, first, second)
    report = VerifyReport(first, second)
    for model in picked:
        report.models.append(_verify_model(model, first, second, batch_size, by_pk, shown))
    return report


def comparable(picked: Sequence[type[models.Model]], first: str, second: str) -> None:
    """CommandError unless both engines order the keys of ``picked`` as Python does."""
    engines = {connections[alias].vendor for alias in (first, second)}
    for model in picked:
        if not orders_as_python(model._meta.pk, mysql="mysql" in engines):
            key = type(compared_field(model._meta.pk)).__name__
            raise CommandError(
                f"{model._meta.label}: its key ({key}) may be "
                "ordered differently by each engine; fleet verify compares integer keys, "
                "and UUID keys where neither database is MariaDB/MySQL."
            )


def _verify_model(
    model: type[models.Model],
    first: str,
    second: str,
    batch_size: int,
    by_pk: bool,
    shown: int | None,
) -> ModelVerify:
    started = time.perf_counter()
    keys = key_names(model, by_pk)
    kept = float("inf") if shown is None else shown
    fields = [
        f
        for f in model._meta.local_concrete_fields
        if f.attname not in keys and not (model._meta.auto_created and f.primary_key)
    ]
    names = [f.attname for f in fields]
    columns = [*keys, *(str(f.column) for f in fields)]
    width = len(keys)
    loose = [width + i for i, f in enumerate(fields) if isinstance(f, models.JSONField)]
    result = ModelVerify(model._meta.label, first, second)
    ours = rows_in_key_order(model, first, keys, names, batch_size)
    theirs = rows_in_key_order(model, second, keys, names, batch_size)
    a, b = next(ours, None), next(theirs, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[:width] < b[:width]):
            result.missing_count += 1
            if len(result.missing) < kept:
                result.missing.append(_shown(a, width))  # type: ignore[arg-type]
            result.rows_first += 1
            a = next(ours, None)
        elif a is None or b[:width] < a[:width]:
            result.extra_count += 1
            if len(result.extra) < kept:
                result.extra.append(_shown(b, width))
            result.rows_second += 1
            b = next(theirs, None)
        else:
            # Python's == is exact for one field type on both sides, but for JSON (where it
            # takes true for 1): those are compared in normal form.
            if a != b or any(canonical(a[i]) != canonical(b[i]) for i in loose):
                _compare(result, columns, a, b, width, kept)
            result.rows_first += 1
            result.rows_second += 1
            a, b = next(ours, None), next(theirs, None)
    result.seconds = time.perf_counter() - started
    return result


def _shown(row: tuple[Any, ...], width: int) -> Any:
    """A row's key as reported: its value, or for a pair, a list of both."""
    return canonical(row[0]) if width == 1 else [canonical(value) for value in row[:width]]


def _compare(
    result: ModelVerify,
    columns: list[str],
    a: tuple[Any, ...],
    b: tuple[Any, ...],
    width: int,
    kept: float,
) -> None:
    """Record the columns where ``a`` and ``b`` differ in normal form, if any."""
    differing = [
        (column, x, y)
        for column, x, y in zip(columns, map(canonical, a), map(canonical, b), strict=True)
        if x != y
    ]
    if not differing:
        return
    result.different_count += 1
    if len(result.different) < kept:
        result.different.append(
            RowDifference(
                _shown(a, width),
                [column for column, _, _ in differing],
                [x for _, x, _ in differing],
                [y for _, _, y in differing],
            )
        )
