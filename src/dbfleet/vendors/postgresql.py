"""PostgreSQL: PREPARE TRANSACTION, pg_prepared_xacts, WAL positions, SQLSTATE codes."""

from __future__ import annotations

import contextlib
import hashlib
import math
import selectors
import time
from collections.abc import Generator, Iterator, Sequence
from typing import Any

from django.db import DatabaseError, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from django.db.transaction import TransactionManagementError

from dbfleet.vendors.base import (
    CAPTURE_PREFIX,
    CHANGES,
    FENCE_PREFIX,
    ID_COUNTER,
    RELOAD,
    ReplicaStatus,
    Vendor,
    driver_code,
    literal,
    query,
    quoted,
    raw,
    raw_commit,
    raw_rollback,
)

#: serialization_failure, deadlock_detected, lock_not_available (lock_timeout).
RETRYABLE = frozenset({"40001", "40P01", "55P03"})
#: Seconds ``lock_for_triggers`` tries for the locks of tables in use (writers come and go).
LOCK_DEADLINE = 60.0


def _gid(xid: str, connection: BaseDatabaseWrapper) -> str:
    # Global ids are unique per server, and two databases of one server may
    # take part: the alias keeps them apart.
    return f"{xid}:{connection.alias}"


def _lock_key(name: str) -> int:
    # pg_advisory_lock takes one bigint: the first 8 bytes of the name's SHA-256.
    # Advisory locks belong to the database they are taken in, so the key need
    # not name the database.
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _finish(connection: BaseDatabaseWrapper, gid: str, commit: bool) -> None:
    # COMMIT/ROLLBACK PREPARED cannot run inside a transaction block.
    connection.ensure_connection()  # Recovery may settle on a connection closed meanwhile.
    dbapi = connection.connection
    outside = dbapi.autocommit
    with connection.wrap_database_errors:
        dbapi.autocommit = True
    try:
        raw(connection, f"{'COMMIT' if commit else 'ROLLBACK'} PREPARED {literal(gid)}")
    finally:
        # On a broken connection this fails too; the error above is the one to see.
        with contextlib.suppress(DatabaseError), connection.wrap_database_errors:
            dbapi.autocommit = outside


#: What moves FleetIdField's counter (the sequence ID_COUNTER), in one statement.
ID_FUNCTION = "dbfleet_fleet_ids"
#: undefined_function, undefined_table: the counter is not installed here.
_ID_COUNTER_MISSING = frozenset({"42883", "42P01"})


def _id_function_body() -> str:
    key = _lock_key(ID_COUNTER)
    high, low = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
    # A sequence, because nothing undoes a setval(): the caller's rollback leaves the
    # counter where it is. The lock is the session's, not the transaction's, and it
    # is released before the function returns, so that a caller's open transaction
    # holds nothing that another caller waits for. The handler releases it if an
    # error or a cancel (statement_timeout) comes while it is held: a session keeps
    # its advisory locks through a rollback. It needs no subtransaction id: setval
    # assigns the top-level transaction's.
    return f"""
DECLARE
    last bigint;
BEGIN
    PERFORM pg_advisory_lock({key});
    SELECT greatest(last_value + n, now_t + n - 1) INTO last FROM {ID_COUNTER};
    PERFORM setval('{ID_COUNTER}', last);
    PERFORM pg_advisory_unlock({key});
    RETURN last;
EXCEPTION WHEN OTHERS OR query_canceled THEN
    IF EXISTS (
        SELECT FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
        AND granted AND objsubid = 1 AND classid = {high} AND objid = {low}
    ) THEN
        PERFORM pg_advisory_unlock({key});
    END IF;
    RAISE;
END
"""


#: The capture triggers of a table: one for each statement (its rows in a transition table).
_CAPTURE_TRIGGERS = {
    "insert": "AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows",
    "update": "AFTER UPDATE ON {table} REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "delete": "AFTER DELETE ON {table} REFERENCING OLD TABLE AS old_rows",
    "truncate": "AFTER TRUNCATE ON {table}",
}


def _capture_function(table: str) -> str:
    """The trigger function of ``table``'s capture (63 bytes at most, as every identifier)."""
    name = CAPTURE_PREFIX + table
    if len(name.encode()) <= 63:
        return name
    return CAPTURE_PREFIX + hashlib.sha256(table.encode()).hexdigest()[:24]


def _capture_body(connection: BaseDatabaseWrapper, pk_column: str, labels: Sequence[str]) -> str:
    # Statement triggers with transition tables: a statement that changes a million rows
    # logs them with one INSERT ... SELECT, not a million trigger calls.
    pk = connection.ops.quote_name(pk_column)
    copies = "(VALUES " + ", ".join(f"({literal(label)})" for label in labels) + ") AS c (model)"
    log = f"INSERT INTO {CHANGES} (model, pk, op)"
    return f"""
BEGIN
    IF TG_OP = 'INSERT' THEN
        {log} SELECT c.model, k.{pk}::text, 'I' FROM new_rows AS k, {copies};
    ELSIF TG_OP = 'UPDATE' THEN
        {log} SELECT c.model, k.pk, 'U'
        FROM (SELECT {pk}::text AS pk FROM new_rows UNION SELECT {pk}::text FROM old_rows) AS k,
        {copies};
    ELSIF TG_OP = 'DELETE' THEN
        {log} SELECT c.model, k.{pk}::text, 'D' FROM old_rows AS k, {copies};
    ELSE
        {log} SELECT c.model, NULL, '{RELOAD}' FROM {copies};
    END IF;
    RETURN NULL;
END
"""


def _send(cursor: CursorWrapper, sql: str, params: Sequence[Any]) -> None:
    """Send ``sql`` on ``cursor``'s connection without waiting, as Django would execute it.

    Through the connection's execute wrappers (``capture_queries()``, the write
    guard) and, with a debug cursor, into ``connection.queries``; the time they
    see is the sending only.
    """
    driver = cursor.cursor

    def send(sql: str, params: Any, many: bool, context: dict[str, Any]) -> None:
        with cursor.db.wrap_database_errors:
            cursor.db.validate_no_broken_transaction()
            query = driver.mogrify(sql, params).encode(driver.connection.info.encoding)
            driver.connection.pgconn.send_query(query)

    debug = (
        cursor.debug_sql(sql, params, use_last_executed_query=True)
        if isinstance(cursor, CursorDebugWrapper)
        else contextlib.nullcontext()
    )
    with debug:
        cursor._execute_with_wrappers(sql, params, many=False, executor=send)


def _rows(cursor: CursorWrapper, results: list[Any]) -> list[tuple[Any, ...]]:
    """The rows of a statement's results, loaded by the cursor's adapters; or its error, raised."""
    from psycopg import adapt, errors, pq

    driver = cursor.cursor
    rows: list[tuple[Any, ...]] = []
    with cursor.db.wrap_database_errors:
        for result in results:
            if result.status == pq.ExecStatus.TUPLES_OK:
                loader = adapt.Transformer(driver)
                loader.set_pgresult(result)
                rows += loader.load_rows(0, result.ntuples, tuple)
            elif result.status != pq.ExecStatus.COMMAND_OK:
                raise errors.error_from_result(result, driver.connection.info.encoding)
    return rows


def _binds_client_side(connection: BaseDatabaseWrapper) -> bool:
    """Whether Django runs ``connection``'s statements on psycopg 3's ClientCursor."""
    try:
        from django.db.backends.postgresql.psycopg_any import is_psycopg3
    except ImportError:
        return False
    return is_psycopg3 and not connection.settings_dict["OPTIONS"].get("server_side_binding")


def _begins(cursor: CursorWrapper) -> bool:
    """Whether psycopg would open a transaction before the next statement on ``cursor``."""
    from psycopg import pq

    driver = cursor.cursor.connection
    return not driver.autocommit and driver.info.transaction_status == pq.TransactionStatus.IDLE


def _run_at_once(
    cursors: list[CursorWrapper], queries: list[tuple[str, Sequence[Any]]]
) -> list[list[tuple[Any, ...]]]:
    """Each ``queries[i]`` on ``cursors[i]``: all sent, then each answer read as it arrives."""
    results: dict[int, list[Any]] = {}
    waiting: dict[int, CursorWrapper] = {}
    error: BaseException | None = None
    try:
        for index, cursor in enumerate(cursors):
            try:
                _send(cursor, *queries[index])
            except Exception as failed:
                error = failed
                break
            waiting[index] = cursor
        with selectors.DefaultSelector() as selector:
            for index, cursor in waiting.items():
                pgconn = cursor.cursor.connection.pgconn
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if pgconn.flush() else 0)
                selector.register(pgconn.socket, events, index)
            while waiting:
                for key, events in selector.select():
                    index = key.data
                    cursor = waiting[index]
                    pgconn = cursor.cursor.connection.pgconn
                    with cursor.db.wrap_database_errors:
                        if events & selectors.EVENT_WRITE and not pgconn.flush():
                            selector.modify(key.fileobj, selectors.EVENT_READ, index)
                        pgconn.consume_input()
                        while not pgconn.is_busy():
                            result = pgconn.get_result()
                            if result is None:  # The statement's answer is complete.
                                selector.unregister(key.fileobj)
                                del waiting[index]
                                break
                            results.setdefault(index, []).append(result)
    finally:
        for cursor in waiting.values():  # Interrupted: a connection left mid-answer.
            cursor.db.close()
    if error is not None:
        raise error
    answers: list[list[tuple[Any, ...]]] = []
    for index, cursor in enumerate(cursors):
        try:
            answers.append(_rows(cursor, results.get(index, [])))
        except Exception as failed:
            error = error or failed
    if error is not None:
        raise error
    return answers


class PostgreSQL(Vendor):
    name = "postgresql"
    nulls_first = False
    two_phase = True
    connect_timeout_option = "connect_timeout"

    @staticmethod
    def sorts_text_by_code_point(connection: BaseDatabaseWrapper, collation: str | None) -> bool:
        if collation is None:
            # The database's collation, asked once per connection.
            key = "_dbfleet_collation"
            if key not in connection.__dict__:
                rows = query(
                    connection,
                    "SELECT datcollate FROM pg_database WHERE datname = current_database()",
                )
                connection.__dict__[key] = rows[0][0]
            collation = connection.__dict__[key]
        return collation in ("C", "POSIX", "ucs_basic") or collation.startswith("C.")

    @staticmethod
    def begin(connection: BaseDatabaseWrapper, xid: str) -> None:
        pass  # A transaction is prepared at its end; nothing marks its start.

    @staticmethod
    def prepare(connection: BaseDatabaseWrapper, xid: str) -> None:
        status = raw(connection, f"PREPARE TRANSACTION {literal(_gid(xid, connection))}")
        if status != "PREPARE TRANSACTION":
            # An error earlier in the block, caught without a savepoint, aborted
            # the transaction: PostgreSQL then rolls back instead of preparing.
            raise TransactionManagementError(
                f"The transaction on {connection.alias!r} was aborted by an earlier error "
                f"(PREPARE TRANSACTION answered {status!r}); nothing is committed. Catch "
                "database errors inside a nested atomic block, which rolls back to a savepoint."
            )

    @staticmethod
    def commit_one_phase(connection: BaseDatabaseWrapper, xid: str) -> None:
        raw_commit(connection)

    @staticmethod
    def rollback_active(connection: BaseDatabaseWrapper, xid: str) -> None:
        raw_rollback(connection)

    @staticmethod
    def finish_prepared(connection: BaseDatabaseWrapper, xid: str, commit: bool) -> None:
        _finish(connection, _gid(xid, connection), commit)

    @staticmethod
    def wrote(connection: BaseDatabaseWrapper) -> bool | None:
        # A transaction gets an id when it first writes (or locks a row).
        return bool(query(connection, "SELECT pg_current_xact_id_if_assigned() IS NOT NULL")[0][0])

    @staticmethod
    def in_doubt(connection: BaseDatabaseWrapper, prefix: str) -> list[tuple[str, str]]:
        rows = query(
            connection,
            "SELECT gid FROM pg_prepared_xacts "
            "WHERE database = current_database() AND gid LIKE %s ORDER BY prepared",
            (prefix + "%",),
        )
        return [(gid.rsplit(":", 1)[0], gid) for (gid,) in rows]

    @staticmethod
    def settle(
        connection: BaseDatabaseWrapper, transaction_id: str, name: str, commit: bool
    ) -> None:
        _finish(connection, name, commit)

    @staticmethod
    def prepared_transactions_limit(connection: BaseDatabaseWrapper) -> int | None:
        return int(query(connection, "SHOW max_prepared_transactions")[0][0])

    @staticmethod
    def estimated_rows(connection: BaseDatabaseWrapper, table: str) -> int | None:
        # As the planner estimates: the rows per page the last VACUUM or ANALYZE saw,
        # times the pages the table has now. Never analyzed (reltuples -1), or analyzed
        # empty and filled since: no estimate. (pg_stat's n_live_tup lags a session's
        # writes until that session's statistics are flushed.)
        rows = query(
            connection,
            "SELECT reltuples, relpages, "
            "pg_relation_size(oid) / current_setting('block_size')::int "
            "FROM pg_class WHERE oid = to_regclass(%s)",
            (connection.ops.quote_name(table),),
        )
        if not rows or rows[0][0] < 0:
            return None
        tuples, pages, now = rows[0]
        if pages > 0:
            estimate: int = round(tuples / pages * now)
            return estimate
        return 0 if now == 0 else None

    @staticmethod
    def probe_options(options: dict[str, Any], seconds: float) -> dict[str, Any]:
        # libpq's connect_timeout is whole seconds, at least 2; statement_timeout
        # is the server's, in milliseconds.
        server = f"-c statement_timeout={math.ceil(seconds * 1000)}"
        return {
            **options,
            "connect_timeout": max(2, math.ceil(seconds)),
            "options": f"{options.get('options', '')} {server}".strip(),
        }

    @staticmethod
    def unsynced(sql: str, autocommit: bool) -> str:
        sql = f"SET LOCAL synchronous_commit TO OFF; {sql}"  # LOCAL: inside a transaction
        return f"BEGIN; {sql}; COMMIT" if autocommit else sql

    @staticmethod
    def is_gone(error: DatabaseError) -> bool:
        return driver_code(error) == "42704"  # undefined_object

    @staticmethod
    def is_busy(error: DatabaseError) -> bool:
        return driver_code(error) == "55006"  # object_in_use

    @staticmethod
    def is_retryable(error: DatabaseError) -> bool:
        return driver_code(error) in RETRYABLE

    @staticmethod
    def position(connection: BaseDatabaseWrapper) -> str | None:
        return query(connection, "SELECT pg_current_wal_insert_lsn()::text")[0][0] or None

    @staticmethod
    def replica_status(connection: BaseDatabaseWrapper) -> ReplicaStatus | None:
        ((recovering, replayed, behind, since_replay),) = query(
            connection,
            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
            # Behind: WAL received but not replayed, or no WAL coming in at all (the
            # receiver is not running, so nothing says the replica is current).
            "pg_last_wal_receive_lsn() IS DISTINCT FROM pg_last_wal_replay_lsn() "
            "OR NOT EXISTS (SELECT FROM pg_stat_wal_receiver), "
            "COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)",
        )
        if not recovering:
            return None  # A primary, writable: it replicates from nothing.
        return ReplicaStatus(float(since_replay) if behind else 0.0, replayed, bool(behind))

    @staticmethod
    def position_key(position: str) -> dict[str, int]:
        high, _, low = position.partition("/")
        return {"": int(high, 16) << 32 | int(low, 16)}

    @staticmethod
    def try_session_lock(connection: BaseDatabaseWrapper, name: str) -> bool:
        return bool(query(connection, "SELECT pg_try_advisory_lock(%s)", (_lock_key(name),))[0][0])

    @staticmethod
    def release_session_lock(connection: BaseDatabaseWrapper, name: str) -> None:
        if connection.connection is None:
            return  # The session has ended, and its locks with it.
        query(connection, "SELECT pg_advisory_unlock(%s)", (_lock_key(name),))

    @staticmethod
    def session_lock_holder(connection: BaseDatabaseWrapper, name: str) -> str | None:
        key = _lock_key(name)
        # A bigint advisory key is stored as classid (high half), objid (low half), objsubid 1.
        rows = query(
            connection,
            "SELECT a.pid, a.application_name, host(a.client_addr), "
            "to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ'), a.state, "
            "EXTRACT(EPOCH FROM now() - a.query_start)::int, left(a.query, 80) "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid::bigint = %s AND l.objid::bigint = %s",
            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
        )
        if not rows:
            return None
        pid, application, client, since, state, seconds, current = rows[0]
        details = [f"application {application!r}"] if application else []
        details.append(f"client {client or 'local socket'}")
        details.append(f"connected since {since}")
        if state:
            details.append(f"{state} for {seconds} s: {current}" if current else state)
        return (
            f"PostgreSQL session pid {pid} ({', '.join(details)}); if that session is stuck "
            f"or its process is gone, end it: SELECT pg_terminate_backend({pid})"
        )

    @staticmethod
    def install_id_counter(connection: BaseDatabaseWrapper) -> None:
        body = _id_function_body()
        ((counter, current),) = query(
            connection,
            f"SELECT to_regclass({literal(ID_COUNTER)}) IS NOT NULL, "
            f"(SELECT prosrc = %s FROM pg_proc "
            f"WHERE oid = to_regprocedure({literal(ID_FUNCTION + '(bigint, bigint)')}))",
            (body,),
        )
        if not counter:
            query(connection, f"CREATE SEQUENCE IF NOT EXISTS {ID_COUNTER} MINVALUE 0 START 0")
        if not current:
            query(
                connection,
                f"CREATE OR REPLACE FUNCTION {ID_FUNCTION}(n bigint, now_t bigint) "
                f"RETURNS bigint LANGUAGE plpgsql VOLATILE AS $dbfleet${body}$dbfleet$",
            )

    @staticmethod
    def allocate_ids(connection: BaseDatabaseWrapper, count: int, now: int) -> int | None:
        sql = f"SELECT {ID_FUNCTION}(%s::bigint, %s::bigint)"
        options = connection.settings_dict.get("OPTIONS") or {}
        # Outside a transaction the statement is one of its own, and setval() makes its
        # commit wait for the disk: done without waiting (it is flushed with the next
        # commit that does wait, such as the INSERT of the id). Several statements in
        # one go need client-side binding, Django's default.
        alone = connection.get_autocommit() and not options.get("server_side_binding")
        if alone:
            sql = PostgreSQL.unsynced(sql, autocommit=True)
        with connection.cursor() as cursor:
            try:
                cursor.execute(sql, (count, now))
            except DatabaseError as error:
                if alone:  # BEGIN ran; the rest did not.
                    raw(connection, "ROLLBACK")
                if driver_code(error) in _ID_COUNTER_MISSING:
                    return None
                raise
            while cursor.description is None and cursor.nextset():
                pass  # BEGIN, SET LOCAL: to the SELECT's result.
            return int(cursor.fetchone()[0])

    # Change capture: statement triggers write the changed keys to the change log, in the
    # writer's transaction, so that the log rows become visible when the rows do.

    captures_changes = True

    @staticmethod
    def install_change_log(connection: BaseDatabaseWrapper) -> None:
        query(
            connection,
            f"CREATE TABLE IF NOT EXISTS {CHANGES} ("
            "id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
            "model varchar(200) NOT NULL, pk text, op char(1) NOT NULL, "
            "at double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp()))",
        )
        query(connection, f"CREATE INDEX IF NOT EXISTS {CHANGES}_model ON {CHANGES} (model, id)")

    @staticmethod
    def capture_definition(
        connection: BaseDatabaseWrapper, table: str, pk_column: str, labels: Sequence[str]
    ) -> str:
        names = ",".join(sorted(CAPTURE_PREFIX + event for event in _CAPTURE_TRIGGERS))
        return f"{_capture_body(connection, pk_column, labels)}\n{names}"

    @staticmethod
    def captured_tables(connection: BaseDatabaseWrapper) -> dict[str, str]:
        rows = query(
            connection,
            "SELECT c.relname, t.tgname, p.prosrc FROM pg_trigger t "
            "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc p ON p.oid = t.tgfoid "
            "WHERE t.tgname LIKE %s AND pg_table_is_visible(c.oid) ORDER BY t.tgname",
            (CAPTURE_PREFIX.replace("_", "\\_") + "%",),
        )
        found: dict[str, tuple[set[str], list[str]]] = {}
        for table, trigger, body in rows:
            bodies, names = found.setdefault(table, (set(), []))
            bodies.add(body)
            names.append(trigger)
        return {
            table: "|".join(sorted(bodies)) + "\n" + ",".join(names)
            for table, (bodies, names) in found.items()
        }

    @staticmethod
    def install_capture(
        connection: BaseDatabaseWrapper, table: str, pk_column: str, labels: Sequence[str]
    ) -> None:
        PostgreSQL.remove_capture(connection, table)
        function = connection.ops.quote_name(_capture_function(table))
        body = _capture_body(connection, pk_column, labels)
        query(
            connection,
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql "
            f"AS $dbfleet${body}$dbfleet$",
        )
        quoted = connection.ops.quote_name(table)
        for event, when in _CAPTURE_TRIGGERS.items():
            query(
                connection,
                f"CREATE TRIGGER {CAPTURE_PREFIX}{event} {when.format(table=quoted)} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
            )

    @staticmethod
    def remove_capture(connection: BaseDatabaseWrapper, table: str) -> None:
        rows = query(
            connection,
            "SELECT t.tgname, t.tgfoid::regprocedure::text FROM pg_trigger t "
            "WHERE t.tgrelid = to_regclass(%s) AND t.tgname LIKE %s",
            (connection.ops.quote_name(table), CAPTURE_PREFIX.replace("_", "\\_") + "%"),
        )
        quoted = connection.ops.quote_name(table)
        for trigger, _ in rows:
            query(connection, f"DROP TRIGGER IF EXISTS {trigger} ON {quoted}")
        for function in sorted({function for _, function in rows}):
            query(connection, f"DROP FUNCTION IF EXISTS {function}")

    @staticmethod
    def lock_for_triggers(connection: BaseDatabaseWrapper, tables: Sequence[str]) -> None:
        if not tables:
            return
        names = ", ".join(connection.ops.quote_name(table) for table in tables)
        deadline = time.monotonic() + LOCK_DEADLINE
        while True:
            try:
                # All at once or none (NOWAIT), in a savepoint that a refusal rolls back.
                with transaction.atomic(using=connection.alias):
                    query(connection, f"LOCK TABLE {names} IN SHARE ROW EXCLUSIVE MODE NOWAIT")
                return
            except DatabaseError as error:
                if driver_code(error) != "55P03" or time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    @staticmethod
    def read_one_snapshot(connection: BaseDatabaseWrapper) -> None:
        query(connection, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")

    @staticmethod
    def fence(connection: BaseDatabaseWrapper, table: str, message: str) -> None:
        quoted_table = connection.ops.quote_name(table)
        query(
            connection,
            f"CREATE OR REPLACE FUNCTION {FENCE_PREFIX}refuse() RETURNS trigger "
            "LANGUAGE plpgsql AS $dbfleet$BEGIN RAISE EXCEPTION '%', TG_ARGV[0] "
            "USING ERRCODE = 'read_only_sql_transaction'; END$dbfleet$",
        )
        query(connection, f"DROP TRIGGER IF EXISTS {FENCE_PREFIX}writes ON {quoted_table}")
        query(
            connection,
            f"CREATE TRIGGER {FENCE_PREFIX}writes BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE "
            f"ON {quoted_table} FOR EACH STATEMENT EXECUTE FUNCTION "
            f"{FENCE_PREFIX}refuse({literal(message)})",
        )

    @staticmethod
    def unfence(connection: BaseDatabaseWrapper, table: str) -> None:
        quoted_table = connection.ops.quote_name(table)
        if query(connection, "SELECT to_regclass(%s)", (quoted_table,))[0][0]:
            query(connection, f"DROP TRIGGER IF EXISTS {FENCE_PREFIX}writes ON {quoted_table}")

    @staticmethod
    def run_at_once(
        statements: Sequence[tuple[BaseDatabaseWrapper, str, Sequence[Any]]],
    ) -> list[list[tuple[Any, ...]]] | None:
        """Every statement sent (libpq's asynchronous API), then every answer read as it comes.

        Only with psycopg 3's client-side binding (Django's default), and not on a
        connection whose transaction has yet to begin: psycopg sends its ``BEGIN``
        (with the isolation level) before a statement it runs itself, not before
        one sent here. If one database fails, the others' answers are still read
        before its error is raised; if this is interrupted, the connections still
        waiting are closed.
        """
        if not statements or not _binds_client_side(statements[0][0]):
            return None
        with contextlib.ExitStack() as stack:
            cursors = [stack.enter_context(connection.cursor()) for connection, _, _ in statements]
            if any(_begins(cursor) for cursor in cursors):
                return None
            return _run_at_once(cursors, [(sql, params) for _, sql, params in statements])

    @staticmethod
    def copy_out(
        connection: BaseDatabaseWrapper, sql: str, params: Sequence[Any], size: int
    ) -> Iterator[list[tuple[Any, ...]]] | None:
        return _copy_out(connection, sql, params, size)

    @staticmethod
    def copies_as_is(
        source: BaseDatabaseWrapper,
        sql: str,
        params: Sequence[Any],
        target: BaseDatabaseWrapper,
        table: str,
        columns: Sequence[str],
    ) -> bool:
        # Binary COPY reads a value back only as the type it was written as.
        if target.vendor != "postgresql" or not _binds_client_side(source):
            return False
        names = ", ".join(target.ops.quote_name(column) for column in columns)
        with source.cursor() as reading, target.cursor() as writing:
            reading.execute(f"SELECT * FROM ({sql}) AS q LIMIT 0", params)
            writing.execute(f"SELECT {names} FROM {target.ops.quote_name(table)} LIMIT 0")
            return [c.type_code for c in reading.description] == [
                c.type_code for c in writing.description
            ]

    @staticmethod
    def copy_rows(
        source: BaseDatabaseWrapper,
        sql: str,
        params: Sequence[Any],
        target: BaseDatabaseWrapper,
        table: str,
        columns: Sequence[str],
    ) -> int:
        # Binary COPY out of one and into the other: the server's own bytes.
        with source.cursor() as reading, target.cursor() as writing:
            with (
                source.wrap_database_errors,
                target.wrap_database_errors,
                reading.cursor.copy(f"COPY ({sql}) TO STDOUT (FORMAT BINARY)", params) as out,
                writing.cursor.copy(
                    f"COPY {quoted(target, table, columns)} FROM STDIN (FORMAT BINARY)"
                ) as into,
            ):
                for block in out:
                    into.write(block)
            written: int = writing.cursor.rowcount
        return written

    @staticmethod
    def write_rows(
        connection: BaseDatabaseWrapper,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
    ) -> None:
        # COPY FROM STDIN, each value adapted by psycopg as a query parameter would be.
        from django.db.backends.postgresql.psycopg_any import is_psycopg3

        if not is_psycopg3:
            return Vendor.write_rows(connection, table, columns, rows)
        with (
            connection.cursor() as cursor,
            connection.wrap_database_errors,
            cursor.cursor.copy(f"COPY {quoted(connection, table, columns)} FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)

    @staticmethod
    def copy_out_text(
        connection: BaseDatabaseWrapper, sql: str, params: Sequence[Any], rows: int
    ) -> Generator[bytes, None, None] | None:
        return _copy_out_text(connection, sql, params, rows)


def _copy_out(
    connection: BaseDatabaseWrapper, sql: str, params: Sequence[Any], size: int
) -> Iterator[list[tuple[Any, ...]]]:
    # COPY ... TO STDOUT in the binary format: the server sends every row of one snapshot
    # as one stream, with no cursor to page through; psycopg reads each value with the
    # loader of its column's type (asked of the query first, as a cursor would know it).
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM ({sql}) AS q LIMIT 0", params)
        types = [column.type_code for column in cursor.description]
        with (
            connection.wrap_database_errors,
            cursor.cursor.copy(f"COPY ({sql}) TO STDOUT (FORMAT BINARY)", params) as copy,
        ):
            copy.set_types(types)
            batch: list[tuple[Any, ...]] = []
            for row in copy.rows():
                batch.append(row)
                if len(batch) >= size:
                    yield batch
                    batch = []
            if batch:
                yield batch


def _copy_out_text(
    connection: BaseDatabaseWrapper, sql: str, params: Sequence[Any], rows: int
) -> Generator[bytes, None, None]:
    # COPY's text format as the server writes it, never parsed here: libpq hands it out a
    # row at a time (each ends with a newline; one inside a value is written \n), kept as
    # the buffers psycopg returns and joined once per block. DateStyle decides the order
    # of a date's parts: ISO, for this statement.
    with connection.cursor() as cursor:
        cursor.execute("SHOW DateStyle")
        (style,) = cursor.fetchone()
        if not style.startswith("ISO"):
            cursor.execute("SET DateStyle = 'ISO'")
        try:
            with (
                connection.wrap_database_errors,
                cursor.cursor.copy(f"COPY ({sql}) TO STDOUT", params) as copy,
            ):
                pending: list[bytes | memoryview] = []
                for row in copy:
                    pending.append(row)
                    if len(pending) >= rows:
                        yield b"".join(pending)
                        pending = []
                if pending:
                    yield b"".join(pending)
        finally:
            if not style.startswith("ISO") and connection.is_usable():
                cursor.execute("SET DateStyle = %s", [style])
