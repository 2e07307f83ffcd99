"""MariaDB and MySQL: XA transactions, GTID positions, replica status, error numbers."""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Sequence
from typing import Any

from django.db import DatabaseError
from django.db.backends.base.base import BaseDatabaseWrapper

from dbfleet.vendors.base import (
    CAPTURE_PREFIX,
    CHANGES,
    FENCE_PREFIX,
    ID_COUNTER,
    ReplicaStatus,
    Vendor,
    driver_code,
    literal,
    query,
    raw,
)

#: Marks dbfleet's XA transactions in XA RECOVER ("dbft").
XA_FORMAT = 0x64626674
#: ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK.
RETRYABLE = frozenset({1205, 1213})
#: ER_NO_SUCH_TABLE.
NO_SUCH_TABLE = 1146


def _branch(connection: BaseDatabaseWrapper) -> str:
    return str(connection.settings_dict["NAME"])


def _xid(connection: BaseDatabaseWrapper, xid: str) -> tuple[str, str, int]:
    # The server lists every XA transaction on it, whatever the database: the
    # database's name in the branch qualifier tells this one's apart, and the
    # alias two aliases of one database.
    return (xid, f"{_branch(connection)}@{connection.alias}"[:64], XA_FORMAT)


def _lock_name(connection: BaseDatabaseWrapper, name: str) -> str:
    # GET_LOCK names are the server's, whatever the database: the database's name
    # makes them one per database. At most 64 characters, so a long name is hashed.
    full = f"{name}.{_branch(connection)}"
    if len(full) <= 64:
        return full
    return f"{name}.{hashlib.sha256(full.encode()).hexdigest()}"[:64]


def is_mariadb(connection: BaseDatabaseWrapper) -> bool:
    return bool(getattr(connection, "mysql_is_mariadb", False))


def _capture_name(table: str, event: str, prefix: str = CAPTURE_PREFIX) -> str:
    """The name of ``table``'s capture (or fence) trigger for ``event`` (64 characters at most)."""
    name = f"{prefix}{table}_{event}"
    if len(name) <= 64:
        return name
    return f"{prefix}{hashlib.sha256(table.encode()).hexdigest()[:32]}_{event}"


def _capture_bodies(
    connection: BaseDatabaseWrapper, table: str, pk_column: str, labels: Sequence[str]
) -> dict[str, tuple[str, str]]:
    """Trigger name -> (its event, its body), for ``table``'s capture."""
    pk = connection.ops.quote_name(pk_column)

    def log(row: str, op: str) -> str:
        rows = ", ".join(
            f"({literal(label)}, CAST({row}.{pk} AS CHAR), '{op}')" for label in labels
        )
        return f"INSERT INTO {CHANGES} (model, pk, op) VALUES {rows}"

    return {
        _capture_name(table, "delete"): ("DELETE", log("OLD", "D")),
        _capture_name(table, "insert"): ("INSERT", log("NEW", "I")),
        _capture_name(table, "update"): (
            "UPDATE",
            f"BEGIN {log('NEW', 'U')}; IF NOT (OLD.{pk} <=> NEW.{pk}) THEN {log('OLD', 'U')}; "
            "END IF; END",
        ),
    }


class MySQL(Vendor):
    name = "mysql"
    two_phase = True
    connect_timeout_option = "connect_timeout"
    text_sort_key = "WEIGHT_STRING"  # Of the column's own collation.

    @staticmethod
    def begin(connection: BaseDatabaseWrapper, xid: str) -> None:
        raw(connection, "XA START %s, %s, %s", _xid(connection, xid))

    @staticmethod
    def prepare(connection: BaseDatabaseWrapper, xid: str) -> None:
        raw(connection, "XA END %s, %s, %s", _xid(connection, xid))
        raw(connection, "XA PREPARE %s, %s, %s", _xid(connection, xid))

    @staticmethod
    def commit_one_phase(connection: BaseDatabaseWrapper, xid: str) -> None:
        raw(connection, "XA END %s, %s, %s", _xid(connection, xid))
        raw(connection, "XA COMMIT %s, %s, %s ONE PHASE", _xid(connection, xid))

    @staticmethod
    def rollback_active(connection: BaseDatabaseWrapper, xid: str) -> None:
        with contextlib.suppress(DatabaseError):  # already ended after a failed XA END
            raw(connection, "XA END %s, %s, %s", _xid(connection, xid))
        raw(connection, "XA ROLLBACK %s, %s, %s", _xid(connection, xid))

    @staticmethod
    def finish_prepared(connection: BaseDatabaseWrapper, xid: str, commit: bool) -> None:
        verb = "COMMIT" if commit else "ROLLBACK"
        raw(connection, f"XA {verb} %s, %s, %s", _xid(connection, xid))

    @staticmethod
    def wrote(connection: BaseDatabaseWrapper) -> bool | None:
        # Unknown: information_schema.innodb_trx is refreshed only every 0.1 s,
        # and the session's Handler_* counters move with temporary tables too.
        return None

    @staticmethod
    def in_doubt(connection: BaseDatabaseWrapper, prefix: str) -> list[tuple[str, str]]:
        found = []
        mine = f"{_branch(connection)}@"
        for format_id, gtrid_length, _, data in query(connection, "XA RECOVER"):
            data = data.decode() if isinstance(data, bytes) else data
            gtrid, branch = data[:gtrid_length], data[gtrid_length:]
            if format_id == XA_FORMAT and gtrid.startswith(prefix) and branch.startswith(mine):
                found.append((gtrid, data))
        return found

    @staticmethod
    def settle(
        connection: BaseDatabaseWrapper, transaction_id: str, name: str, commit: bool
    ) -> None:
        xid = (transaction_id, name[len(transaction_id) :], XA_FORMAT)
        query(connection, f"XA {'COMMIT' if commit else 'ROLLBACK'} %s, %s, %s", xid)

    @staticmethod
    def probe_options(options: dict[str, Any], seconds: float) -> dict[str, Any]:
        # mysqlclient's timeouts are whole seconds, and they are the client's own:
        # they hold even when the server never answers.
        whole = max(1, math.ceil(seconds))
        return {**options, "connect_timeout": whole, "read_timeout": whole, "write_timeout": whole}

    @staticmethod
    def estimated_rows(connection: BaseDatabaseWrapper, table: str) -> int | None:
        # InnoDB's estimate from its sampled statistics (MySQL 8 caches it for
        # information_schema_stats_expiry seconds; ANALYZE TABLE refreshes it).
        rows = query(
            connection,
            "SELECT TABLE_ROWS FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
            (table,),
        )
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    @staticmethod
    def is_busy(error: DatabaseError) -> bool:
        # XAER_NOTA, which is also MariaDB's answer while the session that
        # prepared the branch is still connected.
        return driver_code(error) == 1397

    @staticmethod
    def is_retryable(error: DatabaseError) -> bool:
        return driver_code(error) in RETRYABLE

    @staticmethod
    def position(connection: BaseDatabaseWrapper) -> str | None:
        if not is_mariadb(connection):
            return None  # MySQL's GTID sets are not compared (yet).
        # None without a binary log: MariaDB then has no GTIDs.
        return query(connection, "SELECT @@GLOBAL.gtid_binlog_pos")[0][0] or None

    @staticmethod
    def replica_status(connection: BaseDatabaseWrapper) -> ReplicaStatus | None:
        # MariaDB 10.5+ and MySQL 8.0.22+; MySQL names the lag column after the source.
        with connection.cursor() as cursor:
            cursor.execute("SHOW REPLICA STATUS")
            row = cursor.fetchone()
            if row is None:
                # Read-only servers replicated by other means (Galera, Aurora readers)
                # show no replica status: read_only is their mark.
                if query(connection, "SELECT @@GLOBAL.read_only")[0][0]:
                    return ReplicaStatus(0.0, None, False)
                return None  # Writable, and it replicates from nothing.
            columns = (column[0] for column in cursor.description)
            status = dict(zip(columns, row, strict=True))
        lag = status.get("Seconds_Behind_Master", status.get("Seconds_Behind_Source"))
        if lag is None:  # Replication is configured but not running.
            return ReplicaStatus(float("inf"), None, True)
        replayed = None
        if "Gtid_IO_Pos" in status:  # MariaDB
            replayed = query(connection, "SELECT @@GLOBAL.gtid_slave_pos")[0][0] or None
        return ReplicaStatus(float(lag), replayed, lag > 0)

    @staticmethod
    def position_key(position: str) -> dict[str, int]:
        found: dict[str, int] = {}
        for gtid in filter(None, position.replace(" ", "").split(",")):
            domain, _, sequence = gtid.rpartition("-")
            domain = domain.partition("-")[0]
            found[domain] = max(found.get(domain, 0), int(sequence))
        return found

    @staticmethod
    def try_session_lock(connection: BaseDatabaseWrapper, name: str) -> bool:
        # 1: taken; 0: another session holds it (a timeout of 0 waits for nothing).
        taken = query(connection, "SELECT GET_LOCK(%s, 0)", (_lock_name(connection, name),))
        return bool(taken[0][0] == 1)

    @staticmethod
    def release_session_lock(connection: BaseDatabaseWrapper, name: str) -> None:
        if connection.connection is None:
            return  # The session has ended, and its locks with it.
        query(connection, "SELECT RELEASE_LOCK(%s)", (_lock_name(connection, name),))

    @staticmethod
    def session_lock_holder(connection: BaseDatabaseWrapper, name: str) -> str | None:
        lock = _lock_name(connection, name)
        holder = query(connection, "SELECT IS_USED_LOCK(%s)", (lock,))[0][0]
        if holder is None:
            return None
        engine = "MariaDB" if is_mariadb(connection) else "MySQL"
        rows = query(
            connection,
            "SELECT USER, HOST, COMMAND, TIME, STATE, LEFT(INFO, 80) "
            "FROM information_schema.PROCESSLIST WHERE ID = %s",
            (holder,),
        )
        details = ""
        if rows:
            user, host, command, seconds, state, current = rows[0]
            details = f" (user {user}@{host}, {command} for {seconds} s"
            details += (f", {state}" if state else "") + (f": {current})" if current else ")")
        return (
            f"{engine} connection id {holder}{details}; if that connection is stuck or its "
            f"process is gone, end it: KILL {holder}"
        )

    # FleetIdField's counter: one row of a MyISAM table, which takes no part in
    # transactions (an UPDATE is done and kept at once, whatever the caller's
    # transaction then does). LAST_INSERT_ID(expr) hands the new value to the
    # client with the UPDATE's own answer (mysql_insert_id(): cursor.lastrowid).
    # MyISAM does not sync to disk: after a crash of the server's machine the row
    # may be older than the last ids handed out, and the clock (the ids' time part)
    # is what keeps new ids above them.

    @staticmethod
    def install_id_counter(connection: BaseDatabaseWrapper) -> None:
        query(
            connection,
            f"CREATE TABLE IF NOT EXISTS {ID_COUNTER} (id TINYINT UNSIGNED NOT NULL PRIMARY KEY, "
            "t BIGINT NOT NULL) ENGINE=MyISAM",
        )
        query(connection, f"INSERT IGNORE INTO {ID_COUNTER} (id, t) VALUES (1, 0)")
        ((engine,),) = query(
            connection,
            "SELECT ENGINE FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
            (ID_COUNTER,),
        )
        if str(engine).lower() != "myisam":
            raise DatabaseError(
                f"{ID_COUNTER} on {connection.alias!r} is an {engine} table; FleetIdField "
                "needs MyISAM, whose writes take no part in transactions (an InnoDB counter "
                "would make every writer wait for the open transactions of the others). Enable "
                f"MyISAM on the server, then DROP TABLE {ID_COUNTER} and migrate again."
            )

    @staticmethod
    def allocate_ids(connection: BaseDatabaseWrapper, count: int, now: int) -> int | None:
        with connection.cursor() as cursor:
            try:
                cursor.execute(
                    f"UPDATE {ID_COUNTER} SET t = LAST_INSERT_ID(GREATEST(t + %s, %s)) "
                    "WHERE id = 1",
                    (count, now + count - 1),
                )
            except DatabaseError as error:
                if driver_code(error) == NO_SUCH_TABLE:
                    return None
                raise
            # Rows matched (Django connects with CLIENT.FOUND_ROWS): 0 if the row is gone.
            return int(cursor.lastrowid) if cursor.rowcount else None

    # Change capture: row triggers write the changed keys to the change log, an InnoDB
    # table, in the writer's transaction. TRUNCATE fires no trigger on MariaDB/MySQL: it
    # is not captured (`fleet sync --full` loads the copy again).

    captures_changes = True

    @staticmethod
    def install_change_log(connection: BaseDatabaseWrapper) -> None:
        query(
            connection,
            f"CREATE TABLE IF NOT EXISTS {CHANGES} ("
            "id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, "
            "model VARCHAR(200) NOT NULL, pk TEXT NULL, op CHAR(1) NOT NULL, "
            "at DOUBLE NOT NULL DEFAULT (UNIX_TIMESTAMP(SYSDATE(6))), "
            f"KEY {CHANGES}_model (model, id)) ENGINE=InnoDB",
        )

    @staticmethod
    def capture_definition(
        connection: BaseDatabaseWrapper, table: str, pk_column: str, labels: Sequence[str]
    ) -> str:
        bodies = _capture_bodies(connection, table, pk_column, labels)
        return ";\n".join(body for _, (_, body) in sorted(bodies.items()))

    @staticmethod
    def captured_tables(connection: BaseDatabaseWrapper) -> dict[str, str]:
        rows = query(
            connection,
            "SELECT EVENT_OBJECT_TABLE, ACTION_STATEMENT FROM information_schema.TRIGGERS "
            "WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME LIKE %s ORDER BY TRIGGER_NAME",
            (CAPTURE_PREFIX.replace("_", "\\_") + "%",),
        )
        found: dict[str, list[str]] = {}
        for table, body in rows:
            found.setdefault(table, []).append(body)
        return {table: ";\n".join(bodies) for table, bodies in found.items()}

    @staticmethod
    def install_capture(
        connection: BaseDatabaseWrapper, table: str, pk_column: str, labels: Sequence[str]
    ) -> None:
        MySQL.remove_capture(connection, table)
        quoted = connection.ops.quote_name(table)
        for name, (event, body) in _capture_bodies(connection, table, pk_column, labels).items():
            query(
                connection,
                f"CREATE TRIGGER {connection.ops.quote_name(name)} AFTER {event} ON {quoted} "
                f"FOR EACH ROW {body}",
            )

    @staticmethod
    def remove_capture(connection: BaseDatabaseWrapper, table: str) -> None:
        rows = query(
            connection,
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = "
            "DATABASE() AND EVENT_OBJECT_TABLE = %s AND TRIGGER_NAME LIKE %s",
            (table, CAPTURE_PREFIX.replace("_", "\\_") + "%"),
        )
        for (name,) in rows:
            query(connection, f"DROP TRIGGER IF EXISTS {connection.ops.quote_name(name)}")

    @staticmethod
    def read_one_snapshot(connection: BaseDatabaseWrapper) -> None:
        # Before the transaction's first read: it starts at that read, with this level.
        query(connection, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")

    @staticmethod
    def fence(connection: BaseDatabaseWrapper, table: str, message: str) -> None:
        # MESSAGE_TEXT holds 128 characters. TRUNCATE fires no trigger here.
        text = literal(message[:128])
        for event in ("INSERT", "UPDATE", "DELETE"):
            name = connection.ops.quote_name(_capture_name(table, event.lower(), FENCE_PREFIX))
            query(connection, f"DROP TRIGGER IF EXISTS {name}")
            query(
                connection,
                f"CREATE TRIGGER {name} BEFORE {event} ON {connection.ops.quote_name(table)} "
                f"FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = {text}",
            )

    @staticmethod
    def unfence(connection: BaseDatabaseWrapper, table: str) -> None:
        for event in ("insert", "update", "delete"):
            name = connection.ops.quote_name(_capture_name(table, event, FENCE_PREFIX))
            query(connection, f"DROP TRIGGER IF EXISTS {name}")
