"""Replica reads, scopes and read-your-writes, with the test mirror as the replica.

In these configurations ``replica`` is the test mirror of ``default``: it reads
the same data, so a read finds the same rows wherever it goes and
``capture_queries()`` tells where it went. ``tests/replication/`` repeats what
matters against a real streaming replica.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from io import StringIO
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.db import connections, transaction
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory, TestCase, override_settings

import dbfleet
from dbfleet.replicas import ReadYourWritesMiddleware, read_preference
from dbfleet.replicas.choice import READS, GroupReads
from dbfleet.replicas.middleware import COOKIE_SALT, save_pins
from dbfleet.replicas.positions import has_replayed
from dbfleet.replicas.scopes import Pin, Writes, note_write
from dbfleet.sql import is_write
from dbfleet.testing import capture_queries, fresh_scope
from dbfleet.topology import Group, Replica
from tests.conftest import Clock
from tests.library.models import Author, Book
from tests.settings import DBFLEET
from tests.threads import Threads, run_in_thread, run_in_threads

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture(autouse=True)
def healthy_replicas() -> None:
    """Forget what earlier tests did to the replicas' health."""
    READS.clear()


def read_author() -> list[str]:
    """Where an ORM read of ``Author`` (in ``default``, replicated) went."""
    with capture_queries() as queries:
        list(Author.objects.all())
    return queries.aliases


def test_reads_go_to_the_replica_writes_to_the_primary() -> None:
    with capture_queries() as queries:
        Author.objects.create(first_name="Ada")
    assert queries.aliases == ["default"]
    with fresh_scope():
        assert read_author() == ["replica"]
        assert Author.objects.get().first_name == "Ada"


def test_models_without_replicas_read_from_their_database() -> None:
    with capture_queries() as queries:
        list(Book.objects.all())
    assert queries.aliases == ["books"], queries


def test_a_write_pins_the_rest_of_the_scope_to_the_primary() -> None:
    assert read_author() == ["replica"]
    Author.objects.create(first_name="Ada")
    assert read_author() == ["default"]
    with fresh_scope():
        assert read_author() == ["replica"]  # A scope of its own: it has not written.
        Book.objects.create(content="x")
        assert read_author() == ["replica"]  # A write to another group pins nothing here.
    assert read_author() == ["default"]


def test_raw_sql_writes_pin_too() -> None:
    with connections["default"].cursor() as cursor:
        cursor.execute("UPDATE library_author SET email = ''")
    assert read_author() == ["default"]


def test_outside_any_scope_a_write_pins_for_the_window(clock: Clock) -> None:
    def in_a_new_thread() -> list[list[str]]:
        Author.objects.create(first_name="Ada")
        first = read_author()
        clock.advance(0.19)
        still = read_author()
        clock.advance(0.02)
        return [first, still, read_author()]

    with override_settings(DBFLEET={**DBFLEET, "READ_YOUR_WRITES_WINDOW": 0.2}):
        assert run_in_thread(in_a_new_thread) == [["default"], ["default"], ["replica"]]


def test_nested_scopes_share_their_writes() -> None:
    with fresh_scope():
        Author.objects.create(first_name="Ada")
        with dbfleet.read_your_writes():
            assert read_author() == ["default"]  # The outer scope's write holds here.
        with fresh_scope():
            assert read_author() == ["replica"]  # A root scope starts afresh.
    with fresh_scope():
        with dbfleet.read_your_writes():
            Author.objects.create(first_name="Grace")
        assert read_author() == ["default"]  # The inner scope's write holds after it.
    with fresh_scope():
        with fresh_scope():
            Author.objects.create(first_name="Grace")
        assert read_author() == ["replica"]  # A root scope keeps its writes to itself.


def test_reads_bound_to_an_instance_from_a_replica_still_follow_the_rules() -> None:
    Author.objects.create(first_name="Ada")
    with fresh_scope():
        author = Author.objects.get()
        assert author._state.db == "replica"
        with capture_queries() as queries:
            author.refresh_from_db()
            with dbfleet.use_primary():
                author.refresh_from_db()
            with transaction.atomic():
                author.refresh_from_db()
            Author.objects.update(email="ada@example.com")
            author.refresh_from_db()
        reads_and_writes = [
            query.alias for query in queries if query.sql.startswith(("SELECT", "UPDATE"))
        ]  # Not SQLite's BEGIN.
        assert reads_and_writes == ["replica", "default", "default", "default", "default"]
        assert author.email == "ada@example.com"


def test_a_transaction_on_the_primary_reads_from_the_primary() -> None:
    with transaction.atomic():
        assert read_author() == ["default"]
        with dbfleet.use_replica():
            assert read_author() == ["replica"]
    with dbfleet.atomic("default"):
        assert read_author() == ["default"]


def test_use_primary_and_use_replica_nest() -> None:
    with dbfleet.use_primary():
        assert read_author() == ["default"]
        with dbfleet.use_replica():
            assert read_author() == ["replica"]
            with dbfleet.use_primary():
                assert read_author() == ["default"]
            assert read_author() == ["replica"]
        assert read_author() == ["default"]
    assert read_preference() is None


def test_use_replica_wins_over_a_write_in_the_scope() -> None:
    Author.objects.create(first_name="Ada")
    with dbfleet.use_replica():
        assert read_author() == ["replica"]
    assert read_author() == ["default"]


def test_decorators_on_functions_and_coroutine_functions() -> None:
    @dbfleet.use_primary()
    def sync_view() -> str | None:
        return read_preference()

    @dbfleet.use_replica()
    async def async_view() -> str | None:
        await asyncio.sleep(0)
        return read_preference()

    assert sync_view() == "primary"
    assert asyncio.run(async_view()) == "replica"
    assert read_preference() is None


def test_one_scope_object_entered_from_many_threads() -> None:
    shared = dbfleet.use_primary()
    start = threading.Barrier(8)

    def work() -> list[str | None]:
        start.wait()
        with shared:
            inside = read_preference()
            time.sleep(0.01)
            with shared:
                nested = read_preference()
            after_nested = read_preference()
        return [inside, nested, after_nested, read_preference()]

    results = run_in_threads([work] * 8)
    assert results == [["primary", "primary", "primary", None]] * 8


def test_pins_never_leak_between_1000_concurrent_tasks_and_threads(
    request: pytest.FixtureRequest,
) -> None:
    """500 asyncio tasks and 500 threads, each pinning to one side or not, all at once."""
    Author.objects.create(first_name="Ada")
    slow_checks = override_settings(DBFLEET={**DBFLEET, "REPLICA_CHECK_INTERVAL": 600})
    slow_checks.enable()
    request.addfinalizer(slow_checks.disable)
    with fresh_scope():
        assert read_author() == ["replica"]  # Checked and connected: the tasks make no query.
    scopes: list[tuple[Callable[[], AbstractContextManager[Any]], str | None]] = [
        (nullcontext, None),
        (dbfleet.use_primary, "primary"),
        (dbfleet.use_replica, "replica"),
    ]
    expected_reads = {None: "replica", "primary": "default", "replica": "replica"}
    wrong: list[str] = []

    async def task(number: int) -> None:
        scope, expected = scopes[number % 3]
        writes = number % 2 == 0  # Half of them write inside a scope of their own.
        with fresh_scope(), scope():
            for _ in range(3):
                await asyncio.sleep(random.random() / 1000)
                if writes:
                    note_write("default")
                read = dbfleet.database_for(Author)
                want = "default" if writes and expected is None else expected_reads[expected]
                if read_preference() != expected or read != want:
                    wrong.append(f"task {number}: {read_preference()}, {read}")

    def thread(number: int) -> None:
        scope, expected = scopes[number % 3]
        with scope():
            for _ in range(3):
                time.sleep(random.random() / 1000)
                if read_preference() != expected:
                    wrong.append(f"thread {number}: {read_preference()}")

    async def main() -> None:
        await asyncio.gather(*(task(number) for number in range(500)))

    # An exception in a task (gather) or a thread (Threads) fails the test too.
    with Threads([partial(thread, number) for number in range(500)]):
        asyncio.run(main())
    assert wrong == []
    assert read_preference() is None


def test_django_using_db_manager_and_instance_state_are_honoured() -> None:
    Author.objects.create(first_name="Ada")
    with capture_queries() as queries:
        list(Author.objects.using("default"))
        list(Author.objects.db_manager("replica").all())
    assert queries.aliases == ["default", "replica"]
    with fresh_scope():
        author = Author.objects.get()  # From the replica.
        assert author._state.db == "replica"
        with capture_queries() as queries:
            author.refresh_from_db()
            Book.objects.create(content="x")
        assert queries.aliases == ["replica", "books"]
        with capture_queries() as queries:
            author.save()  # Saved to the primary, though read from the replica.
        assert queries.aliases[-1] == "default"


def test_a_write_to_a_replica_is_refused_with_its_name() -> None:
    with pytest.raises(dbfleet.WriteToReplicaError, match="'replica', a replica of 'default'"):
        Author.objects.using("replica").create(first_name="Ada")
    refused = pytest.raises(dbfleet.WriteToReplicaError, match=r"using='default'")
    with refused, connections["replica"].cursor() as cursor:
        cursor.execute("DELETE FROM library_author")
    assert not Author.objects.using("default").exists()


def test_writes_are_recognised_behind_comments() -> None:
    assert is_write("/* tag */ UPDATE library_author SET email = ''")
    assert is_write("-- note\nDELETE FROM library_author")
    assert not is_write("/* tag */ SELECT 1")
    assert is_write("/* unclosed")
    for sql in ("/* tag */ DELETE FROM library_author", "CALL refresh_totals()"):
        with pytest.raises(dbfleet.WriteToReplicaError), connections["replica"].cursor() as cursor:
            cursor.execute(sql)


def test_a_generator_function_cannot_be_decorated() -> None:
    def rows() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator function"):
        dbfleet.use_primary()(rows)


def test_weights_share_the_reads() -> None:
    # "books" stands in for a second replica: the choice only needs a connection.
    # It does not replicate, so its health is never checked here (it would be skipped).
    reads = GroupReads(Group("default", (Replica("replica", 1), Replica("books", 3))))
    for health in reads.replicas:
        health.check_after = float("inf")
    chosen = Counter(reads.replica() for _ in range(4000))
    assert set(chosen) == {"replica", "books"}
    assert 0.70 < chosen["books"] / 4000 < 0.80


def test_no_healthy_replica_reads_from_the_primary() -> None:
    (health,) = READS["default"].replicas  # type: ignore[union-attr]
    with fresh_scope():
        assert read_author() == ["replica"]
        health.down_until = time.monotonic() + 60
        READS["default"].next_event = 0  # type: ignore[union-attr]
        assert read_author() == ["default"]


def test_positions_compare_by_lsn_and_by_gtid_domain() -> None:
    assert has_replayed("postgresql", "0/3000060", "0/3000060")
    assert has_replayed("postgresql", "1/0", "0/FFFFFFFF")
    assert not has_replayed("postgresql", "0/2FFFFFF", "0/3000060")
    assert has_replayed("mysql", "0-1-10,1-2-5", "0-1-9")
    assert not has_replayed("mysql", "0-1-10", "0-1-10,1-2-5")
    assert not has_replayed("postgresql", None, "0/1")


def test_a_position_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError, match="write_position"):
        dbfleet.read_your_writes("default@0/1")
    with pytest.raises(ValueError, match="write_position"):
        dbfleet.read_your_writes('{"default": 7}')


def test_write_position_inside_the_transaction_is_refused() -> None:
    with fresh_scope(), transaction.atomic():
        Author.objects.create(first_name="Ada")
        with pytest.raises(transaction.TransactionManagementError, match="on_commit"):
            dbfleet.write_position()
        transaction.on_commit(lambda: positions.append(dbfleet.write_position()))
        positions: list[str] = []
    assert list(json.loads(positions[0])) == ["default"]


def test_write_position_names_what_the_scope_wrote() -> None:
    with fresh_scope():
        assert dbfleet.write_position() == "{}"
        Author.objects.create(first_name="Ada")
        position = dbfleet.write_position()
    vendor = connections["default"].vendor
    (value,) = json.loads(position).values()
    if vendor == "postgresql":
        assert "/" in value
    else:
        assert value == ""  # No replication position (SQLite, MariaDB without a binary log).
    with dbfleet.read_your_writes(position):
        # The mirror has everything; without a position the primary is the safe place.
        assert read_author() == (["replica"] if value else ["default"])


def test_fleet_status_shows_each_replica() -> None:
    output = StringIO()
    call_command("fleet", "status", stdout=output)
    assert "replica (replica of 'default'): reachable, lag 0.0 s" in output.getvalue()
    output = StringIO()
    call_command("fleet", "status", "--database", "books", format="json", stdout=output)
    assert json.loads(output.getvalue())["replicas"] == []
    output = StringIO()
    call_command("fleet", "status", format="json", stdout=output)
    (replica,) = json.loads(output.getvalue())["replicas"]
    assert replica == {
        "alias": "replica",
        "primary": "default",
        "reachable": True,
        "state": "ok",
        "lag": 0.0,
        "problem": "",
    }


def view_writes(request: HttpRequest) -> HttpResponse:
    Author.objects.create(first_name="Ada")
    return HttpResponse("created")


def view_reads(request: HttpRequest) -> HttpResponse:
    return HttpResponse(" ".join(read_author()))


def respond(view: Callable[..., Any], cookies: dict[str, str]) -> HttpResponse:
    incoming = RequestFactory().get("/")
    incoming.COOKIES.update(cookies)
    response: HttpResponse = ReadYourWritesMiddleware(view)(incoming)
    return response


def test_the_middleware_keeps_a_writer_on_the_primary_for_the_window() -> None:
    response = respond(view_writes, {})
    cookie = response.cookies["dbfleet_primary"]
    assert cookie["max-age"] == 2 and cookie["httponly"] and cookie["samesite"] == "Lax"
    assert not cookie["secure"]  # Set over HTTPS only.
    browser = {"dbfleet_primary": cookie.value}
    assert respond(view_reads, browser).content == b"default"
    assert "dbfleet_primary" not in respond(view_reads, browser).cookies  # Reads set none.
    assert respond(view_reads, {}).content == b"replica"
    tampered = {"dbfleet_primary": cookie.value.replace("default", "books__")}
    assert respond(view_reads, tampered).content == b"replica"


def view_writes_then_reads(request: HttpRequest) -> HttpResponse:
    Author.objects.create(first_name="Ada")
    read_author()
    return HttpResponse(dbfleet.write_position())


@pytest.mark.parametrize("mode", ["time", "position"])
def test_a_request_that_writes_then_reads_still_sets_the_cookie(mode: str) -> None:
    with override_settings(DBFLEET={**DBFLEET, "READ_YOUR_WRITES": mode}):
        cookie = respond(view_writes_then_reads, {}).cookies["dbfleet_primary"]
        # With a position, the test mirror has replayed it; without one, the primary reads.
        has_position = mode == "position" and connections["default"].vendor == "postgresql"
        expected = b"replica" if has_position else b"default"
        assert respond(view_reads, {"dbfleet_primary": cookie.value}).content == expected


def test_the_cookie_holds_what_the_request_wrote_and_what_still_holds(clock: Clock) -> None:
    now = clock.now
    writes = Writes(
        explicit=True,
        pins={
            "default": Pin(float("inf"), "0/1"),  # Handed over: not the browser's.
            "books": Pin(float("inf"), wrote=True, stale=True),  # Written now.
            "loans": Pin(now + 60, None),  # From the cookie, still holding.
            "old": Pin(now - 1, None),  # From the cookie, expired.
        },
        written={"books"},
    )
    response = HttpResponse()
    save_pins(writes, RequestFactory().get("/", secure=True), response)
    cookie = response.cookies["dbfleet_primary"]
    assert cookie["max-age"] == 60 and cookie["secure"]
    incoming = RequestFactory().get("/")
    incoming.COOKIES["dbfleet_primary"] = cookie.value
    entries = json.loads(str(incoming.get_signed_cookie("dbfleet_primary", salt=COOKIE_SALT)))
    assert sorted(entries) == ["books", "loans"]
    assert entries["books"] == [now + 2, None]  # The window, from the moment of the response.


def test_the_cookie_expires_after_the_window(clock: Clock) -> None:
    with override_settings(DBFLEET={**DBFLEET, "READ_YOUR_WRITES_WINDOW": 0.2}):
        cookie = respond(view_writes, {}).cookies["dbfleet_primary"]
        assert cookie["max-age"] == 1  # Rounded up; the value carries the exact end.
        browser = {"dbfleet_primary": cookie.value}
        assert respond(view_reads, browser).content == b"default"
        clock.advance(0.19)
        assert respond(view_reads, browser).content == b"default"
        clock.advance(0.02)
        assert respond(view_reads, browser).content == b"replica"


def test_the_middleware_under_asgi() -> None:
    def closing(view: Callable[[HttpRequest], HttpResponse]) -> Callable[..., Any]:
        """``view`` run by a worker thread, which closes its connections after it."""

        def run(request: HttpRequest) -> HttpResponse:
            try:
                return view(request)
            finally:
                connections.close_all()

        return sync_to_async(run)

    async def write(request: HttpRequest) -> HttpResponse:
        response: HttpResponse = await closing(view_writes)(request)
        return response

    async def read(request: HttpRequest) -> HttpResponse:
        response: HttpResponse = await closing(view_reads)(request)
        return response

    async def requests() -> tuple[HttpResponse, HttpResponse, HttpResponse]:
        written = await ReadYourWritesMiddleware(write)(RequestFactory().get("/"))
        incoming = RequestFactory().get("/")
        incoming.COOKIES["dbfleet_primary"] = written.cookies["dbfleet_primary"].value
        return (
            written,
            await ReadYourWritesMiddleware(read)(incoming),
            await ReadYourWritesMiddleware(read)(RequestFactory().get("/")),
        )

    written, pinned, fresh = asyncio.run(requests())
    assert (pinned.content, fresh.content) == (b"default", b"replica")
    assert asyncio.iscoroutinefunction(ReadYourWritesMiddleware(read))


class TestCaseWorks(TestCase):
    """In a TestCase, the test's transaction is open on the primary: reads see its rows."""

    databases = {"default", "replica", "books"}

    @classmethod
    def setUpTestData(cls) -> None:
        Author.objects.create(first_name="Ada")

    def test_reads_see_the_test_data(self) -> None:
        assert read_author() == ["default"]
        assert Author.objects.get().first_name == "Ada"
