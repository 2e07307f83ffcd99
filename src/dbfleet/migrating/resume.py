"""Finish a migration that stopped half-way: run its operations after those done, record it.

``fleet status`` finds such a migration (``drift.half_applied``): pending, with
the effects of its first operations in the database. Django's ``migrate``
would run it from the start and fail (``Duplicate column name``); here it runs
from the first operation whose effect is not there, in the project state those
before it leave, and is recorded as Django records it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from django.core.management.sql import emit_post_migrate_signal, emit_pre_migrate_signal
from django.db import DatabaseError, connections

from dbfleet.migrating.drift import inspect, state_after
from dbfleet.migrating.lint import describe
from dbfleet.migrating.lock import migration_lock


@dataclass(frozen=True)
class Resumed:
    """What was run on one database to finish a migration."""

    database: str
    migration: str
    #: The operations run now (1-based positions); empty when only the record was missing.
    ran: tuple[int, ...]
    total: int


class NotResumable(Exception):
    """The migration's done operations are not a prefix of it: it must be finished by hand."""


class ResumeFailed(Exception):
    """An operation failed again; what ran before it stays, nothing more is recorded."""

    def __init__(self, message: str, error: DatabaseError) -> None:
        super().__init__(message)
        self.error = error


def resume(alias: str, verbosity: int = 0, lock_timeout: float | None = None) -> Resumed | None:
    """Finish the migration that stopped half-way on ``alias``; None if there is none.

    It holds ``alias``'s migration lock from before it looks to after it
    records, waiting up to ``lock_timeout`` s for it (None: the default).
    Raises DatabaseError when the database cannot be read, MigrationLocked,
    NotResumable, or ResumeFailed when an operation fails.
    """
    connection = connections[alias]
    with migration_lock(connection, lock_timeout):
        return _resume(alias, verbosity)


def _resume(alias: str, verbosity: int) -> Resumed | None:
    database = inspect(alias)
    half = database.half
    if half is None:
        return None
    if not half.resumable:
        raise NotResumable(
            f"{half.label} on {alias!r} cannot be resumed: the effects of operations "
            f"{', '.join(map(str, half.present))} are there, but not those of "
            f"{', '.join(map(str, half.absent))} before them. Finish it by hand "
            f"(`manage.py sqlmigrate {half.app_label} {half.name} --database {alias}` prints "
            "its SQL), then record it with `manage.py migrate "
            f"{half.app_label} {half.name} --fake --database {alias}`."
        )
    executor, connection = database.executor, connections[alias]
    migration = database.migration((half.app_label, half.name))
    plan = [(migration, False)]
    emit_pre_migrate_signal(
        verbosity, False, alias, apps=database.state.apps, plan=plan, stdout=None
    )
    state = state_after(database, half)
    position = half.done
    try:
        with connection.schema_editor(atomic=migration.atomic) as editor:
            operations = enumerate(migration.operations[half.done :], half.done + 1)
            for position, operation in operations:  # noqa: B007  (read after a failure)
                # One operation at a time, through Django's own Migration.apply (which
                # decides each operation's transaction), so a failure has a position.
                single = copy.copy(migration)
                single.operations = [operation]  # type: ignore[misc]  # on the copy only
                state = single.apply(state, editor)
            position = 0  # Deferred statements (indexes, constraints) run at the end.
    except DatabaseError as error:
        where = (
            f"operation {position} of {half.total} ({describe(migration.operations[position - 1])})"
            if position
            else "the statements deferred to its end"
        )
        raise ResumeFailed(
            f"Resuming {half.label} on {alias!r} failed at {where}: {error}. What ran before "
            "it stays; nothing was recorded. Fix it and run `manage.py fleet migrate --resume` "
            "again: it starts after the last operation whose effect is there.",
            error,
        ) from error
    # As Django's executor records it: a squashed migration as the ones it replaces.
    for app_label, name in migration.replaces or [(migration.app_label, migration.name)]:
        executor.recorder.record_applied(app_label, name)
    emit_post_migrate_signal(verbosity, False, alias, apps=state.apps, plan=plan)
    return Resumed(alias, half.label, tuple(range(half.done + 1, half.total + 1)), half.total)
