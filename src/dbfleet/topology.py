"""The fleet as plain data: databases, groups and routes, with pure lookups.

Nothing here opens a connection or reads a setting: ``conf`` builds a
``Topology`` from the settings and the app registry, and everything else asks
it questions. Lookups that run on every query are single dictionary reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from django.db import DEFAULT_DB_ALIAS


@dataclass(frozen=True)
class Replica:
    alias: str
    weight: int = 1


@dataclass(frozen=True)
class Group:
    """A primary database and the replicas that copy it."""

    primary: str
    replicas: tuple[Replica, ...] = ()

    @property
    def members(self) -> tuple[str, ...]:
        return (self.primary, *(replica.alias for replica in self.replicas))


@dataclass(frozen=True)
class ShardGroup:
    """Databases of one engine that share a model's rows by key (``DBFLEET["SHARDS"]``).

    A key's slot (``0 <= slot < slots``) lives on ``databases[slot * len(databases) //
    slots]``: contiguous, equal ranges of slots per database, in the order listed.
    """

    name: str
    databases: tuple[str, ...]
    #: ``app_label.model_name`` (lower case) -> the name of its key field, as written.
    keys: Mapping[str, str]
    #: Models copied whole to every database of the group (lower-case labels).
    reference: frozenset[str]
    slots: int
    #: Whether writes to reference models commit with two-phase commit.
    two_phase: bool = False

    def database_for_slot(self, slot: int) -> str:
        """The database that holds ``slot``."""
        return self.databases[slot * len(self.databases) // self.slots]

    def slots_of(self, alias: str) -> range:
        """The slots ``alias`` holds (empty if it is not in the group)."""
        if alias not in self.databases:
            return range(0)
        index, count = self.databases.index(alias), len(self.databases)
        # The smallest slot s with s * count // slots == index, and the next one's.
        return range(-(-index * self.slots // count), -(-(index + 1) * self.slots // count))


def split_route_key(key: str) -> tuple[str, str | None]:
    """Split a ROUTES key into (app_label, lowercased model name or None)."""
    app_label, _, model_name = key.partition(".")
    return app_label, (model_name.lower() or None)


class _LabelTable(dict[str, str | None]):
    """``label_lower -> router answer``, filled on first use.

    Historical models (migrations) and models registered after the build are
    looked up by label, so they route exactly like the installed model.
    """

    def __init__(self, topology: Topology) -> None:
        super().__init__()
        self._topology = topology

    def __missing__(self, label: str) -> str | None:
        app_label, _, model_name = label.partition(".")
        topology = self._topology
        group = topology.shard_group_of.get(label)
        if group is not None:
            # Where a query without a key is planned; the sharded queryset routes itself.
            alias: str | None = group.databases[0]
        else:
            alias = topology.route_for(app_label, model_name) or topology.unrouted_answer
        self[label] = alias
        return alias


class _ModelTable(dict[type, str | None]):
    """``model class -> alias`` for installed models; other classes go by label.

    Classes that were not present at build time are not stored: migrations make
    new historical classes on every state render and keeping them alive would
    keep whole app registries alive.
    """

    def __init__(self, labels: _LabelTable) -> None:
        super().__init__()
        self._labels = labels

    def __missing__(self, model: type) -> str | None:
        return self._labels[owner_label(model)]


def owner_label(model: Any) -> str:
    """The label of the model whose table ``model`` reads and writes.

    A proxy shares its concrete model's table and an auto-created many-to-many
    through model lives with the model that declares the field.
    """
    opts = model._meta
    if opts.auto_created:  # False, or the model that declares the many-to-many field.
        opts = opts.auto_created._meta
    label: str = opts.concrete_model._meta.label_lower
    return label


@dataclass(frozen=True, eq=False)
class Topology:
    """Databases, groups and routes; built once per settings change.

    ``models`` and ``labels`` map a model to the router's answer for it: its
    route, else ``unrouted_answer``.
    """

    databases: tuple[str, ...]
    default_database: str
    model_routes: Mapping[str, str]
    app_routes: Mapping[str, str]
    #: ``"app_label.model_name"`` or ``"app_label"`` -> the ROUTES key as written.
    route_keys: Mapping[str, str]
    groups: Mapping[str, Group]
    group_of: Mapping[str, str]
    #: Where unhinted migration operations of each known app run.
    app_operations: Mapping[str, str]
    #: Apps whose models live in more than one database.
    split_apps: frozenset[str]
    #: What the router answers for an unrouted model: no opinion (None) while
    #: ``DEFAULT_DATABASE`` is Django's own default, else that database.
    unrouted_answer: str | None
    shard_groups: Mapping[str, ShardGroup] = field(default_factory=dict)
    #: ``app_label.model_name`` of each sharded or reference model -> its group.
    shard_group_of: Mapping[str, ShardGroup] = field(default_factory=dict)
    labels: _LabelTable = field(init=False, repr=False)
    models: _ModelTable = field(init=False, repr=False)

    def __post_init__(self) -> None:
        labels = _LabelTable(self)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "models", _ModelTable(labels))

    @classmethod
    def build(
        cls,
        *,
        databases: Iterable[str],
        default_database: str,
        routes: Mapping[str, str],
        replicas: Mapping[str, Iterable[Replica]],
        models: Iterable[Any] = (),
        shard_groups: Iterable[ShardGroup] = (),
    ) -> Topology:
        """Build a topology; ``models`` are the installed model classes."""
        databases = tuple(databases)
        model_routes: dict[str, str] = {}
        app_routes: dict[str, str] = {}
        route_keys: dict[str, str] = {}
        for key, alias in routes.items():
            app_label, model_name = split_route_key(key)
            if model_name is None:
                app_routes[app_label] = alias
                route_keys[app_label] = key
            else:
                model_routes[f"{app_label}.{model_name}"] = alias
                route_keys[f"{app_label}.{model_name}"] = key

        replica_groups = {
            primary: Group(primary, tuple(found)) for primary, found in replicas.items()
        }
        group_of = {alias: alias for alias in databases}
        for group in replica_groups.values():
            group_of.update(dict.fromkeys(group.members, group.primary))
        groups = {
            alias: replica_groups.get(alias, Group(alias))
            for alias, primary in group_of.items()
            if alias == primary
        }

        shard_groups = tuple(shard_groups)
        shard_group_of = {
            label: group for group in shard_groups for label in (*group.keys, *group.reference)
        }
        topology = cls(
            databases=databases,
            default_database=default_database,
            model_routes=MappingProxyType(model_routes),
            app_routes=MappingProxyType(app_routes),
            route_keys=MappingProxyType(route_keys),
            groups=MappingProxyType(groups),
            group_of=MappingProxyType(group_of),
            app_operations=MappingProxyType({}),
            split_apps=frozenset(),
            unrouted_answer=None if default_database == DEFAULT_DB_ALIAS else default_database,
            shard_groups=MappingProxyType({group.name: group for group in shard_groups}),
            shard_group_of=MappingProxyType(shard_group_of),
        )
        homes: dict[str, set[str]] = {}
        for model in models:
            label = owner_label(model)
            topology.models[model] = topology.labels[label]
            homes.setdefault(model._meta.app_label, set()).add(topology.database_for_label(label))
        for app_label, alias in app_routes.items():
            homes.setdefault(app_label, {alias})
        operations = {
            app_label: aliases.pop() if len(aliases) == 1 else default_database
            for app_label, aliases in homes.items()
        }
        object.__setattr__(topology, "app_operations", MappingProxyType(operations))
        object.__setattr__(
            topology,
            "split_apps",
            frozenset(app_label for app_label, aliases in homes.items() if len(aliases) > 1),
        )
        return topology

    def route_for(self, app_label: str, model_name: str) -> str | None:
        """The alias ROUTES sends a model to (a model route beats its app's), or None."""
        return self.model_routes.get(f"{app_label}.{model_name}", self.app_routes.get(app_label))

    def database_for_label(self, label: str) -> str:
        """Where the model with this ``app_label.model_name`` lives."""
        return self.labels[label.lower()] or self.default_database

    def database_for_model(self, model: Any) -> str:
        """Where a model class lives: its route, else ``DEFAULT_DATABASE``."""
        return self.models[model] or self.default_database

    def database_for_app_operations(self, app_label: str) -> str:
        """Where a migration operation of ``app_label`` without hints runs."""
        return self.app_operations.get(app_label, self.default_database)

    def shard_group_for(self, model: Any) -> ShardGroup | None:
        """The shard group of a sharded or reference model, or None."""
        return self.shard_group_of.get(owner_label(model))

    @property
    def shard_databases(self) -> frozenset[str]:
        """Every database of every shard group."""
        return frozenset(alias for group in self.shard_groups.values() for alias in group.databases)

    def is_replica(self, alias: str) -> bool:
        """Whether ``alias`` is a replica of another database."""
        return self.group_of.get(alias, alias) != alias

    def primary_of(self, alias: str) -> str:
        """The primary of the group ``alias`` belongs to (itself, for a primary)."""
        return self.group_of.get(alias, alias)

    def same_group(self, alias1: str, alias2: str) -> bool:
        """Whether two databases hold the same data (a primary and its replicas)."""
        return self.primary_of(alias1) == self.primary_of(alias2)
