"""``fleet dump`` / ``fleet load``: fixtures, each model read from and written to its database.

Django's ``dumpdata`` reads every model from one database (``--database``) and skips
the models not migrated there; ``loaddata`` writes every object to one database and
skips the same. Here each model is read where its rows are (the database it is
routed to; every shard of a sharded model; the first copy of a reference model)
and each object is written where it belongs (its route; its key's shard; every
copy), in the formats and through the serializers Django has.

``dump`` streams: the serializer takes one object at a time, read in batches.
``load`` writes every object inside one ``dbfleet.atomic`` over the databases the
project writes to, with constraint checks deferred where the engine allows it and
run at the end, as ``loaddata`` does; sequences are then set past the loaded ids.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from django.apps import apps
from django.core import serializers
from django.core.management.base import CommandError
from django.core.management.color import no_style
from django.db import DatabaseError, connections, models, router

from dbfleet.conf import get_topology
from dbfleet.moving.copy import chosen, in_dependency_order
from dbfleet.sharding.slots import database_of, shard_key
from dbfleet.transactions import atomic

#: Rows read at a time by ``dump``.
CHUNK = 2_000
#: Fixture formats by file extension (Django's names).
FORMATS = {".json": "json", ".jsonl": "jsonl", ".xml": "xml", ".yaml": "yaml", ".yml": "yaml"}


@dataclass
class FixtureReport:
    #: (model label, database) -> objects dumped or loaded.
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def everything() -> list[type[models.Model]]:
    """Every model with a table of its own, of every installed app, but those on a database
    without transactions (ClickHouse: synced models are copies, ``fleet sync`` makes them)."""
    labels = [config.label for config in apps.get_app_configs() if config.models_module]
    return [
        model
        for model in chosen(labels, by_key=False)
        if all(connections[alias].features.supports_transactions for alias in homes(model))
    ]


def homes(model: type[models.Model]) -> list[str]:
    """Where ``model``'s rows are: every shard, a reference model's first copy, or its route."""
    group = get_topology().shard_group_for(model)
    if group is not None:
        return list(group.databases) if shard_key(model) is not None else [group.databases[0]]
    return [router.db_for_write(model)]


def targets(instance: models.Model) -> list[str]:
    """Where ``instance`` is written: its key's shard, every copy, or its route."""
    model = type(instance)
    group = get_topology().shard_group_for(model)
    if group is None:
        return [router.db_for_write(model, instance=instance)]
    return [database_of(instance)] if shard_key(model) is not None else list(group.databases)


def dump(
    labels: Sequence[str], stream: IO[str], format: str = "json", indent: int | None = None
) -> FixtureReport:
    """Serialize the models ``labels`` name (every model without) to ``stream``."""
    if format not in serializers.get_public_serializer_formats():
        raise CommandError(
            f"Unknown format {format!r}; Django has: "
            f"{', '.join(serializers.get_public_serializer_formats())}."
        )
    picked = in_dependency_order(chosen(labels, by_key=False) if labels else everything())
    picked = [model for model in picked if not model._meta.auto_created]  # With their owner.
    report = FixtureReport()

    def objects() -> Iterator[models.Model]:
        for model in picked:
            for alias in homes(model):
                found = model._base_manager.using(alias).order_by(model._meta.pk.name)
                count = 0
                for instance in found.iterator(chunk_size=CHUNK):
                    count += 1
                    yield instance
                report.counts[(model._meta.label, alias)] = count

    serializer = _exact(serializers.get_serializer(format))()
    serializer.serialize(objects(), stream=stream, indent=indent)
    return report


def _exact(base: Any) -> Any:
    """``base``, writing times to the microsecond (Django's JSON encoder stops at the ms)."""
    if not hasattr(base, "_value_from_field"):  # XML: every value as its field's text.
        return base

    class Exact(base):  # type: ignore[misc]
        def _value_from_field(self, obj: models.Model, field: models.Field[Any, Any]) -> Any:
            value = field.value_from_object(obj)
            if isinstance(value, datetime.datetime | datetime.time):
                return value.isoformat()
            return super()._value_from_field(obj, field)

    return Exact


def databases() -> list[str]:
    """Every transactional database the project's models are written to."""
    found: dict[str, None] = {}
    for model in everything():
        group = get_topology().shard_group_for(model)
        found.update(dict.fromkeys(group.databases if group else [router.db_for_write(model)]))
    return [alias for alias in found if connections[alias].features.supports_transactions]


def load(paths: Sequence[str]) -> FixtureReport:
    """Write every object of the fixtures at ``paths`` where it belongs, all or nothing."""
    for path in paths:
        if not os.path.isfile(path):
            raise CommandError(f"No fixture file {path!r} (fleet load takes paths).")
        if os.path.splitext(path)[1] not in FORMATS:
            raise CommandError(
                f"{path!r}: the format is known by the extension: {', '.join(FORMATS)}."
            )
    report = FixtureReport()
    aliases = databases()
    loaded: dict[str, set[type[models.Model]]] = {}
    with atomic(*aliases):
        disabled = [alias for alias in aliases if connections[alias].disable_constraint_checking()]
        try:
            for path in paths:
                with open(path, encoding="utf-8") as stream:
                    _load_one(path, stream, report, loaded)
        finally:
            for alias in disabled:
                connections[alias].enable_constraint_checking()
        for alias, written in loaded.items():
            connection = connections[alias]
            tables = [m._meta.db_table for m in written]
            tables += [  # Their many-to-many rows too.
                field.remote_field.through._meta.db_table  # type: ignore[union-attr]
                for model in written
                for field in model._meta.local_many_to_many
                if field.remote_field.through._meta.auto_created  # type: ignore[union-attr]
            ]
            try:
                connection.check_constraints(table_names=tables)
            except DatabaseError as error:
                raise CommandError(
                    f"Nothing was loaded: on {alias!r} the fixtures' rows break a constraint "
                    f"({error})."
                ) from error
            with connection.cursor() as cursor:
                for sql in connection.ops.sequence_reset_sql(no_style(), list(written)):
                    cursor.execute(sql)
    return report


def _load_one(
    path: str,
    stream: Iterable[str],
    report: FixtureReport,
    loaded: dict[str, set[type[models.Model]]],
) -> None:
    format = FORMATS[os.path.splitext(path)[1]]
    deferred: list[tuple[Any, list[str]]] = []
    try:
        for item in serializers.deserialize(format, stream, handle_forward_references=True):
            where = targets(item.object)
            many = item.m2m_data  # Django's save() clears it: each copy gets its own.
            for alias in where:
                item.m2m_data = many
                item.save(using=alias)
                key = (item.object._meta.label, alias)
                report.counts[key] = report.counts.get(key, 0) + 1
                loaded.setdefault(alias, set()).add(type(item.object))
            if item.deferred_fields:
                deferred.append((item, where))
        for item, where in deferred:
            for alias in where:
                item.save_deferred_fields(using=alias)
    except serializers.base.DeserializationError as error:
        raise CommandError(f"Nothing was loaded: {path!r} cannot be read: {error}") from None
