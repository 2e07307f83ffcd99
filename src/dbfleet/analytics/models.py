"""``SyncedModel``: a ClickHouse copy of a model that lives in a transactional database.

::

    class OrderFact(SyncedModel):
        class Sync:
            source = "shop.Order"            # or the model; fields = [...] for a subset

The copy gets the source's fields (by name, each with a ClickHouse type; a field
the copy declares itself is kept as declared), a version column and a deleted
flag, and a ``ReplacingMergeTree(sync_version, sync_deleted)`` ordered by the
source's primary key: a row written again with the same version changes
nothing, and the latest version of each key is the row. ``objects.live()``
reads exactly those, undeleted (``FINAL``).

Importing this module loads django-clickhouse-backend.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

from clickhouse_backend import models as ch
from clickhouse_backend.models.base import ClickhouseManager
from clickhouse_backend.models.query import QuerySet as ClickhouseQuerySet
from django.apps.registry import Apps
from django.db.models.base import ModelBase

from dbfleet.analytics.spec import ATTRIBUTE, DELETED, VERSION, SyncSpec, read_sync


class SyncedQuerySet(ClickhouseQuerySet):  # type: ignore[misc]
    """The rows of a synced model: every version of each, unless ``live()``."""

    def live(self) -> SyncedQuerySet:
        """The latest version of each row, where the source has not deleted it.

        ``FINAL`` (the ``final`` setting, for every table of the query): ClickHouse
        merges each key's versions as it reads, and the query's WHERE applies to
        the merged rows, so a filter never finds an older version. It stays a
        QuerySet of the model (filters, ``values()``, aggregates and ``annotate``
        compose), which ``argMax(column, version) ... GROUP BY key`` would not.
        """
        live: SyncedQuerySet = self.settings(final=1).filter(**{DELETED: 0})
        return live


class SyncedManager(ClickhouseManager.from_queryset(SyncedQuerySet)):  # type: ignore[misc]
    """``objects`` of a synced model: ``objects.live()`` is the copy as the source has it."""


def _field(kind: str, options: dict[str, Any]) -> Any:
    return getattr(ch, kind)(**options)


class SyncedModelBase(ModelBase):
    """Builds a synced model's fields and engine from its ``class Sync`` (see the module)."""

    def __new__(
        mcs, name: str, bases: tuple[type, ...], attrs: dict[str, Any], **kwargs: Any
    ) -> SyncedModelBase:
        meta = attrs.get("Meta")
        if getattr(meta, "abstract", False):
            return cast(SyncedModelBase, super().__new__(mcs, name, bases, attrs, **kwargs))
        spec = read_sync(attrs.pop("Sync", None), declared=tuple(attrs))
        for column in spec.columns:
            if column.kind is not None:
                attrs[column.name] = _field(column.kind, column.options)
        attrs.setdefault(VERSION, ch.UInt64Field(default=0, editable=False))
        attrs.setdefault(DELETED, ch.UInt8Field(default=0, editable=False))
        options: dict[str, Any] = {}
        if not hasattr(meta, "base_manager_name"):
            options["base_manager_name"] = "_overwrite_base_manager"  # ClickhouseModel's
        if not hasattr(meta, "engine"):
            options["engine"] = ch.ReplacingMergeTree(VERSION, DELETED, order_by=(spec.pk or "id",))
        attrs["Meta"] = type("Meta", (meta,) if meta is not None else (), options)
        model = cast(SyncedModelBase, super().__new__(mcs, name, bases, attrs, **kwargs))
        setattr(model, ATTRIBUTE, spec)
        return model


class SyncedModel(ch.ClickhouseModel, metaclass=SyncedModelBase):  # type: ignore[misc]
    """A ClickHouse copy of the model ``Sync.source`` names, kept by ``manage.py fleet sync``."""

    objects = SyncedManager()

    _dbfleet_sync: ClassVar[SyncSpec]

    class Meta:
        abstract = True


# --- The state of each copy's sync, kept beside the copy -------------------------------------

#: A registry of its own: the state table is dbfleet's bookkeeping, not a model of the
#: project (no migration makes it; ``ensure_state_table`` does, as Django's own
#: ``django_migrations`` is made).
STATE_APPS = Apps()


class SyncState(ch.ClickhouseModel):  # type: ignore[misc]
    """One synced model's sync: its versions, whether it is loaded, its lag and last error."""

    #: The synced model's label (``app_label.modelname``).
    model = ch.StringField(primary_key=True)
    #: Every version up to this one may have been written: the next sync writes above it.
    version = ch.UInt64Field(default=0)
    #: 1 once a full load has completed (0 while one is due, or running).
    loaded = ch.UInt8Field(default=0)
    #: When the last sync ended (Unix seconds; 0: never).
    synced_at = ch.Float64Field(default=0)
    #: Seconds from the oldest change the last sync copied being logged to the copy having it.
    lag = ch.Float64Field(default=0)
    #: Rows (and deletions) the last sync wrote.
    copied = ch.UInt64Field(default=0)
    #: The last sync's error ("" once a sync succeeds), and when it happened.
    error = ch.StringField(default="")
    error_at = ch.Float64Field(default=0)
    #: This row's own version (the state is replaced by the row with the highest).
    updated = ch.UInt64Field(default=0)

    class Meta:
        apps = STATE_APPS
        app_label = "dbfleet"
        db_table = "dbfleet_sync_state"
        engine = ch.ReplacingMergeTree("updated", order_by=("model",))
