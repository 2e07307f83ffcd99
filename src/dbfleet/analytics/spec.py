"""What a synced model copies, read from its ``class Sync``; which models are synced.

Nothing here imports ClickHouse: system checks, ``fleet status`` and the change
capture on the source ask these questions in a project that may have no
ClickHouse database at all. The copy's fields are named here as the names of
django-clickhouse-backend's field classes, which ``dbfleet.analytics.models``
turns into fields.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.db import models
from django.utils.module_loading import module_has_submodule

#: The copy's column that orders the versions of a row (``ReplacingMergeTree(version)``).
VERSION = "sync_version"
#: The copy's column that marks a row deleted in the source (1: deleted).
DELETED = "sync_deleted"
#: Where each synced model keeps what it copies.
ATTRIBUTE = "_dbfleet_sync"

#: Django's field type (``get_internal_type()``) -> the ClickHouse field that holds its values.
#: Dates and times take the 1900-2299 types (Date32, DateTime64): ClickHouse's Date and
#: DateTime end in 2106 and 2149 and silently wrap what is beyond.
TYPES = {
    "AutoField": "Int32Field",
    "BigAutoField": "Int64Field",
    "SmallAutoField": "Int16Field",
    "IntegerField": "Int32Field",
    "BigIntegerField": "Int64Field",
    "SmallIntegerField": "Int16Field",
    "PositiveIntegerField": "UInt32Field",
    "PositiveBigIntegerField": "UInt64Field",
    "PositiveSmallIntegerField": "UInt16Field",
    "BooleanField": "BoolField",
    "CharField": "StringField",
    "TextField": "StringField",
    "SlugField": "StringField",
    "FilePathField": "StringField",
    "FileField": "StringField",
    "FloatField": "Float64Field",
    "DecimalField": "DecimalField",
    "DateField": "Date32Field",
    "DateTimeField": "DateTime64Field",
    "UUIDField": "UUIDField",
}


@dataclass(frozen=True)
class Column:
    """One field of the copy: the ClickHouse field that holds one source field's values."""

    #: The field's name on the copy: the source field's column name (``customer_id``).
    name: str
    #: The source field's ``attname``, to read its values with.
    source: str
    #: The class in ``clickhouse_backend.models`` (None: the copy declares this field itself).
    kind: str | None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Unmapped:
    """A source field the copy cannot hold: it has no ClickHouse type here."""

    field: str
    type: str


@dataclass(frozen=True)
class SyncSpec:
    """What a synced model copies: its source, the fields, and what could not be mapped."""

    #: The source as ``Sync.source`` names it (a label, or the model's label).
    source_label: str
    #: The source model; None when ``problem`` says why it was not found.
    source: type[models.Model] | None
    columns: tuple[Column, ...] = ()
    #: The name on the copy of the source's primary key.
    pk: str | None = None
    unmapped: tuple[Unmapped, ...] = ()
    #: Names in ``Sync.fields`` that are not fields of the source.
    unknown: tuple[str, ...] = ()
    problem: str = ""


def column_name(source: models.Field[Any, Any]) -> str:
    """The name of a source field on the copy: its attname (``customer_id`` for a foreign key)."""
    return source.attname


def clickhouse_type(source: models.Field[Any, Any]) -> tuple[str, dict[str, Any]] | None:
    """(field class, options) of the ClickHouse field for ``source``'s values, or None."""
    target = source
    # A foreign key's column holds its target's key (of the target's type, not auto).
    while target.is_relation:
        following = getattr(target, "target_field", None)
        if following is None or following is target:  # pragma: no cover  (not a foreign key)
            return None
        target = following
    kind = TYPES.get(target.get_internal_type())
    if kind is None:
        return None
    options: dict[str, Any] = {}
    if source.null and not source.primary_key:
        options["null"] = True
    if kind == "DecimalField":
        options["max_digits"] = target.max_digits  # type: ignore[attr-defined]
        options["decimal_places"] = target.decimal_places  # type: ignore[attr-defined]
    if kind == "DateTime64Field":
        options["precision"] = 6
    if source.primary_key:
        options["primary_key"] = True
    return kind, options


def resolve(source: object) -> tuple[type[models.Model] | None, str, str]:
    """(the model, its label, why it is not found) of ``Sync.source``: a label or a model.

    Called while the models are loading: the source's app is imported first if
    it has not been yet (its models must exist before their copy's fields can).
    """
    if isinstance(source, type) and issubclass(source, models.Model):
        return source, source._meta.label, ""
    if not isinstance(source, str) or source.count(".") != 1:
        return None, repr(source), 'it is not a model or an "app_label.ModelName" label'
    app_label, name = source.split(".")
    try:
        config = apps.get_app_config(app_label)
    except LookupError:
        return None, source, f"no installed app has the label {app_label!r}"
    if module_has_submodule(config.module, "models"):
        importlib.import_module(f"{config.name}.models")
    try:
        return apps.get_registered_model(app_label, name), source, ""
    except LookupError:
        return None, source, f"app {app_label!r} has no model {name!r}"


def read_sync(sync: type | None, declared: Sequence[str]) -> SyncSpec:
    """The spec of a synced model from its ``class Sync`` and the fields it declares itself."""
    if sync is None or not hasattr(sync, "source"):
        return SyncSpec("", None, problem="it has no `class Sync` with a `source`")
    model, label, problem = resolve(sync.source)
    if model is None:
        return SyncSpec(label, None, problem=problem)
    meta = model._meta
    wanted = getattr(sync, "fields", None)
    concrete = list(meta.concrete_fields)
    if wanted is None:
        chosen = concrete
        unknown: tuple[str, ...] = ()
    else:
        by_name = {f.name: f for f in concrete} | {f.attname: f for f in concrete}
        unknown = tuple(name for name in wanted if name not in by_name)
        picked = {by_name[name].attname for name in wanted if name in by_name}
        # The primary key always: it orders the copy and names each row.
        chosen = [f for f in concrete if f.attname in picked or f.primary_key]
    columns, unmapped = [], []
    for source in chosen:
        name = column_name(source)
        if name in declared:
            columns.append(Column(name, source.attname, None))
            continue
        found = clickhouse_type(source)
        if found is None:
            unmapped.append(Unmapped(source.name, type(source).__name__))
            continue
        columns.append(Column(name, source.attname, *found))
    return SyncSpec(
        label,
        model,
        tuple(columns),
        column_name(meta.pk) if meta.pk is not None else None,
        tuple(unmapped),
        unknown,
    )


def spec_of(model: type[models.Model]) -> SyncSpec | None:
    """The spec of ``model`` if it is a synced model, else None."""
    spec = model.__dict__.get(ATTRIBUTE)
    return spec if isinstance(spec, SyncSpec) else None


def synced_models() -> list[type[models.Model]]:
    """Every installed synced model, in the order of the app registry."""
    return [model for model in apps.get_models() if spec_of(model) is not None]


def copies_by_source() -> dict[type[models.Model], list[type[models.Model]]]:
    """Each source model -> its synced models (those whose source was found)."""
    found: dict[type[models.Model], list[type[models.Model]]] = {}
    for model in synced_models():
        spec = spec_of(model)
        if spec is not None and spec.source is not None:
            found.setdefault(spec.source, []).append(model)
    return found
