"""``dbfleet.sql``: which statements write, checked against a table and against the engines."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.db import DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from hypothesis import given, settings
from hypothesis import strategies as st

from dbfleet.sql import Kind, classify, is_read, is_write
from tests.settings import ENGINES

READ, WRITE, CONTROL = Kind.READ, Kind.WRITE, Kind.CONTROL

# --- The classifier alone ------------------------------------------------------------------

CASES: list[tuple[str, Kind]] = [
    # Reads, however they are dressed.
    ("SELECT 1", READ),
    ("select * from t", READ),
    ("SeLeCt id FrOm t", READ),
    ("\n\t  SELECT 1", READ),
    ("-- a note\nSELECT 1", READ),
    ("/* a tag */ SELECT 1", READ),
    ("/* one */ -- two\n/* three */ SELECT 1", READ),
    ("/* outer /* nested */ still the comment */ SELECT 1", READ),
    ("/* comment */", READ),
    ("", READ),
    ("SELECT 'delete' FROM t", READ),
    ('SELECT "update", `delete` FROM "insert"', READ),
    ("SELECT 'it''s; DELETE FROM t' FROM t", READ),
    ("SELECT $$ delete from t $$", READ),
    ("SELECT $body$ (delete from t) $body$", READ),
    ("SELECT substring(name FROM 1 FOR 2) FROM t", READ),
    ("SELECT id FROM t WHERE format = 'for update'", READ),
    ("SELECT lastval(), currval('s')", READ),
    ("(SELECT 1) UNION (SELECT 2)", READ),
    ("SELECT 1 FROM t WHERE id IN (SELECT id FROM u)", READ),
    ("WITH x AS (SELECT 1) SELECT * FROM x", READ),
    ("with x as (select 1), y (a) as (select 2) select * from x, y", READ),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r", READ),
    ("WITH x AS MATERIALIZED (SELECT 1) SELECT * FROM x", READ),
    ("WITH x AS NOT MATERIALIZED (SELECT 1) SELECT * FROM x", READ),
    ("WITH x AS (SELECT 'delete' AS \"update\", '(' AS p) SELECT * FROM x", READ),
    ("WITH x AS (SELECT 1) (SELECT * FROM x)", READ),
    ("WITH x AS (SELECT 1) VALUES (1)", READ),
    (
        "WITH RECURSIVE r(id, parent) AS (SELECT id, parent FROM t UNION ALL "
        "SELECT t.id, t.parent FROM t JOIN r ON t.parent = r.id) "
        "SEARCH DEPTH FIRST BY id SET ordercol CYCLE id SET is_cycle USING path "
        "SELECT * FROM r",
        READ,
    ),
    ("EXPLAIN SELECT 1", READ),
    ("explain delete from t", READ),
    ("EXPLAIN QUERY PLAN DELETE FROM t", READ),
    ("EXPLAIN (ANALYZE false, FORMAT JSON) DELETE FROM t", READ),
    ("EXPLAIN (ANALYZE off) UPDATE t SET a = 1", READ),
    ("EXPLAIN ANALYZE SELECT 1", READ),
    ("EXPLAIN (ANALYZE) SELECT 1", READ),
    ("EXPLAIN FORMAT=JSON SELECT 1", READ),
    ("DESCRIBE t", READ),
    ("DESC t", READ),
    ("SHOW TABLES", READ),
    ("show server_version", READ),
    ("PRAGMA table_info(t)", READ),
    ("PRAGMA main.table_info(t)", READ),
    ("PRAGMA foreign_key_check", READ),
    ("PRAGMA integrity_check(10)", READ),
    ("PRAGMA foreign_keys", READ),
    ("PRAGMA journal_mode", READ),
    ("VALUES (1), (2)", READ),
    ("TABLE t", READ),
    ("COPY t TO STDOUT", READ),
    ("COPY t (a, b) TO STDOUT WITH (FORMAT csv)", READ),
    ("COPY (SELECT * FROM t) TO STDOUT", READ),
    ("ANALYZE SELECT * FROM t", READ),
    ("ANALYZE FORMAT=JSON SELECT * FROM t", READ),
    ("SELECT 1; SELECT 2", READ),
    (";", READ),
    # Writes.
    ("INSERT INTO t VALUES (1)", WRITE),
    ("  insert into t values (1)", WRITE),
    ("update t set a = 1", WRITE),
    ("Delete From t", WRITE),
    ("-- SELECT\nDELETE FROM t", WRITE),
    ("/* SELECT */ DELETE FROM t", WRITE),
    ("/* a /* b */ c */ /* d */ -- e\n\n DELETE FROM t", WRITE),
    ("/* unclosed", WRITE),
    ("/* unclosed /* nested */ DELETE FROM t", WRITE),
    ("SELECT 'unclosed; DELETE FROM t", WRITE),
    ("SELECT $x$ unclosed; DELETE FROM t", WRITE),
    ("SELECT $a$ $A$; DELETE FROM t; SELECT $a$", WRITE),
    ("WITH x AS (SELECT 1) DELETE FROM t", WRITE),
    ("WITH x AS (SELECT 1) UPDATE t SET a = 1", WRITE),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", WRITE),
    ("WITH x AS (SELECT 1) MERGE INTO t USING x ON true WHEN MATCHED THEN DELETE", WRITE),
    ("with recursive r(n) as (select 1 union all select n + 1 from r) delete from t", WRITE),
    ("WITH x AS (SELECT 'delete' AS \"select\", ')' AS p) DELETE FROM t", WRITE),
    ("WITH x AS (SELECT (1)), y AS (SELECT '(') UPDATE t SET a = 1", WRITE),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", WRITE),
    ("WITH d AS (update t set a = 1 RETURNING *) SELECT 1", WRITE),
    ("WITH i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT * FROM i", WRITE),
    ("WITH x AS (SELECT 1), d AS MATERIALIZED (DELETE FROM t RETURNING 1) SELECT 1", WRITE),
    ("WITH x AS (SELECT * FROM t FOR UPDATE) SELECT * FROM x", WRITE),
    ("WITH x AS (SELECT 1) SELECT * FROM t FOR UPDATE", WRITE),
    ("WITH", WRITE),
    ("WITH x AS SELECT 1", WRITE),
    ("WITH x AS (SELECT 1", WRITE),
    ("SELECT * FROM t FOR UPDATE", WRITE),
    ("select * from t for update skip locked", WRITE),
    ("SELECT * FROM t FOR SHARE", WRITE),
    ("SELECT * FROM t FOR NO KEY UPDATE", WRITE),
    ("SELECT * FROM t FOR KEY SHARE", WRITE),
    ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", WRITE),
    ("SELECT * FROM t LOCK IN SHARE MODE", WRITE),
    ("SELECT * FROM t /* lock */ FOR -- now\n UPDATE", WRITE),
    ("SELECT * INTO new_table FROM t", WRITE),
    ("SELECT 1 INTO @x", WRITE),
    ("SELECT * FROM t INTO OUTFILE '/tmp/t'", WRITE),
    ("SELECT nextval('s')", WRITE),
    ("SELECT setval('s', 1)", WRITE),
    ("SELECT NEXT VALUE FOR s", WRITE),
    ("REPLACE INTO t VALUES (1)", WRITE),
    ("INSERT OR REPLACE INTO t VALUES (1)", WRITE),
    ("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE", WRITE),
    ("COPY t FROM STDIN", WRITE),
    ("copy t (a, b) from '/tmp/t.csv'", WRITE),
    ("COPY t TO '/tmp/t.csv'", WRITE),
    ("COPY t TO PROGRAM 'gzip > /tmp/t.gz'", WRITE),
    ("COPY (DELETE FROM t RETURNING *) TO STDOUT", WRITE),
    ("COPY (SELECT 1", WRITE),
    ("CALL refresh_totals()", WRITE),
    ("DO $$ BEGIN PERFORM 1; END $$", WRITE),
    ("DO 1", WRITE),
    ("LOCK TABLE t", WRITE),
    ("LOCK TABLES t WRITE", WRITE),
    ("LOAD DATA INFILE '/tmp/t' INTO TABLE t", WRITE),
    ("LOAD 'auto_explain'", WRITE),
    ("VACUUM", WRITE),
    ("vacuum full t", WRITE),
    ("ANALYZE", WRITE),
    ("ANALYZE t", WRITE),
    ("ANALYZE (VERBOSE) t", WRITE),
    ("ANALYZE TABLE t", WRITE),
    ("ANALYZE DELETE FROM t", WRITE),
    ("REINDEX TABLE t", WRITE),
    ("CLUSTER t", WRITE),
    ("REFRESH MATERIALIZED VIEW v", WRITE),
    ("EXPLAIN ANALYZE DELETE FROM t", WRITE),
    ("EXPLAIN ANALYSE UPDATE t SET a = 1", WRITE),
    ("EXPLAIN (ANALYZE) DELETE FROM t", WRITE),
    ("EXPLAIN (ANALYZE true, BUFFERS) INSERT INTO t VALUES (1)", WRITE),
    ("EXPLAIN (ANALYZE '0') DELETE FROM t", WRITE),
    ("EXPLAIN ANALYZE VERBOSE WITH d AS (DELETE FROM t RETURNING 1) SELECT 1", WRITE),
    ("EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE", WRITE),
    ("EXPLAIN ANALYZE EXECUTE q", WRITE),
    ("EXPLAIN (ANALYZE", WRITE),
    ("CREATE TABLE t (a int)", WRITE),
    ("create index i on t (a)", WRITE),
    ("ALTER TABLE t ADD COLUMN b int", WRITE),
    ("DROP TABLE t", WRITE),
    ("TRUNCATE t", WRITE),
    ("GRANT SELECT ON t TO someone", WRITE),
    ("REVOKE SELECT ON t FROM someone", WRITE),
    ("RENAME TABLE t TO u", WRITE),
    ("COMMENT ON TABLE t IS 'x'", WRITE),
    ("ALTER SYSTEM SET work_mem = '4MB'", WRITE),
    ("PRAGMA foreign_keys = ON", WRITE),
    ("PRAGMA journal_mode=WAL", WRITE),
    ("PRAGMA journal_mode(WAL)", WRITE),
    ("PRAGMA main.user_version = 3", WRITE),
    ("PRAGMA optimize", WRITE),
    ("PRAGMA wal_checkpoint", WRITE),
    ("PRAGMA", WRITE),
    ("SET GLOBAL read_only = 0", WRITE),
    ("SET PERSIST max_connections = 10", WRITE),
    ("SET @@global.sql_mode = ''", WRITE),
    ("SET SESSION sql_mode = '', GLOBAL read_only = 0", WRITE),
    ("SET PASSWORD = 'x'", WRITE),
    ("SET DEFAULT ROLE ALL TO someone", WRITE),
    ("SET STATEMENT max_statement_time = 1 FOR DELETE FROM t", WRITE),
    ("SET STATEMENT max_statement_time = 1", WRITE),
    ("SET @x = (SELECT a FROM t FOR UPDATE)", WRITE),
    ("SET @id = NEXTVAL(s)", WRITE),
    ("RESET MASTER", WRITE),
    ("RESET SLAVE", WRITE),
    ("START SLAVE", WRITE),
    ("PREPARE q AS DELETE FROM t", WRITE),
    ("PREPARE q FROM 'SELECT 1'", WRITE),
    ("EXECUTE q", WRITE),
    ("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", WRITE),
    ("DECLARE x INT", WRITE),
    ("NOTIFY channel", WRITE),
    ("LISTEN channel", WRITE),
    ("ATTACH DATABASE 'other.db' AS other", WRITE),
    ("CHECKPOINT", WRITE),
    ("'SELECT 1'", WRITE),
    ("SELECT 1; DELETE FROM t", WRITE),
    ("select 1;delete from t", WRITE),
    ("BEGIN; DELETE FROM t; COMMIT", WRITE),
    ("SELECT 'a\\'; DELETE FROM t; --'", WRITE),  # PostgreSQL runs this DELETE
    ("SELECT E'a\\'; DELETE FROM t; --'", WRITE),  # and SQLite this one
    ("SELECT $$; DELETE FROM t$$", WRITE),  # and MariaDB this one: $$ is a name there
    ("SELECT $body$ $$ ; DELETE FROM t $body$", WRITE),
    ("/* a /* b */ DELETE FROM t -- */ SELECT 1", WRITE),  # SQLite's comments do not nest
    ("/* a /* b */ DELETE FROM t; -- */ SELECT 1", WRITE),
    ("SELECT 1 */ ; DELETE FROM t", WRITE),
    ("SELECT 1 # ; DELETE FROM t", WRITE),  # and MariaDB this one
    ("SELECT 1 # comment\n; DELETE FROM t", WRITE),
    ("SELECT 1 --x\n; DELETE FROM t", WRITE),
    ("/*!50000 DELETE FROM t */", WRITE),
    ("/*M!100100 DELETE FROM t */ SELECT 1", WRITE),
    ("/*! DELETE FROM t */ SELECT 1", WRITE),
    ("SELECT 1 /* ; DELETE FROM t */", READ),
    ("SELECT 1 -- ; DELETE FROM t", READ),
    ("SELECT 1 /*+ hint */", READ),
    # Transaction control and session state.
    ("BEGIN", CONTROL),
    ("BEGIN IMMEDIATE", CONTROL),
    ("begin read only", CONTROL),
    ("START TRANSACTION READ ONLY", CONTROL),
    ("COMMIT", CONTROL),
    ("END", CONTROL),
    ("ROLLBACK", CONTROL),
    ("ABORT", CONTROL),
    ('SAVEPOINT "s140234_x1"', CONTROL),
    ('RELEASE SAVEPOINT "s140234_x1"', CONTROL),
    ('ROLLBACK TO SAVEPOINT "s140234_x1"', CONTROL),
    ("savepoint `s1`", CONTROL),
    ("RELEASE s1", CONTROL),
    ("XA START 'x', 'y', 1", CONTROL),
    ("XA END 'x'", CONTROL),
    ("XA PREPARE 'x'", CONTROL),
    ("XA COMMIT 'x' ONE PHASE", CONTROL),
    ("XA RECOVER", CONTROL),
    ("PREPARE TRANSACTION 'x'", CONTROL),
    ("COMMIT PREPARED 'x'", CONTROL),
    ("ROLLBACK PREPARED 'x'", CONTROL),
    ("SET search_path = public", CONTROL),
    ("SET TIME ZONE 'UTC'", CONTROL),
    ("set local statement_timeout = 0", CONTROL),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", CONTROL),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", CONTROL),
    ("SET NAMES utf8mb4", CONTROL),
    ("SET @global = 1", CONTROL),
    ("SET search_path = global", CONTROL),
    ("SET @@session.sql_mode = 'TRADITIONAL'", CONTROL),
    ("SET FOREIGN_KEY_CHECKS = 0", CONTROL),
    ("SET CONSTRAINTS ALL IMMEDIATE", CONTROL),
    ("SET ROLE someone", CONTROL),
    ("SET STATEMENT max_statement_time = 1 FOR SELECT 1", CONTROL),
    ("RESET ALL", CONTROL),
    ("RESET QUERY CACHE", CONTROL),
    ("DISCARD ALL", CONTROL),
    ("USE other", CONTROL),
    ("DEALLOCATE q", CONTROL),
    ("DECLARE c CURSOR FOR SELECT * FROM t", CONTROL),
    ("DECLARE c NO SCROLL CURSOR WITH HOLD FOR WITH x AS (SELECT 1) SELECT * FROM x", CONTROL),
    ("FETCH 10 FROM c", CONTROL),
    ("CLOSE c", CONTROL),
    ("UNLOCK TABLES", CONTROL),
    ("KILL 42", CONTROL),
    ("SELECT 1; SET search_path = public", CONTROL),
]


@pytest.mark.parametrize(("sql", "kind"), CASES)
def test_the_classifier(sql: str, kind: Kind) -> None:
    assert classify(sql) is kind
    assert is_write(sql) is (kind is WRITE)
    assert is_read(sql) is (kind is READ)


def test_the_cases_are_unique() -> None:
    statements = [sql for sql, _ in CASES]
    assert len(set(statements)) == len(statements)


def test_bytes_are_read_as_text_and_other_objects_write() -> None:
    assert classify(b"SELECT 1") is READ  # type: ignore[arg-type]
    assert classify(bytearray(b"DELETE FROM t")) is WRITE  # type: ignore[arg-type]
    assert classify(object()) is WRITE  # type: ignore[arg-type]


# --- The engines as the oracle -------------------------------------------------------------
#
# Each statement runs for real in a read-only transaction on a small table; the
# engine's verdict (refused as a write, or run) must be the classifier's. What
# the engine cannot judge that way, or judges otherwise on purpose, is listed
# with the reason, and the test checks that the reason still holds.

PG, MARIADB, SQLITE = "postgresql", "mariadb", "sqlite"
ALL = frozenset({PG, MARIADB, SQLITE})


@dataclass(frozen=True)
class Probe:
    sql: str
    engines: frozenset[str] = ALL
    #: Run first, in the same transaction.
    before: tuple[str, ...] = ()
    #: Outside a transaction (under the session's read-only setting instead), for
    #: statements that refuse to run in one or that start one.
    outside: bool = False


def on(*engines: str) -> frozenset[str]:
    return frozenset(engines)


PROBES = [
    Probe("SELECT * FROM sql_probe"),
    Probe("select name from sql_probe where id = 1"),
    Probe("/* a tag */ -- a note\n SELECT 1"),
    Probe("/* outer /* nested */ comment */ SELECT 1", on(PG)),
    Probe("SELECT 1 FROM sql_probe WHERE name = 'x; DELETE FROM sql_probe'"),
    Probe("WITH x AS (SELECT 'delete' AS \"update\") SELECT * FROM x"),
    Probe(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) TABLE r",
        on(PG),
    ),
    Probe(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
        "SELECT n FROM r"
    ),
    Probe("EXPLAIN SELECT * FROM sql_probe"),
    Probe("EXPLAIN DELETE FROM sql_probe"),
    Probe("EXPLAIN (ANALYZE false) DELETE FROM sql_probe", on(PG)),
    Probe("EXPLAIN QUERY PLAN DELETE FROM sql_probe", on(SQLITE)),
    Probe("SHOW server_version", on(PG)),
    Probe("SHOW TABLES", on(MARIADB)),
    Probe("DESCRIBE sql_probe", on(MARIADB)),
    Probe("PRAGMA table_info(sql_probe)", on(SQLITE)),
    Probe("PRAGMA foreign_keys", on(SQLITE)),
    Probe("VALUES (1)"),
    Probe("TABLE sql_probe", on(PG)),
    Probe("COPY sql_probe TO STDOUT", on(PG)),
    Probe("COPY (SELECT 1) TO STDOUT", on(PG)),
    Probe("ANALYZE SELECT * FROM sql_probe", on(MARIADB)),
    Probe("INSERT INTO sql_probe VALUES (3, 'three')"),
    Probe("update sql_probe set name = 'x'"),
    Probe("/* a */ /* b */ -- c\n DELETE FROM sql_probe"),
    Probe("WITH x AS (SELECT 1) DELETE FROM sql_probe", on(PG, SQLITE)),
    Probe("WITH x AS (SELECT 1 AS id) UPDATE sql_probe SET name = 'y'", on(PG, SQLITE)),
    Probe("WITH x AS (SELECT 4, 'four') INSERT INTO sql_probe SELECT * FROM x", on(PG, SQLITE)),
    Probe(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
        "DELETE FROM sql_probe WHERE id IN (SELECT n FROM r)",
        on(PG, SQLITE),
    ),
    Probe("WITH d AS (DELETE FROM sql_probe RETURNING *) SELECT * FROM d", on(PG)),
    Probe("SELECT * FROM sql_probe FOR UPDATE", on(PG, MARIADB)),
    Probe("SELECT * FROM sql_probe FOR SHARE", on(PG)),
    Probe("SELECT * FROM sql_probe FOR NO KEY UPDATE", on(PG)),
    Probe("SELECT * FROM sql_probe FOR KEY SHARE", on(PG)),
    Probe("SELECT * FROM sql_probe LOCK IN SHARE MODE", on(MARIADB)),
    Probe("SELECT * INTO sql_probe_copy FROM sql_probe", on(PG)),
    Probe("SELECT 1 INTO @sql_probe", on(MARIADB)),
    Probe("SELECT nextval('sql_probe_seq')", on(PG)),
    Probe("SELECT NEXT VALUE FOR sql_probe_seq", on(MARIADB)),
    Probe("REPLACE INTO sql_probe VALUES (1, 'uno')", on(MARIADB, SQLITE)),
    Probe("INSERT OR REPLACE INTO sql_probe VALUES (1, 'uno')", on(SQLITE)),
    Probe(
        "MERGE INTO sql_probe USING (SELECT 1 AS id) s ON sql_probe.id = s.id "
        "WHEN MATCHED THEN DELETE",
        on(PG),
    ),
    Probe("COPY sql_probe FROM STDIN", on(PG)),
    Probe("CALL sql_probe_insert()", on(PG, MARIADB)),
    Probe("DO $$ BEGIN DELETE FROM sql_probe; END $$", on(PG)),
    Probe("DO $$ BEGIN PERFORM 1; END $$", on(PG)),
    Probe("DO 1", on(MARIADB)),
    Probe("LOCK TABLE sql_probe", on(PG)),
    Probe("LOCK TABLES sql_probe WRITE", on(MARIADB)),
    Probe("LOAD 'plpgsql'", on(PG)),
    Probe("LOAD DATA INFILE '/dev/null' INTO TABLE sql_probe", on(MARIADB)),
    Probe("VACUUM", on(SQLITE), outside=True),
    Probe("VACUUM sql_probe", on(PG), outside=True),
    Probe("ANALYZE", on(SQLITE)),
    Probe("ANALYZE sql_probe", on(PG)),
    Probe("ANALYZE TABLE sql_probe", on(MARIADB)),
    Probe("EXPLAIN ANALYZE DELETE FROM sql_probe", on(PG)),
    Probe("ANALYZE DELETE FROM sql_probe", on(MARIADB)),
    Probe("CREATE TABLE sql_probe_new (a int)"),
    Probe("CREATE INDEX sql_probe_name ON sql_probe (name)"),
    Probe("ALTER TABLE sql_probe ADD COLUMN extra int"),
    Probe("DROP TABLE sql_probe"),
    Probe("TRUNCATE sql_probe", on(PG, MARIADB)),
    Probe("GRANT SELECT ON sql_probe TO PUBLIC", on(PG)),
    Probe("PRAGMA foreign_keys = ON", on(SQLITE)),
    Probe("PRAGMA journal_mode=WAL", on(SQLITE), outside=True),
    Probe("PRAGMA user_version = 3", on(SQLITE)),
    Probe("SELECT 1; DELETE FROM sql_probe", on(PG, MARIADB)),
    Probe("SELECT 'it''s'; DELETE FROM sql_probe", on(PG, MARIADB)),
    Probe("SELECT 'a\\'; DELETE FROM sql_probe; -- '", on(PG, MARIADB)),
    Probe("SELECT 1 # a comment\n; DELETE FROM sql_probe", on(MARIADB)),
    Probe("/*!50000 DELETE FROM sql_probe */", on(MARIADB)),
    Probe("SET STATEMENT max_statement_time = 10 FOR DELETE FROM sql_probe", on(MARIADB)),
    Probe("SET STATEMENT max_statement_time = 10 FOR SELECT 1", on(MARIADB)),
    Probe("DECLARE c CURSOR FOR SELECT * FROM sql_probe", on(PG)),
    Probe("DECLARE c CURSOR FOR SELECT * FROM sql_probe FOR UPDATE", on(PG)),
    Probe("SAVEPOINT sql_probe_savepoint"),
    Probe("RELEASE SAVEPOINT sql_probe_savepoint", before=("SAVEPOINT sql_probe_savepoint",)),
    Probe("ROLLBACK TO SAVEPOINT sql_probe_savepoint", before=("SAVEPOINT sql_probe_savepoint",)),
    Probe("BEGIN", outside=True),
    Probe("START TRANSACTION", on(PG, MARIADB), outside=True),
    Probe("COMMIT"),
    Probe("ROLLBACK"),
    Probe("SET statement_timeout = 0", on(PG)),
    Probe("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", on(PG)),
    Probe("RESET ALL", on(PG)),
    Probe("SET @sql_probe = 1", on(MARIADB)),
    Probe("SET SESSION wait_timeout = 600", on(MARIADB)),
    Probe("UNLOCK TABLES", on(MARIADB)),
]

#: (engine, statement): why the engine's verdict differs from the classifier's.
DISAGREEMENTS = {
    (MARIADB, "EXPLAIN DELETE FROM sql_probe"): (
        "MariaDB refuses to plan a write in a read-only transaction, though EXPLAIN runs "
        "nothing: it reads, and any server may answer it"
    ),
    (PG, "DO $$ BEGIN PERFORM 1; END $$"): (
        "the engine refuses only what the code does once it runs; the classifier cannot see "
        "inside code, so DO is a write"
    ),
    (MARIADB, "DO 1"): "MariaDB's DO evaluates expressions, which may call functions that write",
    (PG, "LOCK TABLE sql_probe"): (
        "PostgreSQL takes table locks in read-only transactions, a standby refuses the strong "
        "ones; a lock taken on a replica protects nothing on the primary"
    ),
    (MARIADB, "SELECT * FROM sql_probe LOCK IN SHARE MODE"): (
        "MariaDB takes shared row locks in read-only transactions (PostgreSQL refuses them); a "
        "lock taken on a replica protects nothing on the primary"
    ),
    (MARIADB, "SELECT 1 INTO @sql_probe"): (
        "INTO a variable changes nothing, but INTO also creates tables (PostgreSQL) and writes "
        "files (INTO OUTFILE): every INTO is a write"
    ),
    (PG, "LOAD 'plpgsql'"): "LOAD puts a library's code into the server process",
    (PG, "VACUUM sql_probe"): (
        "PostgreSQL allows maintenance in read-only transactions (it changes nothing a dump "
        "shows); a standby refuses it, and it belongs on the primary"
    ),
    (PG, "ANALYZE sql_probe"): (
        "PostgreSQL allows maintenance in read-only transactions; a standby refuses it"
    ),
    (MARIADB, "ANALYZE TABLE sql_probe"): "it rewrites the table's statistics, on the primary",
    (SQLITE, "PRAGMA foreign_keys = ON"): (
        "a PRAGMA with a value writes: some change the database file, some the connection, and "
        "no list of which stays right across SQLite versions"
    ),
    (SQLITE, "PRAGMA journal_mode=WAL"): (
        "it changes the journal mode of a database file for every connection (an in-memory "
        "test database has no file to change)"
    ),
    (MARIADB, "SELECT 'a\\'; DELETE FROM sql_probe; -- '"): (
        "to MariaDB all of it after SELECT is one string; to PostgreSQL the DELETE runs. The "
        "classifier knows no engine, so it reads the text both ways and keeps the write"
    ),
}


#: The probes for the engine of this configuration ('default''s).
HERE = [
    case
    for case in PROBES
    if case.engines & {"sqlite": {SQLITE}, "postgres": {PG}, "mysql": {MARIADB}}[ENGINES["default"]]
]


def engine_of(wrapper: BaseDatabaseWrapper) -> str:
    if wrapper.vendor == "mysql":
        return MARIADB if wrapper.mysql_is_mariadb else "mysql"  # type: ignore[attr-defined]
    return wrapper.vendor


SETUP = {
    PG: [
        "CREATE PROCEDURE sql_probe_insert() LANGUAGE sql AS $$ "
        "INSERT INTO sql_probe VALUES (2, 'two') $$",
        "CREATE SEQUENCE sql_probe_seq",
    ],
    MARIADB: [
        "CREATE PROCEDURE sql_probe_insert() INSERT INTO sql_probe VALUES (2, 'two')",
        "CREATE SEQUENCE sql_probe_seq",
    ],
    SQLITE: [],
}
TEARDOWN = {
    PG: ["DROP PROCEDURE sql_probe_insert", "DROP SEQUENCE sql_probe_seq"],
    MARIADB: ["DROP PROCEDURE sql_probe_insert", "DROP SEQUENCE sql_probe_seq"],
    SQLITE: [],
}
#: Each engine's switches: every transaction of the session read-only, and back; a
#: read-only transaction.
READ_ONLY = {
    PG: (
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "BEGIN READ ONLY",
    ),
    MARIADB: (
        "SET SESSION TRANSACTION READ ONLY",
        "SET SESSION TRANSACTION READ WRITE",
        "START TRANSACTION READ ONLY",
    ),
    SQLITE: ("PRAGMA query_only = ON", "PRAGMA query_only = OFF", "BEGIN"),
}


@pytest.fixture(scope="module")
def probe(django_db_setup: None, django_db_blocker: Any) -> Iterator[BaseDatabaseWrapper]:
    """A session of its own on the test database, with the table the probes use."""
    with django_db_blocker.unblock():
        # On the test database, which the settings know only through the handler's wrapper.
        default = connections["default"]
        wrapper = type(default)(dict(default.settings_dict), "default")
        engine = engine_of(wrapper)
        try:
            with wrapper.cursor() as cursor:
                cursor.execute("CREATE TABLE sql_probe (id integer PRIMARY KEY, name varchar(20))")
                cursor.execute("INSERT INTO sql_probe VALUES (1, 'one')")
                for statement in SETUP.get(engine, []):
                    cursor.execute(statement)
            yield wrapper
        finally:
            with wrapper.cursor() as cursor:
                for statement in ["DROP TABLE sql_probe", *TEARDOWN.get(engine, [])]:
                    # What setup did not get to create: its error is the one to see.
                    with contextlib.suppress(DatabaseError):
                        cursor.execute(statement)
            wrapper.close()


def refused_as_write(error: BaseException, engine: str) -> bool:
    """Whether ``error`` is the engine refusing a write in a read-only transaction."""
    if engine == PG:
        return getattr(error, "sqlstate", None) == "25006"
    if engine == MARIADB:
        return bool(error.args) and error.args[0] == 1792
    return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_READONLY


def run_read_only(wrapper: BaseDatabaseWrapper, engine: str, case: Probe) -> bool:
    """Run ``case`` read-only on the engine; whether it refused it as a write."""
    raw: Any = wrapper.connection
    session, session_off, begin = READ_ONLY[engine]
    cursor = raw.cursor()
    cursor.execute(session)
    try:
        if not case.outside:
            cursor.execute(begin)
        for statement in case.before:
            cursor.execute(statement)
        try:
            execute(cursor, engine, case.sql)
        except Exception as error:
            if refused_as_write(error, engine):
                return True
            raise
        return False
    finally:
        with contextlib.suppress(Exception):  # when the statement ended the transaction
            cursor.execute("ROLLBACK")
        if engine == MARIADB:
            cursor.execute("UNLOCK TABLES")
        cursor.execute(session_off)
        cursor.close()


def execute(cursor: Any, engine: str, sql: str) -> None:
    """Run ``sql`` to its end: every result of every statement in it."""
    if engine == PG and sql.startswith("COPY"):
        # COPY talks its own protocol, which psycopg runs only through copy().
        with cursor.copy(sql) as copy:
            if " TO " in sql:
                list(copy)
        return
    cursor.execute(sql)
    if engine == MARIADB:
        while cursor.nextset():  # a later statement's error surfaces here
            pass
    elif engine == SQLITE:
        cursor.fetchall()


# The mark makes pytest-django create the test database; the probes run on a
# session of their own, outside the test's transaction.
@pytest.mark.django_db(databases=["default"])
@pytest.mark.parametrize("case", HERE, ids=[case.sql[:60] for case in HERE])
def test_the_engine_agrees(probe: BaseDatabaseWrapper, case: Probe) -> None:
    engine = engine_of(probe)
    if engine not in case.engines:
        pytest.skip(f"not {engine} SQL")  # MariaDB's own, on MySQL
    refused = run_read_only(probe, engine, case)
    reason = DISAGREEMENTS.get((engine, case.sql))
    if reason is None:
        assert refused is is_write(case.sql), (
            f"{engine} {'refused' if refused else 'ran'} it in a read-only transaction"
        )
    else:
        assert refused is not is_write(case.sql), f"{engine} now agrees, though {reason}"
    # Nothing escaped the read-only transaction: the oracle can be trusted.
    with probe.cursor() as cursor:
        cursor.execute("SELECT id, name FROM sql_probe")
        assert [tuple(row) for row in cursor.fetchall()] == [(1, "one")]


def test_every_disagreement_is_a_probe() -> None:
    probes = {(engine, case.sql) for case in PROBES for engine in case.engines}
    assert set(DISAGREEMENTS) <= probes


# --- Casing, comments and whitespace never change the answer -------------------------------

#: Statements whose tokens are separated by single spaces; a token that holds a
#: quote is kept as it is, every other one is cased at random.
CORPUS = [
    "SELECT * FROM t",
    "SELECT id FROM t WHERE name = 'it''s;delete' AND \"update\" = 1",
    "SELECT $$;DELETE$$",
    "( SELECT 1 ) UNION ( SELECT 2 )",
    "WITH x AS ( SELECT 1 ) SELECT * FROM x",
    "WITH RECURSIVE r ( n ) AS ( SELECT 1 UNION ALL SELECT n + 1 FROM r ) SELECT * FROM r",
    "WITH x AS ( SELECT 'delete' ) DELETE FROM t",
    "WITH x AS ( SELECT 1 ) UPDATE t SET a = 1",
    "WITH d AS ( DELETE FROM t RETURNING * ) SELECT * FROM d",
    "WITH i AS ( INSERT INTO t VALUES ( 1 ) RETURNING id ) SELECT 1",
    "SELECT * FROM t FOR UPDATE",
    "SELECT * FROM t FOR NO KEY UPDATE",
    "SELECT * FROM t LOCK IN SHARE MODE",
    "SELECT * INTO u FROM t",
    "SELECT nextval ( 's' )",
    "INSERT INTO t VALUES ( 1 )",
    "INSERT OR REPLACE INTO t VALUES ( 1 )",
    "REPLACE INTO t VALUES ( 1 )",
    "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
    "COPY t FROM STDIN",
    "COPY t TO STDOUT",
    "COPY ( SELECT 1 ) TO STDOUT",
    "CALL p ( )",
    "DO $$BEGIN;$$",
    "LOCK TABLE t",
    "LOAD DATA INFILE 'f' INTO TABLE t",
    "VACUUM",
    "ANALYZE t",
    "ANALYZE SELECT 1",
    "EXPLAIN SELECT 1",
    "EXPLAIN DELETE FROM t",
    "EXPLAIN ANALYZE DELETE FROM t",
    "EXPLAIN ( ANALYZE false ) DELETE FROM t",
    "SHOW TABLES",
    "DESCRIBE t",
    "PRAGMA table_info ( t )",
    "PRAGMA foreign_keys = ON",
    "VALUES ( 1 )",
    "TABLE t",
    "CREATE TABLE t ( a int )",
    "DROP TABLE t",
    "SET search_path = public",
    "SET GLOBAL read_only = 0",
    "SET @@global.x = 1",
    "SAVEPOINT s1",
    "RELEASE SAVEPOINT s1",
    "BEGIN",
    "COMMIT",
    "SELECT 1 ; DELETE FROM t",
]
SEPARATORS = [" ", "  ", "\n", "\t", "\r\n"]
#: Comment text: keywords, quotes and semicolons, but nothing that ends or opens a comment.
COMMENT_TEXT = st.text(alphabet="DELETE select ;'\"()-#x", max_size=12).filter(
    lambda text: "--" not in text
)


@st.composite
def disguised(draw: st.DrawFn, statement: str) -> str:
    def gap() -> str:
        kind = draw(st.sampled_from(["blank", "block", "line"]))
        if kind == "block":
            return f" /* {draw(COMMENT_TEXT)} */ "
        if kind == "line":
            return f" -- {draw(COMMENT_TEXT)}\n"
        return draw(st.sampled_from(SEPARATORS))

    def cased(token: str) -> str:
        if re.search(r"['\"$`]", token):
            return token
        flips = draw(st.lists(st.booleans(), min_size=len(token), max_size=len(token)))
        return "".join(c.swapcase() if flip else c for c, flip in zip(token, flips, strict=True))

    parts = [gap() if draw(st.booleans()) else ""]
    for index, token in enumerate(statement.split(" ")):
        if index:
            parts.append(gap())
        parts.append(cased(token))
    parts.append(gap() if draw(st.booleans()) else "")
    return "".join(parts)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CORPUS).flatmap(lambda sql: st.tuples(st.just(sql), disguised(sql))))
def test_casing_comments_and_whitespace_never_change_the_answer(pair: tuple[str, str]) -> None:
    statement, variant = pair
    assert classify(variant) is classify(statement), variant


def test_the_corpus_covers_every_kind() -> None:
    assert {classify(statement) for statement in CORPUS} == set(Kind)


SQL_WORDS = st.sampled_from(
    ["SELECT", "WITH", "AS", "(", ")", ",", ";", "DELETE", "FOR", "UPDATE", "INTO", "EXPLAIN",
     "ANALYZE", "PRAGMA", "=", "COPY", "TO", "SET", "GLOBAL", "@", ".", "CURSOR", "'", '"', "$$",
     "/*", "*/", "--", "#", "\\", "\n", " ", "RECURSIVE", "SEARCH", "CYCLE", "USING", "t"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(SQL_WORDS, max_size=20).map(" ".join) | st.text(max_size=40))
def test_any_text_gets_an_answer(sql: str) -> None:
    assert classify(sql) in Kind
