"""ClickHouse in the fleet, on real embedded ClickHouse (chDB): the analytics configuration.

``warehouse`` is on chDB (``dbfleet.backends.chdb``) and routes the
``tests.warehouse`` app; ``default`` is on PostgreSQL. Every test here runs only
with ``DBFLEET_TEST_DATABASES=analytics`` (tests/conftest.py): chDB is loaded in
this process, and no other test may fork it. What needs a process of its own (a
fork, a missing extra, another process on the data directory) runs in one, with a
deadline.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.db import DatabaseError, OperationalError, connections, transaction
from django.db.models import Avg, Count, Max, Min, Sum
from django.db.transaction import TransactionManagementError
from django.db.utils import ConnectionHandler, NotSupportedError
from django.test import override_settings

import dbfleet
from dbfleet import vendors
from dbfleet.backends.chdb import dbapi
from dbfleet.migrating.plan import plan
from dbfleet.migrating.status import State
from dbfleet.reports import ExitCode, fleet_status, routes_report
from tests.library.models import Author
from tests.settings import CHDB_DIR, DATABASES, database
from tests.threads import Threads
from tests.warehouse.models import PageView

ROOT = Path(__file__).resolve().parent.parent
WAREHOUSE = ["default", "warehouse"]
#: ClickHouse rolls nothing back: each test starts from empty tables (flushed after it).
pytestmark = pytest.mark.django_db(databases=WAREHOUSE, transaction=True)
#: Seconds a helper process gets before the test fails (none needs more than a few).
DEADLINE = 60
NOW = datetime.datetime(2024, 5, 1, 12, 30, 15, 250000, tzinfo=datetime.UTC)


def views(count: int, **fields: Any) -> list[PageView]:
    """``count`` page views over three days and four paths (``fields`` set on each)."""
    return [
        PageView(
            **{
                "day": datetime.date(2024, 5, 1 + i % 3),
                "path": f"/p{i % 4}",
                "visitor": uuid.UUID(int=i),
                "tags": ["all", f"t{i % 2}"][: 1 + i % 2],
                "seconds": i / 2,
                "at": NOW,
                **fields,
            }
        )
        for i in range(count)
    ]


def python(script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a new interpreter with this tree on its path; fail after DEADLINE."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            **env,
        },
    )


# --- The backends ------------------------------------------------------------------------


def test_the_warehouse_is_clickhouse_without_transactions() -> None:
    connection = connections["warehouse"]
    assert connection.vendor == "clickhouse"
    assert connection.display_name == "ClickHouse (chDB)"
    assert vendors.of(connection) is vendors.ClickHouse
    assert not vendors.of(connection).transactional
    assert not vendors.of(connection).two_phase
    assert not vendors.of(connection).replicates
    assert vendors.of(connections["default"]).transactional
    # Known from its settings alone, without loading the backend.
    assert vendors.of_settings(DATABASES["warehouse"]) is vendors.ClickHouse
    assert vendors.of_settings(DATABASES["books"]) is vendors.VENDORS["sqlite"]
    assert vendors.embedded_data_directory(DATABASES["warehouse"]) == os.path.abspath(CHDB_DIR)
    assert vendors.embedded_data_directory(DATABASES["default"]) is None


def wrapper(alias: str, settings_dict: dict[str, Any]) -> Any:
    """A connection of ``alias`` with ``settings_dict``, outside ``connections`` (none opened)."""
    return ConnectionHandler({"default": {}, alias: settings_dict})[alias]


def server_wrapper(alias: str = "ch_server") -> Any:
    """A ``dbfleet.backends.clickhouse`` connection to a closed port: it never connects."""
    return wrapper(alias, {"ENGINE": "dbfleet.backends.clickhouse", "HOST": "127.0.0.1", "PORT": 1})


def test_the_server_backend_loads_and_is_clickhouse() -> None:
    server = server_wrapper()
    assert type(server).__module__ == "dbfleet.backends.clickhouse.base"
    assert server.vendor == "clickhouse"
    assert vendors.of(server) is vendors.ClickHouse
    options = vendors.ClickHouse.probe_options({}, 2.5)
    assert options == {
        "connect_timeout": 2.5,
        "send_receive_timeout": 2.5,
        "sync_request_timeout": 2.5,
    }
    # chDB has nothing to time out on.
    assert vendors.ClickHouse.probe_options({"path": "/x"}, 2.5) == {"path": "/x"}


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_two_phase_over_a_clickhouse_server_is_refused_before_connecting() -> None:
    server = server_wrapper()
    with override_settings(DATABASES={**DATABASES, "ch_server": server.settings_dict}):
        connections["ch_server"] = server
        try:
            refused = pytest.raises(
                TransactionManagementError, match="'ch_server' \\(ClickHouse\\)"
            )
            with refused, dbfleet.atomic("default", "ch_server", two_phase=True):
                pass
            assert server.connection is None  # Refused before anything connected.
        finally:
            del connections["ch_server"]


def test_two_phase_over_the_warehouse_is_refused_with_the_reason() -> None:
    with (
        pytest.raises(TransactionManagementError) as refused,
        dbfleet.atomic(Author, PageView, two_phase=True),
    ):
        pytest.fail("the block must not run")
    message = str(refused.value)
    assert "cannot cover 'warehouse' (ClickHouse (chDB)): it has no transactions" in message
    assert "dbfleet.on_commit" in message
    assert not connections["default"].in_atomic_block


def test_a_parallel_test_run_is_refused_clearly() -> None:
    with pytest.raises(NotSupportedError, match="without --parallel"):
        connections["warehouse"].creation.clone_test_db(suffix="1", verbosity=0)


def test_options_are_checked_when_connecting() -> None:
    base = {"ENGINE": "dbfleet.backends.chdb", "NAME": "x"}
    for options, expected in (
        ({}, r"needs its data directory: set DATABASES\['other'\]\['OPTIONS'\]\['path'\]"),
        ({"path": CHDB_DIR, "pathh": 1}, r"has 'pathh', which 'dbfleet.backends.chdb'"),
        ({"path": CHDB_DIR, "settings": [1]}, r"must be a dict of ClickHouse settings"),
    ):
        with pytest.raises(Exception, match=expected):
            wrapper("other", {**base, "OPTIONS": options}).ensure_connection()
    with pytest.raises(dbapi.ProgrammingError, match="not a ClickHouse setting name"):
        dbapi.connect(os.path.abspath(CHDB_DIR), "x", {"max_threads; DROP": 1})


# --- The ORM on chDB ------------------------------------------------------------------------


def test_bulk_create_and_read_back_every_value_as_the_server_gives_it() -> None:
    made = views(12, path="it's 100% /p?", tags=["a'b", "c\\d", "%s"])
    assert len(PageView.objects.bulk_create(made)) == 12
    read = PageView.objects.filter(visitor=uuid.UUID(int=5)).get()
    assert read.path == "it's 100% /p?"
    assert read.tags == ["a'b", "c\\d", "%s"]
    assert read.visitor == uuid.UUID(int=5)
    assert read.day == datetime.date(2024, 5, 3)
    assert read.at == NOW  # DateTime64(6, 'UTC'): microseconds and the zone kept.
    assert read.seconds == 2.5
    assert PageView.objects.filter(tags__contains=["a'b"]).count() == 12
    assert PageView.objects.filter(path__startswith="it's 100%").count() == 12


def test_filter_order_by_and_slices() -> None:
    PageView.objects.bulk_create(views(20))
    first = list(
        PageView.objects.filter(path__in=["/p1", "/p3"], seconds__gte=2)
        .order_by("-seconds")
        .values_list("seconds", flat=True)[:3]
    )
    assert first == [9.5, 8.5, 7.5]
    assert PageView.objects.filter(day=datetime.date(2024, 5, 2)).count() == 7
    assert not PageView.objects.filter(path="/nowhere").exists()
    assert PageView.objects.order_by("seconds").last().seconds == 9.5


def test_aggregates() -> None:
    PageView.objects.bulk_create(views(20))
    by_path = list(
        PageView.objects.values("path").annotate(n=Count("id"), s=Sum("seconds")).order_by("path")
    )
    assert by_path == [
        {"path": "/p0", "n": 5, "s": 20.0},
        {"path": "/p1", "n": 5, "s": 22.5},
        {"path": "/p2", "n": 5, "s": 25.0},
        {"path": "/p3", "n": 5, "s": 27.5},
    ]
    totals = PageView.objects.aggregate(Avg("seconds"), Min("day"), Max("at"), Count("visitor"))
    assert totals == {
        "seconds__avg": 4.75,
        "day__min": datetime.date(2024, 5, 1),
        "at__max": NOW,
        "visitor__count": 20,
    }


def test_update_and_delete_are_mutations_and_say_how_many_rows_they_match() -> None:
    PageView.objects.bulk_create(views(20))
    # Mutations (ALTER TABLE ... UPDATE/DELETE); the tests' OPTIONS wait for them.
    assert PageView.objects.filter(path="/p1").update(seconds=100) == 5
    assert PageView.objects.filter(seconds=100).count() == 5
    assert PageView.objects.filter(path="/nowhere").update(seconds=1) == 0
    assert PageView.objects.filter(path="/p2").delete() == (5, {"warehouse.PageView": 5})
    assert PageView.objects.count() == 15
    # save() updates the row (not its sorting key: ClickHouse cannot).
    view = PageView.objects.get(visitor=uuid.UUID(int=3))
    view.seconds = -1
    view.save(update_fields=["seconds"])
    assert PageView.objects.get(visitor=uuid.UUID(int=3)).seconds == -1


def test_a_mutation_without_mutations_sync_is_applied_after_it_returns() -> None:
    """Eventual visibility: with ``mutations_sync=0`` an UPDATE returns before it is done."""
    PageView.objects.bulk_create(views(8))
    changed = PageView.objects.settings(mutations_sync=0).filter(path="/p0").update(seconds=7)
    assert changed == 2  # Counted before it was sent.
    deadline = time.monotonic() + 30
    while PageView.objects.filter(seconds=7).count() != 2:
        assert time.monotonic() < deadline, "the mutation was never applied"
        time.sleep(0.05)


def test_more_rows_than_one_statement_and_iterator() -> None:
    # More than 1000 rows: django-clickhouse-backend sends them as data, not placeholders.
    PageView.objects.bulk_create(views(2500), batch_size=2500)
    assert PageView.objects.count() == 2500
    seen = sum(1 for _ in PageView.objects.order_by("id").iterator(chunk_size=500))
    assert seen == 2500


def test_the_test_database_is_not_the_development_one() -> None:
    assert connections["warehouse"].settings_dict["NAME"] == f"test_{database('warehouse')['NAME']}"
    with connections["warehouse"].cursor() as cursor:
        cursor.execute("SELECT currentDatabase()")
        assert cursor.fetchone() == (connections["warehouse"].settings_dict["NAME"],)


# --- The cursor: parameters, results, errors ------------------------------------------------


def test_parameters_are_bound_as_clickhouse_literals() -> None:
    with connections["warehouse"].cursor() as cursor:
        parameters: list[Any] = [
            ["a'b", "c"],
            (1, "x"),
            {"k": 2},
            uuid.UUID(int=7),
            None,
            True,
            Decimal("1.25"),
            datetime.date(2024, 2, 29),
            NOW,
            "it's \\ 50%",
        ]
        cursor.execute("SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, '100%%'", parameters)
        row = cursor.fetchone()
        assert row is not None
        assert row[:3] == (["a'b", "c"], (1, "x"), {"k": 2})
        assert row[3] == str(uuid.UUID(int=7))  # A string literal: ClickHouse reads it so.
        assert row[4:9] == (None, True, 1.25, "2024-02-29", "2024-05-01 12:30:15.250000")
        assert row[9:] == ("it's \\ 50%", "100%")
        # Named: a column is named after its expression, literal bytes included.
        cursor.execute("SELECT length(%s) AS n, hex(%s) AS h", [b"\x00\xff'", b"\x00\xff'"])
        assert cursor.fetchall() == [(3, "00FF27")]
        cursor.execute("SELECT '100%%'")  # No parameters: nothing is substituted.
        assert cursor.fetchall() == [("100%%",)]
        cursor.execute("SELECT %(a)s + %(b)s", {"a": 1, "b": 2})
        assert cursor.fetchall() == [(3,)]
        cursor.execute("SELECT number FROM numbers(10) WHERE number IN %s", [(2, 3)])
        assert [row[0] for row in cursor.fetchall()] == [2, 3]


def test_a_result_without_rows_has_its_columns() -> None:
    with connections["warehouse"].cursor() as cursor:
        cursor.execute("SELECT path, seconds FROM warehouse_pageview WHERE seconds < %s", [0])
        assert cursor.fetchall() == []
        assert [column[:2] for column in cursor.description] == [
            ("path", "String"),
            ("seconds", "Float64"),
        ]
        cursor.execute("CREATE TABLE IF NOT EXISTS scratch (x Int8) ENGINE = Memory")
        assert cursor.description is None
        cursor.execute("DROP TABLE scratch")
    assert list(PageView.objects.raw("SELECT * FROM warehouse_pageview")) == []


def test_rowcount_of_inserts_and_mutations() -> None:
    with connections["warehouse"].cursor() as cursor:
        cursor.execute(
            "INSERT INTO warehouse_pageview (id, day, path, visitor, tags, seconds, at) VALUES",
            [[i, datetime.date(2024, 1, 1), "/", uuid.UUID(int=i), [], 1.0, NOW] for i in (1, 2)],
        )
        assert cursor.rowcount == 2
        cursor.execute("INSERT INTO warehouse_pageview (id) VALUES", [])
        assert cursor.rowcount == 0
        cursor.execute(
            "INSERT INTO warehouse_pageview (id, day, path, visitor, tags, seconds, at) "
            "SELECT id + 10, day, path, visitor, tags, seconds, at FROM warehouse_pageview"
        )
        assert cursor.rowcount == 2
        # The count reads the template's WHERE, which a parameter cannot fake.
        cursor.execute(
            'ALTER TABLE "warehouse_pageview" UPDATE "path" = %s WHERE ("id" IN '
            "(SELECT id FROM warehouse_pageview WHERE id > %s)) SETTINGS mutations_sync = %s",
            ["/x WHERE 1", 10, 1],
        )
        assert cursor.rowcount == 2
        cursor.execute(
            "ALTER TABLE \"warehouse_pageview\" DELETE WHERE \"path\" IN ('/', 'it\\'s WHERE')"
        )
        assert cursor.rowcount == 2
        cursor.execute("SELECT count() FROM warehouse_pageview")
        assert cursor.rowcount == -1  # A query's rows are read block by block, not counted.
        assert cursor.fetchall() == [(2,)]
        cursor.executemany("SELECT %s", [[1], [2]])
        assert cursor.fetchall() == [(2,)]


def test_errors_are_the_server_backends_with_their_code() -> None:
    with connections["warehouse"].cursor() as cursor:
        with pytest.raises(OperationalError, match="UNKNOWN_TABLE") as raised:
            cursor.execute("SELECT * FROM no_such_table")
        assert raised.value.__cause__ is not None
        assert raised.value.__cause__.args[0].code == 60
        with pytest.raises(DatabaseError, match="Cannot bind"):
            cursor.execute("SELECT %s, %s", [1])
    raw = connections["warehouse"].connection.cursor()
    raw.close()
    with pytest.raises(dbapi.InterfaceError, match="cursor already closed"):
        raw.execute("SELECT 1")
    with pytest.raises(dbapi.ProgrammingError, match="no results to fetch"):
        connections["warehouse"].connection.cursor().fetchone()


def test_the_dbapi_module_as_a_driver() -> None:
    """What Django does not use but a DB-API driver has: executemany, context managers, close."""
    name = connections["warehouse"].settings_dict["NAME"]
    connection = dbapi.connect(os.path.abspath(CHDB_DIR), name)
    with connection.cursor() as cursor:
        cursor.setinputsizes([1])
        cursor.setoutputsize(1)
        cursor.executemany(
            "INSERT INTO warehouse_pageview (id, day, path, visitor, tags, seconds, at) VALUES",
            ([i, datetime.date(2024, 1, 1), "/", uuid.UUID(int=i), [], 1.0, NOW] for i in (1, 2)),
        )
        assert cursor.rowcount == 2
        cursor.execute("SELECT id FROM warehouse_pageview ORDER BY id")
        assert list(cursor) == [(1,), (2,)]
    with pytest.raises(dbapi.InterfaceError, match="cursor already closed"):
        cursor.fetchall()
    connection.commit()
    connection.rollback()  # Nothing to do either way: no transactions.
    connection.close()
    connection.close()
    with pytest.raises(dbapi.InterfaceError, match="connection already closed"):
        connection.cursor().execute("SELECT 1")
    # An unknown setting fails the connection, and only it.
    with pytest.raises(dbapi.OperationalError, match="UNKNOWN_SETTING"):
        dbapi.connect(os.path.abspath(CHDB_DIR), name, {"no_such_setting": 1})
    assert PageView.objects.count() == 2


# --- Threads, forks, processes ---------------------------------------------------------------


def test_threads_in_one_process_write_and_read_at_once() -> None:
    def work(thread: int) -> int:
        PageView.objects.bulk_create(views(50, path=f"/thread{thread}"))
        return int(PageView.objects.filter(path=f"/thread{thread}").count())

    with Threads([functools.partial(work, thread) for thread in range(8)]) as threads:
        pass
    assert threads.results == [50] * 8
    assert PageView.objects.count() == 400


FORKS = """
import os, sys, time
import django
from django.conf import settings

settings.configure(
    DATABASES={"default": {"ENGINE": "dbfleet.backends.chdb", "NAME": "forked",
                           "OPTIONS": {"path": sys.argv[1]}}},
    USE_TZ=True,
)
django.setup()
from django.db import OperationalError, connection

def query(sql):
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]

print("parent:", query("SELECT 1"), flush=True)  # chDB's server runs: the fork must cope.
children = {}
for uses_chdb in (True, False):
    pid = os.fork()
    if pid == 0:
        if uses_chdb:
            for attempt in ("inherited", "new"):
                try:
                    query("SELECT 2")
                except OperationalError as error:
                    print(f"child ({attempt} connection):", error, flush=True)
                connection.close()  # The next query opens a new connection.
            sys.exit(3)  # Through exit(), which hangs when forked while chDB runs.
        sys.exit(0)
    children[pid] = uses_chdb
deadline = time.monotonic() + 20
while children and time.monotonic() < deadline:
    for pid in list(children):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print(f"child (uses chDB: {children.pop(pid)}) exited",
                  os.waitstatus_to_exitcode(status), flush=True)
    time.sleep(0.02)
for pid in children:
    os.kill(pid, 9)
    print("child hung", flush=True)
print("parent again:", query("SELECT 3"), flush=True)
"""


def test_a_forked_child_gets_a_clear_error_and_neither_hangs(tmp_path: Path) -> None:
    result = python(FORKS, str(tmp_path / "chdb"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "parent: 1"
    assert "child hung" not in lines
    assert "child (uses chDB: True) exited 3" in lines
    assert "child (uses chDB: False) exited 0" in lines
    errors = [line for line in lines if line.startswith("child (") and "connection)" in line]
    assert [error.split(":")[0] for error in errors] == [
        "child (inherited connection)",
        "child (new connection)",
    ]
    for error in errors:
        assert "was forked from process" in error
        assert "chDB cannot run in a forked process (it would hang)" in error
        assert "'dbfleet.backends.clickhouse'" in error
    assert lines[-1] == "parent again: 3"  # The server stopped for the fork, and came back.


LOADED_ELSEWHERE = """
import os, sys
import chdb  # By other code, before dbfleet's backend.
from dbfleet.backends.chdb import dbapi

pid = os.fork()
if pid == 0:
    try:
        dbapi.connect(sys.argv[1])
    except dbapi.OperationalError as error:
        print(error, flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_a_child_is_refused_when_other_code_loaded_chdb(tmp_path: Path) -> None:
    result = python(LOADED_ELSEWHERE, str(tmp_path))
    assert "chDB cannot run in a forked process" in result.stdout, result.stderr


OTHER_PROCESS = """
import sys
from dbfleet.backends.chdb import dbapi
try:
    dbapi.connect(sys.argv[1])
except dbapi.OperationalError as error:
    print(error)
"""


def test_another_process_is_told_who_holds_the_data_directory(tmp_path: Path) -> None:
    connections["warehouse"].ensure_connection()  # This process holds it.
    result = python(OTHER_PROCESS, os.path.abspath(CHDB_DIR))
    assert f"is in use by another process (process {os.getpid()}, since " in result.stdout
    assert "one process at a time" in result.stdout
    # A directory that cannot be made (a file is in the way): chDB's own error.
    (tmp_path / "file").write_text("")
    result = python(OTHER_PROCESS, str(tmp_path / "file" / "chdb"))
    assert result.stdout.startswith("Code: "), result.stdout + result.stderr


def test_a_second_data_directory_in_one_process_is_refused(tmp_path: Path) -> None:
    connections["warehouse"].ensure_connection()
    second = {"ENGINE": "dbfleet.backends.chdb", "NAME": "second", "OPTIONS": {"path": tmp_path}}
    with pytest.raises(OperationalError, match="one data directory per process") as refused:
        wrapper("second", second).ensure_connection()
    assert os.path.abspath(CHDB_DIR) in str(refused.value)
    assert PageView.objects.count() == 0  # The open one goes on.


MISSING = """
import sys
from django.conf import settings
settings.configure()
sys.modules[sys.argv[1]] = None  # As if it were not installed.
from django.db.utils import load_backend
if sys.argv[1] == "chdb":
    from dbfleet.backends.chdb import dbapi
    try:
        dbapi.connect("/nowhere")
    except Exception as error:
        print(type(error).__name__, error)
else:
    for engine in ("dbfleet.backends.chdb", "dbfleet.backends.clickhouse"):
        try:
            load_backend(engine)
        except Exception as error:
            print(type(error).__name__, error)
"""


def test_without_the_extras_the_error_says_what_to_install() -> None:
    result = python(MISSING, "clickhouse_backend")
    chdb, server = result.stdout.splitlines()
    assert chdb.startswith("ImproperlyConfigured ENGINE 'dbfleet.backends.chdb' needs ")
    assert "pip install 'django-dbfleet[chdb]'" in chdb
    assert "pip install 'django-dbfleet[clickhouse]'" in server
    result = python(MISSING, "chdb")
    assert result.stdout.startswith("ImproperlyConfigured ENGINE 'dbfleet.backends.chdb' needs")
    assert "chDB, which is not installed" in result.stdout


# --- Transactions --------------------------------------------------------------------------


def test_a_plain_atomic_block_applies_clickhouse_writes_at_once_and_keeps_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Boom(Exception):
        pass

    with (
        caplog.at_level(logging.WARNING, "dbfleet.transactions"),
        pytest.raises(Boom),
        dbfleet.atomic(Author, PageView),
    ):
        Author.objects.create(first_name="Ada", last_name="L")
        PageView.objects.bulk_create(views(3))
        # Visible at once, to every connection: it is not in a transaction.
        with Threads([PageView.objects.count]) as other:
            pass
        assert other.results == [3]
        raise Boom
    assert not Author.objects.exists()  # Rolled back.
    assert PageView.objects.count() == 3  # Applied as it ran, and kept.
    (record,) = caplog.records
    assert record.getMessage() == (
        "dbfleet.atomic('default', 'warehouse') did not commit, and these writes stay: 1 write "
        "statement on 'warehouse' (ClickHouse (chDB)). That database has no transactions: each "
        "write took effect as it ran. To write there only what commits, write in "
        "dbfleet.on_commit(...)."
    )


def test_a_committed_block_with_clickhouse_says_nothing_and_runs_its_callbacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    called: list[str] = []
    with caplog.at_level(logging.WARNING, "dbfleet.transactions"):
        with dbfleet.atomic(Author, PageView):
            Author.objects.create(first_name="Ada", last_name="L")
            PageView.objects.bulk_create(views(2))
            dbfleet.on_commit(lambda: called.append("group"), PageView)
            transaction.on_commit(lambda: called.append("warehouse"), using="warehouse")
            assert called == []
        # Django's own callback on the nominal block runs at its end too.
        assert called == ["warehouse", "group"]
    assert caplog.records == []
    assert Author.objects.count() == 1


def test_a_failed_inner_block_does_not_roll_back_the_group() -> None:
    with dbfleet.atomic(Author, PageView):
        Author.objects.create(first_name="Ada", last_name="L")
        with pytest.raises(ZeroDivisionError), dbfleet.atomic(Author, PageView):
            PageView.objects.bulk_create(views(1))
            Author.objects.create(first_name="Bob", last_name="M")
            1 / 0  # noqa: B018
        # ClickHouse has no savepoint to roll back to; that is no reason to undo 'default'.
    assert list(Author.objects.values_list("first_name", flat=True)) == ["Ada"]
    assert PageView.objects.count() == 1


def test_a_clickhouse_write_during_another_databases_transaction_is_flagged_meaningfully() -> None:
    with pytest.raises(dbfleet.WriteOutsideTransactionError) as flagged, dbfleet.atomic(Author):
        PageView.objects.bulk_create(views(1))
    message = str(flagged.value)
    assert message == (
        "A write on database 'warehouse' (ClickHouse (chDB), which has no transactions) ran "
        "while a transaction is open on 'default': it takes effect now and stays, even if that "
        "transaction rolls back. To write it only once that transaction commits, write it in "
        "dbfleet.on_commit(...); if it is meant to stay whatever happens, include 'warehouse' "
        "in the block: dbfleet.atomic('default', 'warehouse')."
    )
    assert PageView.objects.count() == 0  # Stopped before it ran.
    # Written once 'default' commits: nothing is flagged.
    with dbfleet.atomic(Author):
        dbfleet.on_commit(lambda: PageView.objects.bulk_create(views(1)))
    assert PageView.objects.count() == 1


def test_a_clickhouse_block_holds_no_transaction_for_other_writes_to_be_outside_of() -> None:
    with transaction.atomic(using="warehouse"):
        Author.objects.create(first_name="Ada", last_name="L")  # Not flagged.
        PageView.objects.bulk_create(views(1))
    assert Author.objects.count() == 1


# --- Migrations, checks, fleet routes, plan, status -------------------------------------------


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_the_migration_is_what_makemigrations_writes_and_the_checks_are_silent() -> None:
    call(["makemigrations", "warehouse", "--check", "--dry-run"])  # SystemExit(1) if not.
    assert run_checks(tags=["dbfleet"]) == []


def test_fleet_routes_includes_the_warehouse() -> None:
    report = routes_report()
    assert ("warehouse", "clickhouse", ()) in [
        (database.alias, database.vendor, database.replicas) for database in report.databases
    ]
    (route,) = [route for route in report.models if route.model == "warehouse.PageView"]
    assert (route.read, route.write, route.migrate) == ("warehouse", "warehouse", ("warehouse",))
    assert route.decided_by == 'ROUTES["warehouse"]'
    out = call(["fleet", "routes"])
    assert "warehouse (clickhouse)" in out
    assert "warehouse.PageView" in out


def call(args: list[str]) -> str:
    """What ``manage.py ARGS`` prints."""
    out = StringIO()
    call_command(*args, stdout=out, stderr=out)
    return out.getvalue()


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_fleet_plan_includes_the_warehouse() -> None:
    (warehouse,) = plan(["warehouse"], include_applied=True)
    assert (warehouse.vendor, warehouse.error, warehouse.pending) == ("clickhouse", None, 0)
    (migration,) = [m for m in warehouse.migrations if m.app_label == "warehouse"]
    assert [step.runs for step in migration.operations] == [True]
    (default,) = plan(["default"], include_applied=True)
    (elsewhere,) = [m for m in default.migrations if m.app_label == "warehouse"]
    assert [step.runs for step in elsewhere.operations] == [False]
    assert "warehouse (clickhouse): up to date" in call(["fleet", "plan"])


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_fleet_status_includes_the_warehouse_and_finds_it_in_order() -> None:
    report = fleet_status(["default", "books", "loans", "warehouse"])
    assert report.errors == {}
    assert report.migrations["warehouse.0001_initial"]["warehouse"].value == "applied"
    # Recorded everywhere, as migrate records every migration.
    assert report.migrations["auth.0001_initial"]["warehouse"].value == "applied"
    assert report.count("warehouse", State.PENDING) == 0
    assert "warehouse" in report.audited
    assert report.audit == []
    assert "warehouse" not in report.participants  # No prepared transactions there.
    assert report.exit_code == ExitCode.OK, report.reasons
    assert "warehouse" in call(["fleet", "status"])
