"""SQLite: no prepared transactions, no replication; session locks are lock files."""

from __future__ import annotations

import contextlib
import datetime
import os
import shlex
import socket
import sys
from collections.abc import Sequence
from typing import IO, Any
from weakref import WeakKeyDictionary

from django.db import DatabaseError
from django.db.backends.base.base import BaseDatabaseWrapper

from dbfleet.vendors.base import (
    CAPTURE_PREFIX,
    CHANGES,
    FENCE_PREFIX,
    ID_COUNTER,
    Vendor,
    literal,
    query,
)

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: no flock, and no lock)
    fcntl = None  # type: ignore[assignment]

#: The open lock file of each connection that holds a session lock.
_LOCK_FILES: WeakKeyDictionary[BaseDatabaseWrapper, IO[str]] = WeakKeyDictionary()


def lock_path(connection: BaseDatabaseWrapper, name: str) -> str:
    """The lock file of ``name`` for this database: beside it, named after it."""
    return f"{connection.settings_dict['NAME']}.{name}.lock"


def _program() -> str:
    """How this process was started: ``python -m django``, ``manage.py``."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is not None:
        return f"python -m {spec.name.removesuffix('.__main__')}"
    return os.path.basename(sys.argv[0])


def _capture_triggers(
    connection: BaseDatabaseWrapper, table: str, pk_column: str, labels: Sequence[str]
) -> list[str]:
    """The CREATE TRIGGER statements of ``table``'s capture, in the order of their names."""
    quote = connection.ops.quote_name
    copies = "(VALUES " + ", ".join(f"({literal(label)})" for label in labels) + ")"
    log = f"INSERT INTO {CHANGES} (model, pk, op)"
    new, old = (f"CAST({row}.{quote(pk_column)} AS TEXT)" for row in ("NEW", "OLD"))
    actions = {
        "delete": ("DELETE", f"{log} SELECT column1, {old}, 'D' FROM {copies};"),
        "insert": ("INSERT", f"{log} SELECT column1, {new}, 'I' FROM {copies};"),
        "update": (
            "UPDATE",
            f"{log} SELECT column1, {new}, 'U' FROM {copies}; "
            f"{log} SELECT column1, {old}, 'U' FROM {copies} "
            f"WHERE OLD.{quote(pk_column)} IS NOT NEW.{quote(pk_column)};",
        ),
    }
    return [
        f"CREATE TRIGGER {quote(f'{CAPTURE_PREFIX}{table}_{name}')} AFTER {event} ON "
        f"{quote(table)} FOR EACH ROW BEGIN {action} END"
        for name, (event, action) in actions.items()
    ]


class SQLite(Vendor):
    name = "sqlite"
    replicates = False

    @staticmethod
    def probe_options(options: dict[str, Any], seconds: float) -> dict[str, Any]:
        return {**options, "timeout": seconds}  # how long to wait for a lock

    # SQLite's own locks last one transaction, and migrate runs many: two processes
    # could each plan the same migrations and apply them one after the other. A
    # file beside the database, locked with flock(), is held by the process for
    # as long as it wants, and the kernel releases it when that process dies. It
    # is not SQLite's lock (fcntl byte ranges on the database itself), so neither
    # waits for the other. The file stays: removing it would let two processes
    # lock two different files of the same name.

    @staticmethod
    def try_session_lock(connection: BaseDatabaseWrapper, name: str) -> bool:
        if fcntl is None or connection.is_in_memory_db():  # type: ignore[attr-defined]
            return True  # No other process can open an in-memory database.
        file = open(lock_path(connection, name), "a+")  # noqa: SIM115  (kept open while held)
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return False
        # Who holds it, for the next process that finds it taken.
        file.truncate(0)
        since = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
        command = " ".join([_program(), shlex.join(sys.argv[1:])])
        file.write(f"process {os.getpid()} on {socket.gethostname()} ({command}), since {since}")
        file.flush()
        _LOCK_FILES[connection] = file
        return True

    @staticmethod
    def release_session_lock(connection: BaseDatabaseWrapper, name: str) -> None:
        file = _LOCK_FILES.pop(connection, None)
        if file is not None:
            fcntl.flock(file, fcntl.LOCK_UN)
            file.close()

    @staticmethod
    def session_lock_holder(connection: BaseDatabaseWrapper, name: str) -> str | None:
        path = lock_path(connection, name)
        with contextlib.suppress(OSError), open(path) as file:
            holder = file.read().strip()
            if holder:
                pid = holder.split()[1]
                return (
                    f"{holder}, through the lock file {path}; the lock ends with that "
                    f"process: if it is stuck, stop it (kill {pid})"
                )
        return None

    # FleetIdField's counter: a one-row table. SQLite has one writer at a time, so
    # an UPDATE ... RETURNING is atomic; it is part of the caller's transaction (SQLite
    # has no other kind of write), as its own AUTOINCREMENT counter is.

    @staticmethod
    def install_id_counter(connection: BaseDatabaseWrapper) -> None:
        query(
            connection,
            f"CREATE TABLE IF NOT EXISTS {ID_COUNTER} "
            "(id INTEGER NOT NULL PRIMARY KEY CHECK (id = 1), t INTEGER NOT NULL)",
        )
        query(connection, f"INSERT OR IGNORE INTO {ID_COUNTER} (id, t) VALUES (1, 0)")

    @staticmethod
    def allocate_ids(connection: BaseDatabaseWrapper, count: int, now: int) -> int | None:
        try:
            rows = query(
                connection,
                f"UPDATE {ID_COUNTER} SET t = max(t + %s, %s) WHERE id = 1 RETURNING t",
                (count, now + count - 1),
            )
        except DatabaseError as error:
            if "no such table" in str(error):
                return None
            raise
        return int(rows[0][0]) if rows else None

    # Change capture: row triggers write the changed keys to the change log in the
    # writer's transaction. (SQLite has no TRUNCATE, and a DELETE without WHERE on a
    # table with triggers deletes row by row, firing them.)

    captures_changes = True

    @staticmethod
    def install_change_log(connection: BaseDatabaseWrapper) -> None:
        # AUTOINCREMENT: an id is never handed out twice, even once its row is consumed.
        query(
            connection,
            f"CREATE TABLE IF NOT EXISTS {CHANGES} (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "model TEXT NOT NULL, pk TEXT, op TEXT NOT NULL, "
            "at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0))",
        )
        query(connection, f"CREATE INDEX IF NOT EXISTS {CHANGES}_model ON {CHANGES} (model, id)")

    @staticmethod
    def capture_definition(
        connection: BaseDatabaseWrapper, table: str, pk_column: str, labels: Sequence[str]
    ) -> str:
        return ";\n".join(_capture_triggers(connection, table, pk_column, labels))

    @staticmethod
    def captured_tables(connection: BaseDatabaseWrapper) -> dict[str, str]:
        rows = query(
            connection,
            "SELECT tbl_name, sql FROM sqlite_master WHERE type = 'trigger' "
            "AND name LIKE %s ESCAPE '\\' ORDER BY name",
            (CAPTURE_PREFIX.replace("_", "\\_") + "%",),
        )
        found: dict[str, list[str]] = {}
        for table, sql in rows:
            found.setdefault(table, []).append(sql)
        return {table: ";\n".join(statements) for table, statements in found.items()}

    @staticmethod
    def install_capture(
        connection: BaseDatabaseWrapper, table: str, pk_column: str, labels: Sequence[str]
    ) -> None:
        SQLite.remove_capture(connection, table)
        for statement in _capture_triggers(connection, table, pk_column, labels):
            query(connection, statement)

    @staticmethod
    def remove_capture(connection: BaseDatabaseWrapper, table: str) -> None:
        rows = query(
            connection,
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = %s "
            "AND name LIKE %s ESCAPE '\\'",
            (table, CAPTURE_PREFIX.replace("_", "\\_") + "%"),
        )
        for (name,) in rows:
            query(connection, f"DROP TRIGGER IF EXISTS {connection.ops.quote_name(name)}")

    @staticmethod
    def fence(connection: BaseDatabaseWrapper, table: str, message: str) -> None:
        quote = connection.ops.quote_name
        for event in ("INSERT", "UPDATE", "DELETE"):
            name = quote(f"{FENCE_PREFIX}{table}_{event.lower()}")
            query(connection, f"DROP TRIGGER IF EXISTS {name}")
            query(
                connection,
                f"CREATE TRIGGER {name} BEFORE {event} ON {quote(table)} "
                f"BEGIN SELECT RAISE(ABORT, {literal(message)}); END",
            )

    @staticmethod
    def unfence(connection: BaseDatabaseWrapper, table: str) -> None:
        for event in ("insert", "update", "delete"):
            name = connection.ops.quote_name(f"{FENCE_PREFIX}{table}_{event}")
            query(connection, f"DROP TRIGGER IF EXISTS {name}")
