"""Change capture on the sources of synced models: triggers, and the change log they write.

Each source table gets triggers that write, in the writer's own transaction, one
row for each changed primary key and each copy of the table into the change log
``dbfleet_changes`` on the source's database: ``id`` (in the order written),
``model`` (the copy's label), ``pk`` (as text), ``op`` (``I``, ``U``, ``D``; ``R``:
every row may have changed, load the copy again) and ``at`` (Unix seconds). The
triggers see every write, whatever makes it: ``save()``, ``bulk_create``,
``QuerySet.update()`` (which leaves ``auto_now`` fields alone), ``bulk_update``,
``delete()``, ``QuerySet.delete()``, raw SQL.

Because the log rows are the writer's, they become visible when its transaction
commits, and not before: the sync reads the log as a queue, never by a
watermark, so a transaction that commits long after it began is copied when it
commits. Rolled back, it leaves nothing to copy.

The log and the triggers are installed by ``post_migrate`` on each database
where a source migrates (every ``migrate``, so that a table a migration rebuilt,
as SQLite's schema editor does, gets its triggers back), and dropped from tables
that no longer have a copy. Where triggers were missing (installed for the first
time, or a copy added) an ``R`` row tells the sync to load the copy in full: what
changed before the triggers existed is in that load. ``fleet move`` captures the
tables of the models it moves the same way, under its move's label, until the move
is finished.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.db import connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Model

from dbfleet import vendors
from dbfleet.analytics.spec import copies_by_source
from dbfleet.vendors.base import ABORTED, CHANGES, FINISHED, MOVES, RELOAD

#: Log rows deleted by one statement (SQLite's limit on parameters is far above it).
DELETE_CHUNK = 500


@dataclass(frozen=True)
class Change:
    """One row of the change log."""

    id: int
    #: The changed primary key as text (None for ``R``).
    pk: str | None
    op: str
    #: When the trigger wrote it (Unix seconds).
    at: float


def label_of(model: type[Model]) -> str:
    """How the change log names a copy: its lower-case label."""
    return model._meta.label_lower


def move_label(model: type[Model], target: str) -> str:
    """How the change log names a move of ``model`` to ``target`` (``fleet move``)."""
    return f"{label_of(model)}>{target}"


def sources_on(alias: str) -> dict[type[Model], list[str]]:
    """Each source model that migrates on ``alias`` -> the labels of its copies; and each
    model moving from ``alias`` -> its move's label."""
    found = {
        source: [label_of(copy) for copy in copies]
        for source, copies in copies_by_source().items()
        if router.allow_migrate_model(alias, source)
    }
    for model, target in moving_from(connections[alias]):
        found.setdefault(model, []).append(move_label(model, target))
    return found


def moving_from(connection: BaseDatabaseWrapper) -> list[tuple[type[Model], str]]:
    """The models with a move from this database that is neither finished nor being
    aborted, and where to."""
    with connection.cursor() as cursor:
        if MOVES not in connection.introspection.table_names(cursor):
            return []
        cursor.execute(
            f"SELECT model, target FROM {MOVES} WHERE phase NOT IN (%s, %s)", [FINISHED, ABORTED]
        )
        rows = cursor.fetchall()
    found = []
    for label, target in rows:
        with contextlib.suppress(LookupError):  # An app since removed: nothing to capture.
            found.append((apps.get_model(label), str(target)))
    return found


def install(
    connection: BaseDatabaseWrapper, sources: Mapping[type[Model], Sequence[str]]
) -> list[str]:
    """Capture the changes of ``sources`` (model -> its copies' labels) here; only of them.

    Idempotent: triggers that are as they should be are left alone. Returns the
    labels for which an ``R`` row was logged (their triggers were missing).
    Triggers of dbfleet on any other table are dropped.
    """
    vendor = vendors.of(connection)
    with connection.cursor():  # Connected, for the introspection below.
        tables = set(connection.introspection.table_names())
    wanted = {
        model._meta.db_table: (str(model._meta.pk.column), sorted(labels))
        for model, labels in sources.items()
        if labels and model._meta.db_table in tables and model._meta.pk is not None
    }
    present = vendor.captured_tables(connection) if CHANGES in tables else {}
    if not wanted and not present:
        return []
    changing = {
        table: (pk_column, labels)
        for table, (pk_column, labels) in wanted.items()
        if present.get(table) != vendor.capture_definition(connection, table, pk_column, labels)
    }
    dropped = set(present) - set(wanted)
    reload: list[str] = []
    with transaction.atomic(using=connection.alias):
        # Only the tables whose triggers change: a migrate that changes none locks none.
        vendor.lock_for_triggers(connection, sorted({*changing, *dropped}))
        vendor.install_change_log(connection)
        for table, (pk_column, labels) in sorted(changing.items()):
            old = present.get(table)
            vendor.install_capture(connection, table, pk_column, labels)
            # A copy the old triggers already logged for lost nothing.
            added = [label for label in labels if old is None or vendors.literal(label) not in old]
            log_reload(connection, added)
            reload += added
        for table in sorted(dropped):
            vendor.remove_capture(connection, table)
    return reload


def uninstall(connection: BaseDatabaseWrapper, models: Iterable[type[Model]]) -> None:
    """Drop the capture triggers of ``models``' tables here."""
    vendor = vendors.of(connection)
    for model in models:
        vendor.remove_capture(connection, model._meta.db_table)


def install_after_migrate(sender: Any, *, using: str, **kwargs: Any) -> None:
    """``post_migrate`` (dbfleet's): capture the sources that migrate on ``using``."""
    connection = connections[using]
    if vendors.of(connection).captures_changes:
        install(connection, sources_on(using))


def log_reload(connection: BaseDatabaseWrapper, labels: Sequence[str]) -> None:
    """Log ``R`` for each of ``labels``: their next sync loads the copy in full."""
    with connection.cursor() as cursor:
        for label in labels:
            cursor.execute(
                f"INSERT INTO {CHANGES} (model, pk, op) VALUES (%s, NULL, %s)", (label, RELOAD)
            )


def is_installed(connection: BaseDatabaseWrapper) -> bool:
    """Whether this database has the change log."""
    with connection.cursor() as cursor:
        return CHANGES in connection.introspection.table_names(cursor)


def pending(connection: BaseDatabaseWrapper, label: str, limit: int) -> list[Change]:
    """The first ``limit`` changes logged for the copy ``label``, in the order written."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, pk, op, at FROM {CHANGES} WHERE model = %s ORDER BY id LIMIT %s",
            (label, limit),
        )
        return [Change(int(id), pk, op, float(at)) for id, pk, op, at in cursor.fetchall()]


def consume(connection: BaseDatabaseWrapper, changes: Sequence[Change]) -> None:
    """Delete exactly these log rows (never a range: a row with a lower id may appear later)."""
    ids = [change.id for change in changes]
    with connection.cursor() as cursor:
        for start in range(0, len(ids), DELETE_CHUNK):
            chunk = ids[start : start + DELETE_CHUNK]
            cursor.execute(
                f"DELETE FROM {CHANGES} WHERE id IN ({', '.join(['%s'] * len(chunk))})", chunk
            )


def drain(connection: BaseDatabaseWrapper, label: str) -> int:
    """Delete every committed log row of ``label`` (a full load is about to read the rows)."""
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {CHANGES} WHERE model = %s", (label,))
        return max(int(cursor.rowcount), 0)


def backlog(connection: BaseDatabaseWrapper, label: str) -> tuple[int, float | None]:
    """(the changes of ``label`` not copied yet, when the oldest was logged)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*), min(at) FROM {CHANGES} WHERE model = %s", (label,))
        count, oldest = cursor.fetchone()
    return int(count), None if oldest is None else float(oldest)
