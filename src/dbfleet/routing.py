"""``dbfleet.Router``: Django's four router questions, answered from the topology."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.db import connections, models, router

from dbfleet.conf import ANSWERS, clears_on_reset, get_topology
from dbfleet.replicas.choice import READS
from dbfleet.replicas.scopes import use_primary
from dbfleet.sharding.slots import database_of, refuse_key_change, shard_key
from dbfleet.topology import owner_label


class Router:
    """Routes models to databases as ``DBFLEET["ROUTES"]`` says.

    Each answer is a dictionary lookup in the cached topology. ``None`` means
    "no opinion" (Django asks the next router, then uses ``default``).
    """

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str | None:
        alias = ANSWERS[model]
        if alias in SHARDED:
            # A related object lives on the shard its instance came from.
            instance = hints.get("instance")
            shard: str | None = instance._state.db if instance is not None else None
            return shard if shard in SHARDED else alias
        reads = READS[alias]
        if reads is None:
            return alias
        if hints:
            # Related objects are read where their instance was read, as in Django
            # without routers, as long as that database is in the model's group.
            instance = hints.get("instance")
            db: str | None = instance._state.db if instance is not None else None
            if db is not None and get_topology().same_group(db, reads.primary):
                return reads.read_bound(db)
        return reads.read()

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str | None:
        instance = hints.get("instance") if hints else None
        db: str | None = instance._state.db if instance is not None else None
        if ANSWERS[model] in SHARDED:
            return _shard_for_write(model, instance)
        topology = get_topology()
        if db is not None and topology.is_replica(db):
            return topology.primary_of(db)  # Read from a replica: saved to its primary.
        return ANSWERS[model]

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
        topology = get_topology()
        if topology.is_replica(db):
            return False
        home = migrate_home(app_label, model_name, **hints)[0]
        return db == home if isinstance(home, str) else db in home


class _ShardDatabases:
    """``alias in SHARDED``: whether ``alias`` is a database of a shard group (cached)."""

    def __init__(self) -> None:
        self.aliases: frozenset[str] | None = None

    def __contains__(self, alias: object) -> bool:
        if self.aliases is None:
            self.aliases = get_topology().shard_databases
        return alias in self.aliases

    def clear(self) -> None:
        self.aliases = None


SHARDED = _ShardDatabases()
clears_on_reset(SHARDED.clear)


def _shard_for_write(model: type[models.Model], instance: models.Model | None) -> str | None:
    """Where an instance of a sharded model is written: its key's shard (a copy: its own)."""
    if instance is None:
        return None  # The sharded queryset passes using= itself.
    if shard_key(model) is None:
        # A reference model: the copy it was read from, else the group's first.
        return instance._state.db or ANSWERS[model]
    if type(instance) is model:  # Not a related instance's hint (a related manager's add()).
        refuse_key_change(instance)
    elif shard_key(type(instance)) is None:
        return None  # A reference row assigned to a relation: the key decides, not it.
    return database_of(instance)


def migrate_home(
    app_label: str, model_name: str | None = None, **hints: Any
) -> tuple[Any, str, str]:
    """(where an operation migrates, the rule that says so, its subject).

    The rule is ``"target_db"`` (where: the hint's alias or aliases), ``"model"``
    (a model hint; subject: its label), ``"model_name"`` (the operation's model),
    ``"split"`` or ``"app"`` (an unhinted operation; subject: the app label).
    """
    topology = get_topology()
    target_db = hints.get("target_db")
    if target_db is not None:
        return target_db, "target_db", ""
    model = hints.get("model")
    if model is not None:
        label = model_hint_label(model)
        return _home_of_label(label), "model", label
    if model_name is not None:
        label = f"{app_label}.{model_name}"
        return _home_of_label(label), "model_name", label
    rule = "split" if app_label in topology.split_apps else "app"
    return topology.database_for_app_operations(app_label), rule, app_label


def _home_of_label(label: str) -> str | tuple[str, ...]:
    """Where the model ``label`` migrates: its database, or every database of its shard group."""
    topology = get_topology()
    group = topology.shard_group_of.get(label.lower())
    return group.databases if group is not None else topology.database_for_label(label)


def explain_migrate(
    db: str, app_label: str, model_name: str | None = None, **hints: Any
) -> tuple[bool, str]:
    """dbfleet's ``allow_migrate`` answer and the reason for it, in words."""
    topology = get_topology()
    if topology.is_replica(db):
        return False, f"{db!r} is a replica of {topology.primary_of(db)!r}"
    home, rule, subject = migrate_home(app_label, model_name, **hints)
    allowed = db == home if isinstance(home, str) else db in home
    reason = {
        "target_db": f"hint target_db={home!r}",
        "model": f"hint model={subject}, which lives in {home!r}",
        "model_name": f"{subject} lives in {home!r} ({route_source(subject)})"
        if isinstance(home, str)
        else f"{subject} is spread over {home!r} ({route_source(subject)})",
        "split": f"no hints; app {subject!r} is split across databases, so it runs on "
        f"DEFAULT_DATABASE {home!r}",
        "app": f"no hints; app {subject!r} lives in {home!r}",
    }[rule]
    return allowed, reason


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
    topology = get_topology()
    group = topology.shard_group_of.get(label.lower())
    if group is not None:
        return f'SHARDS["{group.name}"]'
    route_keys = topology.route_keys
    key = route_keys.get(label.lower()) or route_keys.get(label.partition(".")[0])
    return f'ROUTES["{key}"]' if key else "DEFAULT_DATABASE"


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
class ShardPlacement:
    """The shard group of a sharded or reference model."""

    group: str
    #: The key field, as ``DBFLEET["SHARDS"]`` names it; None for a reference model
    #: (a full copy on every database of the group).
    key: str | None
    databases: tuple[str, ...]


@dataclass(frozen=True)
class Route:
    """Where one model is read, written and migrated, and why."""

    model: str
    table: str
    #: Where reads go without replicas (or pinned to the primary).
    read: str
    #: The replicas that serve the reads, when the model's group has some.
    read_replicas: tuple[str, ...]
    write: str
    migrate: tuple[str, ...]
    decided_by: str
    crossings: tuple[Crossing, ...]
    #: Its shard group, for a sharded or reference model: its rows are on the group's
    #: databases (``read`` and ``write`` are only where a query without a key is planned).
    shard: ShardPlacement | None = None


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
        with use_primary():
            read = database_for(model)
        write = database_for(model, write=True)
        decided_by = _decided_by(model, read)
        group = topology.groups.get(read)
        replicas = (
            tuple(replica.alias for replica in group.replicas)
            if group is not None and decided_by != "another router"
            else ()
        )
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
                read_replicas=replicas,
                write=write,
                migrate=tuple(
                    alias for alias in connections if router.allow_migrate_model(alias, model)
                ),
                decided_by=decided_by,
                crossings=crossings,
                shard=_placement(model),
            )
        )
    return sorted(table, key=lambda route: route.model)


def _placement(model: type[models.Model]) -> ShardPlacement | None:
    label = owner_label(model)
    group = get_topology().shard_group_of.get(label)
    if group is None:
        return None
    return ShardPlacement(group.name, group.keys.get(label), group.databases)
