"""Migrations x databases, and an audit of tables against what is recorded."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from django.apps import apps
from django.db import DatabaseError, connections, router
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations import CreateModel

from dbfleet.migrating.lint import disk_migrations, operations
from dbfleet.migrating.plan import first_line, migratable_databases, runs_on
from dbfleet.topology import owner_label


class State(StrEnum):
    """A migration on one database."""

    APPLIED = "applied"
    PENDING = "pending"
    #: No operation of it runs there (Django still records it as applied when it migrates).
    NOT_ROUTED = "not routed"


@dataclass(frozen=True)
class Discrepancy:
    """A table that is where the records say it is not, or missing where they say it is."""

    database: str
    model: str
    table: str
    problem: str


@dataclass
class Status:
    databases: list[str]
    #: migration label -> database -> its state there.
    migrations: dict[str, dict[str, State]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    audit: list[Discrepancy] = field(default_factory=list)

    def count(self, alias: str, state: State) -> int:
        return sum(1 for states in self.migrations.values() if states.get(alias) == state)


def creators(loader: MigrationLoader) -> dict[str, tuple[str, str]]:
    """model label -> the migration that creates it."""
    found: dict[str, tuple[str, str]] = {}
    for key in loader.graph.nodes:
        migration = loader.graph.nodes[key]
        for _, operation in operations(migration):
            if isinstance(operation, CreateModel):
                found.setdefault(f"{migration.app_label}.{operation.name_lower}", key)
    return found


def status(aliases: list[str] | None = None) -> Status:
    """Which migration is applied where, and which tables disagree with the records."""
    aliases = migratable_databases() if aliases is None else aliases
    loader = disk_migrations()
    order = list(
        dict.fromkeys(
            key for leaf in loader.graph.leaf_nodes() for key in loader.graph.forwards_plan(leaf)
        )
    )
    result = Status(databases=aliases)
    for key in order:
        result.migrations[f"{key[0]}.{key[1]}"] = {}
    created_by = creators(loader)
    previous = previous_migrations(loader)
    for alias in aliases:
        connection = connections[alias]
        try:
            # Loaded per database so a squashed migration counts as applied where
            # everything it replaces is.
            loaded = MigrationLoader(connection, ignore_no_migrations=True)
            recorded = set(loaded.applied_migrations)
            with connection.cursor() as cursor:
                tables = set(connection.introspection.table_names(cursor))
        except DatabaseError as error:
            result.errors[alias] = first_line(error)
            continue
        for key in order:
            if key in recorded:
                state = State.APPLIED
            elif runs_on(alias, loader.graph.nodes[key]):
                state = State.PENDING
            else:
                state = State.NOT_ROUTED
            result.migrations[f"{key[0]}.{key[1]}"][alias] = state
        result.audit += audit(alias, tables, recorded, created_by, previous)
    return result


def audit(
    alias: str,
    tables: set[str],
    recorded: set[tuple[str, str]],
    created_by: dict[str, tuple[str, str]],
    previous: dict[tuple[str, str], str],
) -> list[Discrepancy]:
    """Tables on ``alias`` that disagree with its migration records or with the routes."""
    found = []
    for model in apps.get_models(include_auto_created=True):
        opts = model._meta
        if opts.proxy or not opts.managed:
            continue
        table, label = opts.db_table, opts.label
        present = table in tables
        # A many-to-many table may come from a later AddField rather than its model's
        # CreateModel: for it, only say where it should not be.
        creator = None if opts.auto_created else created_by.get(owner_label(model))
        routed_here = router.allow_migrate_model(alias, model)
        if routed_here and creator in recorded and not present:
            problem = (
                f"{creator[0]}.{creator[1]} is recorded as applied but table {table} is "
                "missing: it was recorded while routing sent the model elsewhere. Unrecord it "
                f"with `migrate {creator[0]} {previous[creator]} --fake --database {alias}`, "
                "then run `fleet migrate`."
            )
        elif not routed_here and present:
            problem = (
                f"table {table} exists here but {label} lives in "
                f"{router.db_for_write(model)!r}: a stray copy. Check its rows, then drop it."
            )
        elif routed_here and present and creator is not None and creator not in recorded:
            problem = (
                f"table {table} exists but {creator[0]}.{creator[1]} is not recorded: "
                "migrate will fail to create it. Record it with "
                f"`migrate {creator[0]} --fake-initial --database {alias}`."
            )
        else:
            continue
        found.append(Discrepancy(alias, label, table, problem))
    return found


def previous_migrations(loader: MigrationLoader) -> dict[tuple[str, str], str]:
    """migration key -> the name of the one before it in its app ("zero" for the first)."""
    previous = {}
    for key, node in loader.graph.node_map.items():
        parents = [parent.key[1] for parent in node.parents if parent.key[0] == key[0]]
        previous[key] = parents[0] if parents else "zero"
    return previous
