"""``dbfleet.atomic``, ``dbfleet.on_commit`` and the write guard, on the configured engines."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.core import mail
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.transaction import TransactionManagementError
from django.test import override_settings

import dbfleet
from dbfleet.sql import is_write
from dbfleet.transactions import guard_writes, resolve_all, write_guard_mode
from tests.bank.models import Account, Vault
from tests.library.models import Author, Book, Review
from tests.loans.models import Favourite, Loan, Member
from tests.settings import DBFLEET, ENGINES

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)


class Boom(Exception):
    pass


def in_block(alias: str) -> bool:
    return connections[alias].in_atomic_block


def balances() -> tuple[int, int]:
    return Account.objects.get().balance, Vault.objects.get().balance


# --- targets -----------------------------------------------------------------


def test_a_model_target_opens_the_block_where_the_model_is_written() -> None:
    with dbfleet.atomic(Book):
        assert in_block("books")
        assert not in_block("default")


def test_no_target_means_the_default_database() -> None:
    with dbfleet.atomic():
        assert in_block("default") and not in_block("books")
    with override_settings(DBFLEET={**DBFLEET, "DEFAULT_DATABASE": "loans"}), dbfleet.atomic():
        assert in_block("loans") and not in_block("default")


def test_an_instance_target_follows_the_instance() -> None:
    author = Author.objects.create(first_name="Ann")
    with dbfleet.atomic(author, Book):
        assert in_block("default") and in_block("books")


def test_targets_come_once_each_in_databases_order() -> None:
    assert resolve_all([Book, "default", Author, Loan, "books"]) == ["default", "books", "loans"]


@pytest.mark.parametrize(
    ("target", "error", "message"),
    [
        (
            "bookz",
            ValueError,
            "'bookz' is not a database alias in DATABASES. Did you mean 'books'?",
        ),
        ("replica", ValueError, "'replica' is a replica and is never written to"),
        (42, TypeError, "not 42"),
    ],
)
def test_a_bad_target_is_refused_before_anything_opens(
    target: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message), dbfleet.atomic(Author, target):
        pass  # pragma: no cover
    assert not in_block("default")


# --- commit and rollback -------------------------------------------------------


def test_a_group_commits_on_every_database() -> None:
    with dbfleet.atomic(Author, Book, Member):
        Author.objects.create(first_name="Ann")
        Book.objects.create(title="Dune")
        Member.objects.create(name="Bo")
    assert (Author.objects.count(), Book.objects.count(), Member.objects.count()) == (1, 1, 1)
    assert not any(in_block(alias) for alias in ("default", "books", "loans"))


def test_an_exception_rolls_back_every_database() -> None:
    with pytest.raises(Boom), dbfleet.atomic(Author, Book, Member):
        Author.objects.create(first_name="Ann")
        Book.objects.create(title="Dune")
        Member.objects.create(name="Bo")
        raise Boom
    assert (Author.objects.count(), Book.objects.count(), Member.objects.count()) == (0, 0, 0)


def test_a_nested_group_rolls_back_alone_and_the_outer_one_commits() -> None:
    with dbfleet.atomic(Author, Book):
        Author.objects.create(first_name="kept")
        with pytest.raises(Boom), dbfleet.atomic(Author, Book):
            Author.objects.create(first_name="lost")
            Book.objects.create(title="lost")
            raise Boom
        Book.objects.create(title="kept")
    assert list(Author.objects.values_list("first_name", flat=True)) == ["kept"]
    assert list(Book.objects.values_list("title", flat=True)) == ["kept"]


def test_an_inner_block_on_a_new_database_commits_at_its_own_end() -> None:
    with pytest.raises(Boom), dbfleet.atomic(Author):
        with dbfleet.atomic(Book):
            Book.objects.create(title="Dune")
        raise Boom
    assert Book.objects.count() == 1  # As with Django's atomic(using=...) on two databases.


def test_a_caught_error_inside_a_block_without_savepoint_rolls_back_the_whole_group() -> None:
    Author.objects.create(first_name="Ann")
    with dbfleet.atomic(Author, Book):
        Book.objects.create(title="Dune")
        try:
            with transaction.atomic(using="default", savepoint=False):
                Author.objects.create(first_name="Ann", id=Author.objects.get().pk)
        except IntegrityError:
            pass
    assert Book.objects.count() == 0


def test_works_as_a_decorator_with_and_without_arguments() -> None:
    @dbfleet.atomic
    def on_default() -> tuple[bool, bool]:
        return in_block("default"), in_block("books")

    @dbfleet.atomic(Author, Book)
    def on_both(depth: int) -> int:
        assert in_block("default") and in_block("books")
        Author.objects.create(first_name=f"a{depth}")
        return on_both(depth - 1) + 1 if depth else 0

    assert on_default() == (True, False)
    assert on_both(3) == 3
    assert Author.objects.count() == 4
    assert not in_block("default")


def test_durable_refuses_to_nest() -> None:
    with pytest.raises(RuntimeError, match="durable"), dbfleet.atomic(Book):  # noqa: SIM117
        with dbfleet.atomic(Author, Book, durable=True):
            pass  # pragma: no cover
    assert not in_block("books") and not in_block("default")


# --- the best-effort commit ---------------------------------------------------


DEFERRED = "MariaDB checks foreign keys at once, not at commit"


@pytest.mark.skipif(ENGINES["loans"] == "mysql", reason=DEFERRED)
def test_a_later_commit_that_fails_names_what_committed() -> None:
    """A deferred foreign key fails at commit: 'default' is in, 'loans' is not."""
    with pytest.raises(dbfleet.PartialCommitError) as caught, dbfleet.atomic(Author, Favourite):
        Author.objects.create(first_name="committed")
        Favourite.objects.create(member_id=999_999, shelf_id=999_999)  # No such rows.
    error = caught.value
    assert (error.committed, error.failed, error.rolled_back) == (("default",), "loans", ())
    assert isinstance(error.__cause__, IntegrityError)
    assert "Committed on 'default', then the commit on 'loans' failed" in str(error)
    assert "two_phase=True" in str(error)
    assert Author.objects.count() == 1 and Favourite.objects.count() == 0
    assert not in_block("default") and not in_block("loans")


@pytest.mark.skipif(ENGINES["books"] == "mysql", reason=DEFERRED)
def test_a_first_commit_that_fails_raises_its_own_error_and_rolls_back_the_rest() -> None:
    with pytest.raises(IntegrityError), dbfleet.atomic(Review, Member):
        Review.objects.create(book_id=999_999, stars=5)  # No such book: fails at commit.
        Member.objects.create(name="rolled back")
    assert Review.objects.count() == 0 and Member.objects.count() == 0


@pytest.mark.skipif(ENGINES["books"] == "sqlite", reason="needs a server to drop the session")
def test_a_commit_on_a_dropped_session_is_a_partial_commit(money: None) -> None:
    """The server ends 'books'' session before it commits; 'default' has committed."""
    with pytest.raises(dbfleet.PartialCommitError) as caught, dbfleet.atomic(Account, Vault):
        Account.objects.update(balance=50)
        Vault.objects.update(balance=150)
        kill_session("books")
    assert (caught.value.committed, caught.value.failed) == (("default",), "books")
    connections["books"].close()
    assert balances() == (50, 100)


def kill_session(alias: str) -> None:
    """End ``alias``'s server session from another connection, as a crash would.

    Returns once the server has ended it, so that nothing the caller sends
    next can still reach the old session.
    """
    connection = connections[alias]
    connection.ensure_connection()
    if connection.vendor == "postgresql":
        session = connection.connection.info.backend_pid
        statements = (
            "SELECT pg_terminate_backend(%s)",
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
        )
    else:
        session = connection.connection.thread_id()
        statements = (
            "KILL %s",
            "SELECT count(*) FROM information_schema.processlist WHERE id = %s",
        )
    other = connections.create_connection(alias)
    try:
        with other.cursor() as cursor:
            cursor.execute(statements[0], [session])
            deadline = time.monotonic() + 10
            while True:
                cursor.execute(statements[1], [session])
                if not cursor.fetchone()[0]:
                    break
                assert time.monotonic() < deadline, f"session {session} of {alias!r} lives on"
                time.sleep(0.005)
    finally:
        other.close()


# --- on_commit ------------------------------------------------------------------


def test_on_commit_runs_after_every_database_of_the_group_committed() -> None:
    calls: list[str] = []
    with dbfleet.atomic(Author, Book):
        transaction.on_commit(lambda: calls.append("books committed"), using="books")
        dbfleet.on_commit(lambda: calls.append("first"), Author)
        dbfleet.on_commit(lambda: calls.append("second"))
        assert calls == []
    assert calls == ["books committed", "first", "second"]


def test_on_commit_never_runs_on_rollback() -> None:
    calls: list[str] = []
    with pytest.raises(Boom), dbfleet.atomic(Author, Book):
        dbfleet.on_commit(lambda: calls.append("called"), Author, Book)
        raise Boom
    with dbfleet.atomic(Author, Book):
        with pytest.raises(Boom), dbfleet.atomic(Book):
            dbfleet.on_commit(lambda: calls.append("in a rolled back savepoint"), Book)
            raise Boom
        dbfleet.on_commit(lambda: calls.append("kept"), Book)
    assert calls == ["kept"]


def test_on_commit_waits_for_each_listed_database_outside_a_group() -> None:
    calls: list[str] = []
    with transaction.atomic(using="default"):
        with transaction.atomic(using="books"):
            dbfleet.on_commit(lambda: calls.append("both"), Author, Book)
        assert calls == []
    assert calls == ["both"]


def test_on_commit_with_nothing_open_runs_at_once() -> None:
    calls: list[str] = []
    dbfleet.on_commit(lambda: calls.append("now"), Book)
    assert calls == ["now"]


def test_a_robust_callback_error_is_logged_and_the_next_one_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fail() -> None:
        raise Boom("callback failed")

    calls: list[str] = []
    with caplog.at_level(logging.ERROR, "dbfleet.transactions"), dbfleet.atomic(Author, Book):
        dbfleet.on_commit(fail, robust=True)
        dbfleet.on_commit(lambda: calls.append("next"))
    assert calls == ["next"]
    assert "callback failed" in caplog.text


def test_a_callback_error_propagates_without_robust() -> None:
    def fail() -> None:
        raise Boom

    with pytest.raises(Boom), dbfleet.atomic(Author, Book):
        Author.objects.create(first_name="Ann")
        dbfleet.on_commit(fail)
    assert Author.objects.count() == 1  # Committed before the callback ran.


# --- the write guard -------------------------------------------------------------


def test_the_write_guard_raises_naming_both_databases_and_the_fix() -> None:
    with pytest.raises(dbfleet.WriteOutsideTransactionError) as caught, dbfleet.atomic(Author):
        Book.objects.create(title="Dune")
    message = str(caught.value)
    assert "A write on database 'books' ran outside the transaction open on 'default'" in message
    assert "dbfleet.atomic('default', 'books')" in message
    assert Book.objects.count() == 0


@override_settings(DBFLEET={**DBFLEET, "WRITE_GUARD": None})
def test_the_write_guard_warns_by_default_in_tests() -> None:
    with pytest.warns(dbfleet.WriteOutsideTransaction, match="'books'"), transaction.atomic():
        Book.objects.create(title="Dune")
    assert Book.objects.count() == 1


@override_settings(DBFLEET={**DBFLEET, "WRITE_GUARD": "off"})
def test_the_write_guard_can_be_turned_off() -> None:
    with transaction.atomic():
        Book.objects.create(title="Dune")
    assert Book.objects.count() == 1


def test_the_write_guard_lets_reads_and_covered_writes_through() -> None:
    with dbfleet.atomic(Author):
        assert list(Book.objects.all()) == []
    with dbfleet.atomic(Author, Book):
        Book.objects.create(title="Dune")
    Book.objects.create(title="Emma")  # Nothing open: nothing to guard.
    assert Book.objects.count() == 2


@pytest.mark.parametrize(
    ("sql", "write"),
    [
        ("SELECT 1", False),
        ("  select * from t for update", True),  # Takes row locks: the primary's.
        ("SAVEPOINT s1", False),
        ("INSERT INTO t VALUES (1)", True),
        ("WITH x AS (DELETE FROM t RETURNING *) SELECT 1", True),
        ("update t set a = 1", True),
        ("CREATE TABLE t (a int)", True),
    ],
)
def test_is_write(sql: str, write: bool) -> None:
    assert is_write(sql) is write


def test_errors_are_database_errors() -> None:
    assert issubclass(dbfleet.PartialCommitError, DatabaseError)
    assert issubclass(dbfleet.WriteOutsideTransactionError, TransactionManagementError)


@override_settings(DBFLEET={**DBFLEET, "WRITE_GUARD": None})
def test_the_write_guard_is_on_with_debug_or_in_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    assert write_guard_mode() == "warn"  # The test runner's mail.outbox is there.
    monkeypatch.delattr(mail, "outbox")
    assert write_guard_mode() == "off"
    with override_settings(DEBUG=True):
        assert write_guard_mode() == "warn"


@pytest.mark.skipif(
    "sqlite" in (ENGINES["default"], ENGINES["books"]),
    reason="SQLite lets one writer at a time into a database",
)
def test_one_block_object_can_be_entered_by_several_threads_and_nested() -> None:
    shared = dbfleet.atomic(Author, Book)
    inside = threading.Barrier(2)

    def work(name: str) -> None:
        try:
            with shared:
                Author.objects.create(first_name=name)
                inside.wait(timeout=10)  # Both threads are in the block at once.
                with pytest.raises(Boom), shared:
                    Book.objects.create(title=f"{name}'s lost book")
                    raise Boom
                Book.objects.create(title=name)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(work, ["first", "second"]))
    assert sorted(Author.objects.values_list("first_name", flat=True)) == ["first", "second"]
    assert sorted(Book.objects.values_list("title", flat=True)) == ["first", "second"]


def test_a_failing_django_callback_still_leaves_every_block() -> None:
    def fail() -> None:
        raise Boom

    with pytest.raises(Boom), dbfleet.atomic(Author, Book):
        Author.objects.create(first_name="Ann")
        Book.objects.create(title="Dune")
        transaction.on_commit(fail, using="default")  # Django's, on the first database.
    assert not in_block("default") and not in_block("books")
    assert connections["books"].get_autocommit()
    assert (Author.objects.count(), Book.objects.count()) == (1, 1)


def test_a_database_marked_for_rollback_rolls_back_the_nested_group() -> None:
    with dbfleet.atomic(Author, Book):
        Author.objects.create(first_name="kept")
        with dbfleet.atomic(Author, Book):
            Author.objects.create(first_name="lost")
            Book.objects.create(title="lost")
            transaction.set_rollback(True, using="default")
        Book.objects.create(title="kept")
    assert list(Author.objects.values_list("first_name", flat=True)) == ["kept"]
    assert list(Book.objects.values_list("title", flat=True)) == ["kept"]


def test_the_write_guard_keeps_djangos_execute_wrapper_order() -> None:
    """A wrapper pushed before the connection opens is the one popped when it ends."""
    seen: list[str] = []

    def mine(execute: Any, sql: str, *args: Any) -> Any:
        seen.append(sql)
        return execute(sql, *args)

    def in_a_new_thread() -> list[Any]:
        connection = connections["books"]
        try:
            with connection.execute_wrapper(mine):
                Book.objects.count()  # Opens the connection: the guard goes in.
            return list(connection.execute_wrappers)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        wrappers = pool.submit(in_a_new_thread).result()
    assert wrappers == [guard_writes]
    assert seen
