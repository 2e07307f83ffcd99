"""What every engine answers, and the defaults of an engine that can do none of it."""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from django.db import DatabaseError
from django.db.backends.base.base import BaseDatabaseWrapper

#: The position of a replica that has everything its primary has (a test mirror).
CURRENT = "current"
#: The counter FleetIdField allocates from, on each database that has one: a sequence on
#: PostgreSQL, a one-row table elsewhere.
ID_COUNTER = "dbfleet_fleet_id"
#: The change log of the sources of synced models (dbfleet.analytics): one row for each
#: changed primary key and each copy of its table, written by triggers.
CHANGES = "dbfleet_changes"
#: The operation a log row has for "every row may have changed" (a TRUNCATE, or capture
#: installed where it was not): the copy is loaded again in full.
RELOAD = "R"
#: How dbfleet's capture triggers (and PostgreSQL functions) are named: then the table.
CAPTURE_PREFIX = "dbfleet_capture_"
#: The moves in progress from a database (``fleet move``), on that database: one row for
#: each model moving, whose changes the capture logs under its move's label.
MOVES = "dbfleet_move"
#: The phase of a move whose source no longer takes writes, and is no longer captured.
FINISHED = "finished"
#: The phase of a move being undone (``fleet move --abort``): no longer captured either.
ABORTED = "aborted"
#: How the triggers that refuse writes to a moved model's old table are named.
FENCE_PREFIX = "dbfleet_fence_"
_NO_CAPTURE = (
    "Synced models need their source on PostgreSQL, MariaDB/MySQL or SQLite, whose triggers "
    "capture its changes, not on {vendor!r}."
)


@dataclass(frozen=True)
class ReplicaStatus:
    """What a replica says of its replication, with one query."""

    #: Seconds behind its primary (infinity: replication is not running).
    lag: float
    #: The position it has replayed, or None if unknown.
    replayed: str | None
    #: Whether it has received changes it has not replayed, or receives none.
    behind: bool


def query(
    connection: BaseDatabaseWrapper, sql: str, params: Sequence[Any] | None = None
) -> list[tuple[Any, ...]]:
    """Run ``sql`` through Django's cursor; return its rows (none for a statement)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []


def raw(connection: BaseDatabaseWrapper, sql: str, params: Sequence[Any] | None = None) -> str:
    """Run ``sql`` on the DB-API connection; return the server's status message.

    Not through Django's cursor: that refuses to run anything in a transaction
    it has marked for rollback, and protocol statements are how it gets rolled
    back. No execute wrapper sees these statements.
    """
    with connection.wrap_database_errors:
        cursor = connection.connection.cursor()
        try:
            cursor.execute(sql, params)
            return str(getattr(cursor, "statusmessage", "") or "")
        finally:
            cursor.close()


def raw_commit(connection: BaseDatabaseWrapper) -> None:
    """Commit on the DB-API connection, leaving Django's bookkeeping to the block's exit."""
    with connection.wrap_database_errors:
        connection.connection.commit()


def raw_rollback(connection: BaseDatabaseWrapper) -> None:
    """Roll back on the DB-API connection, leaving Django's bookkeeping to the block's exit."""
    with connection.wrap_database_errors:
        connection.connection.rollback()


def quoted(connection: BaseDatabaseWrapper, table: str, columns: Sequence[str]) -> str:
    """``table (column, ...)``, each name quoted for ``connection``."""
    quote = connection.ops.quote_name
    return f"{quote(table)} ({', '.join(quote(column) for column in columns)})"


def literal(value: str) -> str:
    """``value`` as an SQL string literal (for statements that take no bound parameters)."""
    return "'" + value.replace("'", "''") + "'"


def driver_code(error: DatabaseError) -> object:
    """The driver's own error code behind a Django ``DatabaseError``, or None."""
    cause = error.__cause__
    code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if code:
        return str(code)
    args = getattr(cause, "args", None) or error.args
    return args[0] if args and isinstance(args[0], int) else None


class Vendor:
    """An engine without prepared transactions or replication (the defaults)."""

    #: Django's ``connection.vendor``.
    name: ClassVar[str] = ""
    #: Whether a database of it can be a replica of another (SQLite's cannot).
    replicates: ClassVar[bool] = True
    #: Whether it can prepare a transaction (two-phase commit).
    two_phase: ClassVar[bool] = False
    #: Whether it has transactions (ClickHouse has none: each statement takes effect as it runs).
    transactional: ClassVar[bool] = True
    #: Whether NULL sorts before every value in an ascending ORDER BY.
    nulls_first: ClassVar[bool] = True
    #: The ``OPTIONS`` key of a connect timeout in seconds, if the driver has one.
    connect_timeout_option: ClassVar[str | None] = None
    #: An SQL function giving the bytes that text sorts by under its collation (a fan-out
    #: merges by them); None: the engine compares text as Python compares ``str``.
    text_sort_key: ClassVar[str | None] = None

    @staticmethod
    def sorts_text_by_code_point(connection: BaseDatabaseWrapper, collation: str | None) -> bool:
        """Whether ORDER BY compares text under ``collation`` (None: the default) by code point."""
        return collation is None or collation.upper() == "BINARY"

    # --- Two-phase commit: only engines with ``two_phase`` are asked. ---------------------

    @staticmethod
    def begin(connection: BaseDatabaseWrapper, xid: str) -> None:
        raise NotImplementedError

    @staticmethod
    def prepare(connection: BaseDatabaseWrapper, xid: str) -> None:
        raise NotImplementedError

    @staticmethod
    def commit_one_phase(connection: BaseDatabaseWrapper, xid: str) -> None:
        raise NotImplementedError

    @staticmethod
    def rollback_active(connection: BaseDatabaseWrapper, xid: str) -> None:
        raise NotImplementedError

    @staticmethod
    def finish_prepared(connection: BaseDatabaseWrapper, xid: str, commit: bool) -> None:
        raise NotImplementedError

    @staticmethod
    def wrote(connection: BaseDatabaseWrapper) -> bool | None:
        """Whether the open transaction wrote; None when the engine cannot tell."""
        raise NotImplementedError

    @staticmethod
    def in_doubt(connection: BaseDatabaseWrapper, prefix: str) -> list[tuple[str, str]]:
        """(transaction id, engine's name) of the transactions prepared here under ``prefix``."""
        raise NotImplementedError

    @staticmethod
    def settle(
        connection: BaseDatabaseWrapper, transaction_id: str, name: str, commit: bool
    ) -> None:
        """Commit or roll back the prepared transaction the engine calls ``name``."""
        raise NotImplementedError

    @staticmethod
    def unsynced(sql: str, autocommit: bool) -> str:
        """``sql`` (without parameters) made not to wait for the disk when it commits."""
        return sql

    @staticmethod
    def prepared_transactions_limit(connection: BaseDatabaseWrapper) -> int | None:
        """How many transactions the server lets be prepared at once (None: no set limit)."""
        return None

    @staticmethod
    def probe_options(options: dict[str, Any], seconds: float) -> dict[str, Any]:
        """``OPTIONS`` for a connection that gives up after ``seconds`` (connect, statements)."""
        return dict(options)

    @staticmethod
    def estimated_rows(connection: BaseDatabaseWrapper, table: str) -> int | None:
        """The engine's cheap estimate of the rows of ``table``; None: it keeps none (count)."""
        return None

    # --- Errors ---------------------------------------------------------------------------

    @staticmethod
    def is_gone(error: DatabaseError) -> bool:
        """Whether ``error`` says the prepared transaction does not exist (any more)."""
        return False

    @staticmethod
    def is_busy(error: DatabaseError) -> bool:
        """Whether ``error`` says another session holds the prepared transaction."""
        return False

    @staticmethod
    def is_retryable(error: DatabaseError) -> bool:
        """Whether running the transaction again may succeed (deadlock, lock wait, ...)."""
        return False

    # --- Replication ----------------------------------------------------------------------

    @staticmethod
    def position(connection: BaseDatabaseWrapper) -> str | None:
        """The primary's current replication position, or None if it has none."""
        return None

    @staticmethod
    def replica_status(connection: BaseDatabaseWrapper) -> ReplicaStatus | None:
        """How far the replica is; None when the database does not replicate from anything."""
        return None

    @staticmethod
    def position_key(position: str) -> dict[str, int]:
        """A position as comparable numbers (every key must be reached)."""
        raise NotImplementedError

    # --- Session locks (one migrator per database) ------------------------------------------

    @staticmethod
    def try_session_lock(connection: BaseDatabaseWrapper, name: str) -> bool:
        """Take the lock ``name`` on this database if no other session holds it; never wait.

        Held until ``release_session_lock`` or the end of the session. An engine
        without such locks takes none and says it got it.
        """
        return True

    @staticmethod
    def release_session_lock(connection: BaseDatabaseWrapper, name: str) -> None:
        """Release the lock ``name`` taken by ``try_session_lock`` (none if the session ended)."""

    @staticmethod
    def session_lock_holder(connection: BaseDatabaseWrapper, name: str) -> str | None:
        """Who holds the lock ``name``, and how to end that session if stuck; None: unknown."""
        return None

    # --- FleetIdField's counter (one per database) ------------------------------------------

    @staticmethod
    def install_id_counter(connection: BaseDatabaseWrapper) -> None:
        """Create the counter FleetIdField allocates from, unless it is there (idempotent)."""
        raise NotImplementedError(
            f"FleetIdField needs PostgreSQL, MariaDB/MySQL or SQLite, not {connection.vendor!r}."
        )

    @staticmethod
    def allocate_ids(connection: BaseDatabaseWrapper, count: int, now: int) -> int | None:
        """Move the counter ``T`` to ``max(T + count, now + count - 1)`` at once; the new ``T``.

        One statement, one round trip, never undone by the caller's rollback and
        never waiting for another session's open transaction. None: the counter
        is not there (``install_id_counter`` has not run on this database).
        """
        raise NotImplementedError(
            f"FleetIdField needs PostgreSQL, MariaDB/MySQL or SQLite, not {connection.vendor!r}."
        )

    # --- Change capture (the sources of synced models, dbfleet.analytics) -------------------

    #: Whether triggers can write this engine's changes to the change log ``CHANGES``.
    captures_changes: ClassVar[bool] = False

    @staticmethod
    def install_change_log(connection: BaseDatabaseWrapper) -> None:
        """Create the change log ``CHANGES`` and its index, unless they are there (idempotent)."""
        raise NotImplementedError(_NO_CAPTURE.format(vendor=connection.vendor))

    @staticmethod
    def capture_definition(
        connection: BaseDatabaseWrapper, table: str, pk_column: str, labels: Sequence[str]
    ) -> str:
        """How ``captured_tables`` shows ``table`` once ``install_capture`` has run with these."""
        raise NotImplementedError(_NO_CAPTURE.format(vendor=connection.vendor))

    @staticmethod
    def captured_tables(connection: BaseDatabaseWrapper) -> dict[str, str]:
        """Each table with dbfleet's capture triggers -> their definition, as the engine has it."""
        return {}

    @staticmethod
    def install_capture(
        connection: BaseDatabaseWrapper, table: str, pk_column: str, labels: Sequence[str]
    ) -> None:
        """Triggers on ``table`` that log each changed primary key once for each of ``labels``.

        Replaces the capture ``table`` had. Every INSERT, UPDATE (the old and the new
        key) and DELETE is logged, whatever runs it; where the engine has TRUNCATE
        triggers, a TRUNCATE logs ``RELOAD`` (every row changed).
        """
        raise NotImplementedError(_NO_CAPTURE.format(vendor=connection.vendor))

    @staticmethod
    def remove_capture(connection: BaseDatabaseWrapper, table: str) -> None:
        """Drop dbfleet's capture triggers on ``table`` (none there: nothing to do)."""

    @staticmethod
    def lock_for_triggers(connection: BaseDatabaseWrapper, tables: Sequence[str]) -> None:
        """In the transaction open on ``connection``: take the locks that creating triggers
        on ``tables`` takes, without ever waiting for one while holding another (a writer
        that holds one of them and waits for another would deadlock with it).

        Elsewhere than PostgreSQL each trigger is made on its own: nothing to do.
        """

    # --- Moves (dbfleet.moving) --------------------------------------------------------------

    @staticmethod
    def read_one_snapshot(connection: BaseDatabaseWrapper) -> None:
        """Make the transaction just begun on ``connection`` read every row as of one moment.

        Run first in the transaction. SQLite's transactions do already.
        """

    @staticmethod
    def fence(connection: BaseDatabaseWrapper, table: str, message: str) -> None:
        """Triggers on ``table`` that refuse every write with ``message`` (idempotent)."""
        raise NotImplementedError(f"fleet move cannot fence a table on {connection.vendor!r}.")

    @staticmethod
    def unfence(connection: BaseDatabaseWrapper, table: str) -> None:
        """Drop the triggers ``fence`` made on ``table`` (none there: nothing to do)."""

    @staticmethod
    def run_at_once(
        statements: Sequence[tuple[BaseDatabaseWrapper, str, Sequence[Any]]],
    ) -> list[list[tuple[Any, ...]]] | None:
        """Each ``(connection, sql, params)`` at once, from this thread: the rows of each.

        Every statement is sent before any answer is read, so the databases
        work at the same time. None: this engine's driver cannot (the caller
        runs the statements on threads instead).
        """
        return None

    @staticmethod
    def copy_out_text(
        connection: BaseDatabaseWrapper, sql: str, params: Sequence[Any], rows: int
    ) -> Generator[bytes, None, None] | None:
        """The rows of ``sql`` as text, in chunks of about ``rows`` whole rows; None: no such path.

        The text is PostgreSQL's COPY text format: a line a row, values separated
        by tabs, ``\\N`` for NULL, backslash escapes; dates in ISO order; booleans
        ``t`` and ``f``. ClickHouse parses it as ``TabSeparated``.
        """
        return None

    @staticmethod
    def insert_text(
        connection: BaseDatabaseWrapper,
        table: str,
        columns: Sequence[str],
        text: bytes,
        fixed: dict[str, Any],
    ) -> int | None:
        """Rows in the text of :meth:`copy_out_text` inserted into ``columns`` of ``table``.

        ``fixed`` gives the other columns one value for every row. The rows
        written; None: this database cannot take such text (the caller inserts rows).
        """
        return None

    @staticmethod
    def copy_out(
        connection: BaseDatabaseWrapper, sql: str, params: Sequence[Any], size: int
    ) -> Iterator[list[tuple[Any, ...]]] | None:
        """The rows of the query ``sql``, streamed in lists of ``size``; None: no bulk path.

        Values are the driver's, as a cursor returns them. None tells the caller to
        read through the ORM (``QuerySet.iterator()``), which is the bulk path there.
        """
        return None

    @staticmethod
    def copies_as_is(
        source: BaseDatabaseWrapper,
        sql: str,
        params: Sequence[Any],
        target: BaseDatabaseWrapper,
        table: str,
        columns: Sequence[str],
    ) -> bool:
        """Whether :meth:`copy_rows` can move the rows of ``sql`` into ``columns`` of ``table``:
        two databases of this engine whose columns have the same types. Else the caller
        reads the rows and writes them (:meth:`write_rows`)."""
        return False

    @staticmethod
    def copy_rows(
        source: BaseDatabaseWrapper,
        sql: str,
        params: Sequence[Any],
        target: BaseDatabaseWrapper,
        table: str,
        columns: Sequence[str],
    ) -> int:
        """The rows of ``sql`` on ``source`` into ``columns`` of ``table`` on ``target`` in the
        engine's own format, never made into Python values; the rows written. Only where
        :meth:`copies_as_is` says so."""
        raise NotImplementedError(f"{source.vendor} copies no rows as they are.")

    @staticmethod
    def write_rows(
        connection: BaseDatabaseWrapper,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
    ) -> None:
        """Insert ``rows`` (values prepared for ``connection``) into ``columns`` of ``table``.

        An ``executemany`` of one ``INSERT`` (mysqlclient makes it one multi-row
        statement; SQLite runs it in a loop in C).
        """
        marks = ", ".join(["%s"] * len(columns))
        with connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {quoted(connection, table, columns)} VALUES ({marks})", rows
            )
