"""Find migration operations whose hints route them wrongly, before anything runs."""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from django.apps import apps
from django.db.migrations import Migration
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations import SeparateDatabaseAndState
from django.db.migrations.operations.base import Operation

from dbfleet.conf import clears_on_reset, closest, get_topology
from dbfleet.topology import Topology


class Kind(StrEnum):
    """What is wrong with an operation's hints; one system check each."""

    #: ``hints={"db": ...}``: crashes migrate.
    DB_HINT = "db-hint"
    #: ``target_db`` names no database in DATABASES (or is not an alias at all).
    UNKNOWN_TARGET = "unknown-target"
    #: ``target_db`` names a replica, which is never migrated.
    REPLICA_TARGET = "replica-target"
    #: ``model`` names no installed model.
    UNKNOWN_MODEL = "unknown-model"
    #: No hints, in an app split across databases: would run on DEFAULT_DATABASE only.
    UNHINTED = "unhinted"


@dataclass(frozen=True)
class Finding:
    """One problem of one operation's hints, where it is and how to fix it."""

    kind: Kind
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


# MIGRATION_MODULES and INSTALLED_APPS change what is on disk.
clears_on_reset(disk_migrations.cache_clear)


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
    """Operations whose hints crash migrate or route nowhere, or that lack hints in a split app.

    An operation with several problems has one finding for each, in the order
    they are fixed: a ``db`` hint first, since nothing else can be judged until
    it is ``target_db``.
    """
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
            findings += [
                Finding(kind, **where, problem=problem, fix=fix)
                for kind, problem, fix in _hint_problems(hints, app_label, name, topology)
            ]
    return findings


def _hint_problems(
    hints: dict[str, Any], app_label: str, migration: str, topology: Topology
) -> Iterator[tuple[Kind, str, str]]:
    """(kind, problem, fix) for each problem of one operation's ``hints``."""
    if "db" in hints:
        target = {**hints, "target_db": hints["db"]}
        del target["db"]
        yield (
            Kind.DB_HINT,
            f"has hints={hints!r}, which Django passes to "
            "ConnectionRouter.allow_migrate(db, app_label, **hints): that fails "
            "with \"TypeError: got multiple values for argument 'db'\" in the "
            "middle of a migrate run",
            f"hints={target!r}",
        )
        return
    if not hints:
        if app_label in topology.split_apps:
            default = topology.default_database
            yield (
                Kind.UNHINTED,
                f"has no hints, and app {app_label!r} is split across databases, so it would "
                f"run on DEFAULT_DATABASE ({default!r}) only and be recorded as applied on the "
                "others, where it would then never run",
                f"hints={{'target_db': {default!r}}} (or the database it is meant for), or "
                "hints={'model': 'app_label.Model'}. Where this migration is already recorded, "
                f"the hint alone changes nothing: it ran on {default!r} only. Run it by hand "
                "where it was meant to run (a RunSQL's statements: `manage.py sqlmigrate "
                f"{app_label} {migration} --database ALIAS`, once the hint is there; a "
                "RunPython's function: in `manage.py shell`). Do not unrecord it with "
                "`migrate --fake` to rerun it: its other operations, and the migrations after "
                "it, would run again",
            )
        return
    yield from _target_problems(hints, topology)
    model = hints.get("model")
    if isinstance(model, str):
        try:
            apps.get_model(model)
        except (LookupError, ValueError):
            labels = [found._meta.label for found in apps.get_models()]
            meant = closest(model, labels)
            yield (
                Kind.UNKNOWN_MODEL,
                f"has hints={hints!r}: model {model!r} is not an installed model, so the "
                "operation runs nowhere",
                f"hints={ {**hints, 'model': meant}!r}"
                if meant
                else "model='app_label.Model', naming an installed model",
            )


def _target_problems(hints: dict[str, Any], topology: Topology) -> Iterator[tuple[Kind, str, str]]:
    """The problems of a ``target_db`` hint: names outside DATABASES, and replicas."""
    target_db = hints.get("target_db")
    if target_db is None:
        return
    primaries = [alias for alias in topology.groups if alias in topology.databases]
    choices = ", ".join(map(repr, primaries))
    aliases = targets(target_db)
    if not aliases:
        yield (
            Kind.UNKNOWN_TARGET,
            f"has hints={hints!r}: target_db {target_db!r} is neither a database alias nor "
            "a list of aliases, so the operation runs nowhere",
            f"target_db one of {choices}, or model='app_label.Model'",
        )
        return
    unknown = [alias for alias in aliases if alias not in topology.databases]
    if unknown:
        meant = {alias: closest(alias, primaries) for alias in unknown}
        fixed: list[object] = [meant.get(alias) or alias for alias in aliases]
        yield (
            Kind.UNKNOWN_TARGET,
            f"has hints={hints!r}: target_db names {', '.join(map(repr, unknown))}, not in "
            "DATABASES" + _nowhere(unknown, aliases),
            f"hints={ {**hints, 'target_db': _like(target_db, list(dict.fromkeys(fixed)))}!r}"
            if all(meant.values())
            else f"target_db one of {choices}, or model='app_label.Model'",
        )
    replicas = [alias for alias in aliases if isinstance(alias, str) and topology.is_replica(alias)]
    if replicas:
        fixed = [topology.primary_of(alias) if alias in replicas else alias for alias in aliases]
        names = ", ".join(
            f"{alias!r} (a replica of {topology.primary_of(alias)!r})" for alias in replicas
        )
        yield (
            Kind.REPLICA_TARGET,
            f"has hints={hints!r}: target_db names {names}; replicas are never migrated"
            + _nowhere(replicas, aliases),
            f"hints={ {**hints, 'target_db': _like(target_db, list(dict.fromkeys(fixed)))}!r} "
            "(the primary: its replicas copy what it does)",
        )


def _nowhere(wrong: list[Any], aliases: list[Any]) -> str:
    return ", so the operation runs nowhere" if len(wrong) == len(aliases) else ""


def _like(original: object, aliases: list[Any]) -> object:
    """``aliases`` in the shape of the hint as written: one alias, or a list."""
    return aliases[0] if isinstance(original, str) else aliases
