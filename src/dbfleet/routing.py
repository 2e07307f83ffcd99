"""``dbfleet.Router``: Django's four router questions, answered from the topology."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.db import connections, models, router

from dbfleet.conf import ANSWERS, fleet_settings, get_topology
from dbfleet.topology import owner_label, split_route_key


class Router:
    """Routes models to databases as ``DBFLEET["ROUTES"]`` says.

    Each answer is a dictionary lookup in the cached topology. ``None`` means
    "no opinion" (Django asks the next router, then uses ``default``).
    """

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str | None:
        alias = ANSWERS[model]
        if hints and alias is not None and (instance := hints.get("instance")) is not None:
            # Related objects are read where their instance was read, as in Django
            # without routers, as long as that database is in the model's group.
            db = instance._state.db
            if db is not None and db != alias and get_topology().same_group(db, alias):
                return db  # type: ignore[no-any-return]
        return alias

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str | None:
        alias = ANSWERS[model]
        if hints and alias is not None and (instance := hints.get("instance")) is not None:
            # An instance read from another primary of the group (not a replica) is
            # saved back there, as Django does without routers.
            db = instance._state.db
            topology = get_topology()
            if db is not None and db != alias and topology.same_group(db, alias):
                return alias if topology.is_replica(db) else db
        return alias

    def allow_relation(self, obj1: models.Model, obj2: models.Model, **hints: Any) -> bool:
        """Allow a relation only between objects of one group (a primary and its replicas)."""
        topology = get_topology()
        db1 = obj1._state.db or topology.database_for_model(type(obj1))
        db2 = obj2._state.db or topology.database_for_model(type(obj2))
        return topology.same_group(db1, db2)

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool:
        """Migrate a model only on its database, and never on a replica.

        Hints route operations without a model (``RunPython``, ``RunSQL``):
        ``target_db`` names the database (or a list of them), ``model`` names
        the model whose database it follows (a class or ``"app_label.Model"``).
        Without hints an operation follows its app, or ``DEFAULT_DATABASE``
        when the app's models live in more than one database.
        """
        return explain_migrate(db, app_label, model_name, **hints)[0]


def explain_migrate(
    db: str, app_label: str, model_name: str | None = None, **hints: Any
) -> tuple[bool, str]:
    """dbfleet's ``allow_migrate`` answer and the reason for it, in words."""
    topology = get_topology()
    if topology.is_replica(db):
        return False, f"{db!r} is a replica of {topology.primary_of(db)!r}"
    target_db = hints.get("target_db")
    if target_db is not None:
        allowed = db == target_db if isinstance(target_db, str) else db in target_db
        return allowed, f"hint target_db={target_db!r}"
    model = hints.get("model")
    if model is not None:
        label = model_hint_label(model)
        home = topology.database_for_label(label)
        return db == home, f"hint model={label}, which lives in {home!r}"
    if model_name is not None:
        label = f"{app_label}.{model_name}"
        home = topology.database_for_label(label)
        return db == home, f"{label} lives in {home!r} ({route_source(label)})"
    home = topology.database_for_app_operations(app_label)
    if app_label in topology.split_apps:
        return db == home, (
            f"no hints; app {app_label!r} is split across databases, so it runs on "
            f"DEFAULT_DATABASE {home!r}"
        )
    return db == home, f"no hints; app {app_label!r} lives in {home!r}"


def model_hint_label(model: Any) -> str:
    """The owner label of a ``model`` hint: a model class or ``"app_label.Model"``."""
    if isinstance(model, str):
        try:
            model = apps.get_model(model)
        except (LookupError, ValueError):
            return str(model).lower()  # Not installed (any more): route by its label.
    return owner_label(model)


def route_source(label: str) -> str:
    """The setting that places the model ``app_label.model_name``."""
    app_label, _, model_name = label.lower().partition(".")
    for key in fleet_settings().routes:
        if split_route_key(key) == (app_label, model_name):
            return f'ROUTES["{key}"]'
    if app_label in get_topology().app_routes:
        return f'ROUTES["{app_label}"]'
    return "DEFAULT_DATABASE"


def database_for(model_or_instance: type[models.Model] | models.Model, write: bool = False) -> str:
    """The database a model (or an instance) is read from, or written to with ``write=True``.

    This is Django's own answer, through every router in ``DATABASE_ROUTERS``:
    what the ORM will use for ``Model.objects`` or ``instance.save()``.
    """
    if isinstance(model_or_instance, models.Model):
        model, hints = type(model_or_instance), {"instance": model_or_instance}
    else:
        model, hints = model_or_instance, {}
    if write:
        return router.db_for_write(model, **hints)
    return router.db_for_read(model, **hints)


def relations(
    model: type[models.Model],
) -> Iterator[tuple[models.Field[Any, Any], type[models.Model]]]:
    """(field, related model) for each relation whose rows live with ``model``."""
    for field in (*model._meta.local_fields, *model._meta.local_many_to_many):
        related = field.related_model
        if not field.is_relation or not isinstance(related, type):
            continue
        if field.many_to_many and not field.remote_field.through._meta.auto_created:  # type: ignore[union-attr]
            continue  # An explicit through model holds the foreign keys and is listed itself.
        yield field, related


@dataclass(frozen=True)
class Crossing:
    """A relation from a model to one in another group."""

    field: str
    to: str
    database: str


@dataclass(frozen=True)
class Route:
    """Where one model is read, written and migrated, and why."""

    model: str
    table: str
    read: str
    write: str
    migrate: tuple[str, ...]
    decided_by: str
    crossings: tuple[Crossing, ...]


def _decided_by(model: type[models.Model], read: str) -> str:
    """Which setting (or router) decided where ``model`` lives."""
    label = owner_label(model)
    if read != get_topology().database_for_label(label):
        return "another router"
    return route_source(label)


def routes() -> list[Route]:
    """The routing table: every installed model and where Django will send it."""
    topology = get_topology()
    table = []
    for model in apps.get_models(include_auto_created=True):
        read, write = database_for(model), database_for(model, write=True)
        crossings = tuple(
            Crossing(field.name, related._meta.label, there)
            for field, related in relations(model)
            if not topology.same_group(write, there := database_for(related, write=True))
        )
        table.append(
            Route(
                model=model._meta.label,
                table=model._meta.db_table,
                read=read,
                write=write,
                migrate=tuple(
                    alias for alias in connections if router.allow_migrate_model(alias, model)
                ),
                decided_by=_decided_by(model, read),
                crossings=crossings,
            )
        )
    return sorted(table, key=lambda route: route.model)
