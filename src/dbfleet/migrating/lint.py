"""Find migration operations whose hints route them wrongly, before anything runs."""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.apps import apps
from django.core.signals import setting_changed
from django.db.migrations import Migration
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations import SeparateDatabaseAndState
from django.db.migrations.operations.base import Operation
from django.dispatch import receiver

from dbfleet.conf import get_topology
from dbfleet.topology import Topology


@dataclass(frozen=True)
class Finding:
    """One operation that routes wrongly, where it is and how to fix it."""

    #: "db-hint" (crashes migrate), "unknown-target" or "unhinted" (in a split app).
    kind: str
    app_label: str
    migration: str
    file: str
    position: int
    operation: str
    problem: str
    fix: str

    def location(self) -> str:
        return f"{self.file}, operation {self.position} ({self.operation})"


def migration_file(migration: Migration) -> str:
    """The migration's file, relative to the working directory when inside it."""
    module = sys.modules.get(type(migration).__module__)
    path = Path(getattr(module, "__file__", "") or type(migration).__module__)
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def operations(migration: Migration) -> Iterator[tuple[int, Operation]]:
    """(1-based position, operation), looking inside SeparateDatabaseAndState."""
    for position, operation in enumerate(migration.operations, 1):
        if isinstance(operation, SeparateDatabaseAndState):
            for inner in operation.database_operations:
                yield position, inner
        else:
            yield position, operation


def describe(operation: Operation) -> str:
    """``RunPython forwards``, ``RunSQL``, or Django's own description of the operation."""
    name = type(operation).__name__
    if not isinstance(getattr(operation, "hints", None), dict):
        return operation.describe()
    code_name = getattr(getattr(operation, "code", None), "__name__", None)
    return f"{name} {code_name}" if code_name else name


@functools.cache
def disk_migrations() -> MigrationLoader:
    """The project's migrations as on disk (no database is asked), loaded once.

    Checks, ``fleet plan``, ``status`` and ``migrate`` all read them; loading
    them again for each would build the graph several times per command.
    """
    return MigrationLoader(None, ignore_no_migrations=True)


@receiver(setting_changed)
def _setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in {"INSTALLED_APPS", "MIGRATION_MODULES"}:
        disk_migrations.cache_clear()


def targets(target_db: object) -> list[object]:
    """The aliases of a ``target_db`` hint (one alias or a list); [] for anything else."""
    if isinstance(target_db, str):
        return [target_db]
    return list(target_db) if isinstance(target_db, list | tuple | set | frozenset) else []


def hinted_databases() -> set[str]:
    """Every database named by a ``target_db`` hint."""
    hinted = (
        alias
        for migration in disk_migrations().disk_migrations.values()
        for _, operation in operations(migration)
        for alias in targets((getattr(operation, "hints", None) or {}).get("target_db"))
    )
    return {alias for alias in hinted if isinstance(alias, str)}


def lint() -> list[Finding]:
    """Operations with a ``db`` hint (which crashes migrate) or unhinted in a split app."""
    topology = get_topology()
    findings: list[Finding] = []
    for (app_label, name), migration in sorted(disk_migrations().disk_migrations.items()):
        for position, operation in operations(migration):
            hints: Any = getattr(operation, "hints", None)
            if not isinstance(hints, dict):
                continue  # Operations on models: routed by their model.
            where: dict[str, Any] = {
                "app_label": app_label,
                "migration": name,
                "file": migration_file(migration),
                "position": position,
                "operation": describe(operation),
            }
            if "db" in hints:
                target = {**hints, "target_db": hints["db"]}
                del target["db"]
                findings.append(
                    Finding(
                        "db-hint",
                        **where,
                        problem=f"has hints={hints!r}, which Django passes to "
                        "ConnectionRouter.allow_migrate(db, app_label, **hints): that fails "
                        "with \"TypeError: got multiple values for argument 'db'\" in the "
                        "middle of a migrate run",
                        fix=f"hints={target!r}",
                    )
                )
            elif unknown := _unknown_targets(hints, topology):
                primaries = ", ".join(map(repr, topology.groups))
                findings.append(
                    Finding(
                        "unknown-target",
                        **where,
                        problem=f"has hints={hints!r}, naming {', '.join(unknown)}, which no "
                        "migration runs on (not in DATABASES, a replica, or not a model), "
                        "so it runs nowhere",
                        fix=f"target_db one of {primaries}, or model='app_label.Model'",
                    )
                )
            elif not hints and app_label in topology.split_apps:
                findings.append(
                    Finding(
                        "unhinted",
                        **where,
                        problem=f"has no hints, and app {app_label!r} is split across "
                        "databases, so it runs on DEFAULT_DATABASE "
                        f"({topology.default_database!r}) only",
                        fix=f"hints={{'target_db': {topology.default_database!r}}} (or the "
                        "database it is meant for), or hints={'model': 'app_label.Model'}",
                    )
                )
    return findings


def _unknown_targets(hints: dict[str, Any], topology: Topology) -> list[str]:
    """The ``target_db`` or ``model`` hint values that name nothing migrations run on."""
    unknown = []
    target_db, model = hints.get("target_db"), hints.get("model")
    if target_db is not None:
        aliases = targets(target_db)
        unknown += [repr(target_db)] if not aliases else []
        unknown += [
            repr(alias)
            for alias in aliases
            if alias not in topology.databases or topology.is_replica(str(alias))
        ]
    if isinstance(model, str):
        try:
            apps.get_model(model)
        except (LookupError, ValueError):
            unknown.append(repr(model))
    return unknown
