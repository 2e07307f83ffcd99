"""Which migration operation runs on which database, and why."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, connections, router
from django.db.migrations import Migration
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.operations.base import Operation

from dbfleet.conf import get_topology
from dbfleet.migrating.lint import (
    Finding,
    describe,
    hinted_databases,
    lint,
    operations,
    targets,
)
from dbfleet.routing import explain_migrate


@dataclass(frozen=True)
class OperationPlan:
    position: int
    description: str
    runs: bool
    reason: str
    finding: Finding | None = None


@dataclass(frozen=True)
class MigrationPlan:
    app_label: str
    name: str
    applied: bool
    operations: tuple[OperationPlan, ...]

    @property
    def label(self) -> str:
        return f"{self.app_label}.{self.name}"

    @property
    def runs_here(self) -> bool:
        """Whether any of its operations runs on the database planned."""
        return any(step.runs for step in self.operations)


@dataclass(frozen=True)
class DatabasePlan:
    alias: str
    vendor: str
    migrations: tuple[MigrationPlan, ...] = ()
    #: Why the plan could not be made (the server is down, say), else None.
    error: str | None = None
    pending: int = 0


def migratable_databases() -> list[str]:
    """Databases migrations run on: ``DEFAULT_DATABASE``, route targets, shard group databases
    and ``target_db`` hints.

    Never replicas, test mirrors or a dummy ``default`` (Django's ``"default": {}``);
    an alias nothing is routed to would only get every migration recorded as applied.
    """
    topology = get_topology()
    wanted = {topology.default_database, *topology.model_routes.values()}
    wanted |= {*topology.app_routes.values(), *hinted_databases(), *topology.shard_databases}
    return [alias for alias in primary_databases() if alias in wanted]


def primary_databases() -> list[str]:
    """Every database that holds its own data: not a replica, a test mirror or a dummy."""
    topology = get_topology()
    return [
        alias
        for alias in connections
        if not topology.is_replica(alias)
        and not connections.settings[alias].get("TEST", {}).get("MIRROR")
        and connections.settings[alias]["ENGINE"] != "django.db.backends.dummy"
    ]


def operation_model_name(operation: Operation) -> str | None:
    """The lowercased model an operation changes, if it changes one.

    A RenameModel by its new name: Django's asks the routers about the renamed model.
    """
    for attribute in ("model_name_lower", "new_name_lower", "name_lower"):
        name = getattr(operation, attribute, None)
        if isinstance(name, str):
            return name
    return None


def swapped(setting: str | None, app_label: str, model_name: str) -> bool:
    """Whether a swappable model is swapped out, as Django's ``Options.swapped`` says.

    Unset, it is not; the model's name in the setting is compared in any case.
    """
    if not setting:
        return False
    label, _, name = setting.partition(".")
    return f"{label}.{name.lower()}" != f"{app_label}.{model_name}"


def decide(alias: str, app_label: str, operation: Operation) -> tuple[bool, str]:
    """Whether ``operation`` runs on ``alias`` (as Django will decide) and why."""
    hints = getattr(operation, "hints", None)
    if isinstance(hints, dict):
        if "db" in hints:
            return False, "cannot run: a 'db' hint crashes migrate"
        target_db = hints.get("target_db")
        if target_db is not None and not targets(target_db):
            # Neither an alias nor a list of them: the router cannot answer either.
            return False, f"cannot run: a target_db of {target_db!r} crashes migrate"
        allowed = router.allow_migrate(alias, app_label, **hints)
        ours, reason = explain_migrate(alias, app_label, **hints)
    else:
        model_name = operation_model_name(operation)
        if model_name is None:
            return True, f"{type(operation).__name__} decides by itself"
        options = getattr(operation, "options", {})
        if options.get("proxy") or options.get("managed") is False:
            return False, "proxy or unmanaged model: no table"
        swappable = options.get("swappable")
        if swappable and swapped(getattr(settings, swappable, None), app_label, model_name):
            return False, f"swapped out by settings.{swappable}: no table"
        allowed = router.allow_migrate(alias, app_label, model_name=model_name)
        ours, reason = explain_migrate(alias, app_label, model_name)
    if allowed != ours:
        reason = "decided by a router before dbfleet.Router"
    return allowed, reason


def runs_on(alias: str, migration: Migration) -> bool:
    """Whether any operation of ``migration`` runs on ``alias``."""
    return any(decide(alias, migration.app_label, op)[0] for _, op in operations(migration))


def plan_migration(
    alias: str, migration: Migration, applied: bool, findings: dict[tuple[str, str, int], Finding]
) -> MigrationPlan:
    """Each operation of ``migration`` on ``alias``: whether it runs, why, and any finding."""
    steps = []
    for position, operation in operations(migration):
        runs, reason = decide(alias, migration.app_label, operation)
        finding = findings.get((migration.app_label, migration.name, position))
        steps.append(OperationPlan(position, describe(operation), runs, reason, finding))
    return MigrationPlan(migration.app_label, migration.name, applied, tuple(steps))


def plan(aliases: Iterable[str] | None = None, include_applied: bool = False) -> list[DatabasePlan]:
    """For each database, its pending (or every) migration and operation, decided."""
    findings = {(f.app_label, f.migration, f.position): f for f in lint()}
    plans = []
    for alias in migratable_databases() if aliases is None else aliases:
        connection = connections[alias]
        try:
            executor = MigrationExecutor(connection)
        except DatabaseError as error:
            plans.append(DatabasePlan(alias, connection.vendor, error=first_line(error)))
            continue
        loader = executor.loader
        targets = loader.graph.leaf_nodes()
        pending = {migration for migration, _ in executor.migration_plan(targets)}
        if include_applied:
            keys = dict.fromkeys(
                key for leaf in targets for key in loader.graph.forwards_plan(leaf)
            )
            chosen = [loader.graph.nodes[key] for key in keys]
        else:
            chosen = [migration for migration, _ in executor.migration_plan(targets)]
        migrations = tuple(
            plan_migration(alias, migration, migration not in pending, findings)
            for migration in chosen
        )
        plans.append(DatabasePlan(alias, connection.vendor, migrations, pending=len(pending)))
    return plans


def first_line(error: BaseException) -> str:
    """``"OperationalError: the first line of its message"``."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")
