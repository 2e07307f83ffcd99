"""Migrations x databases, and an audit of tables and columns against what is recorded."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from django.db import DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor

from dbfleet.migrating.drift import Database, Discrepancy, Fix, StateCache, audit, inspect
from dbfleet.migrating.lint import disk_migrations
from dbfleet.migrating.plan import first_line, migratable_databases, runs_on

__all__ = ["Discrepancy", "Fix", "State", "Status", "status"]


class State(StrEnum):
    """A migration on one database."""

    APPLIED = "applied"
    PENDING = "pending"
    #: No operation of it runs there (Django still records it as applied when it migrates).
    NOT_ROUTED = "not routed"


@dataclass
class Status:
    databases: list[str]
    #: migration label -> database -> its state there.
    migrations: dict[str, dict[str, State]] = field(default_factory=dict)
    #: Database that could not be read -> the error.
    errors: dict[str, str] = field(default_factory=dict)
    audit: list[Discrepancy] = field(default_factory=list)
    #: The databases whose tables and columns were compared with their records.
    audited: list[str] = field(default_factory=list)
    #: Commands that put the audited databases right, in order.
    fixes: list[Fix] = field(default_factory=list)

    def count(self, alias: str, state: State) -> int:
        return sum(1 for states in self.migrations.values() if states.get(alias) == state)


def status(
    aliases: list[str] | None = None, *, audited: bool = True, also: Iterable[str] = ()
) -> Status:
    """Which migration is applied where, and which tables and columns disagree with the records.

    ``also`` are databases that are only audited (not migrated: nothing is routed
    there), for tables left behind when a route changed. With ``audited=False``
    nothing is compared (the configuration is wrong, so the routes are too).
    """
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
    cache: StateCache = {}
    inspected: list[Database] = []
    for alias in [*aliases, *(alias for alias in also if alias not in aliases)]:
        try:
            executor = MigrationExecutor(connections[alias])
            if audited:
                inspected.append(inspect(alias, cache, executor))
        except DatabaseError as error:
            result.errors[alias] = first_line(error)
            continue
        if alias not in aliases:
            continue
        # Read per database, so a squashed migration counts as applied where
        # everything it replaces is.
        recorded = set(executor.loader.applied_migrations)
        for key in order:
            if key in recorded:
                state = State.APPLIED
            elif runs_on(alias, loader.graph.nodes[key]):
                state = State.PENDING
            else:
                state = State.NOT_ROUTED
            result.migrations[f"{key[0]}.{key[1]}"][alias] = state
    if audited:
        try:
            found = audit(inspected, unreachable=result.errors)
        except DatabaseError as error:  # A server that went away half-way through.
            for database in inspected:
                result.errors.setdefault(database.alias, first_line(error))
            return result
        result.audit, result.fixes = found.findings, found.fixes
        result.audited = [database.alias for database in inspected]
    return result
