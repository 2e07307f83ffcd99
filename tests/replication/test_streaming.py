"""Replicas against a real PostgreSQL streaming replica, created by this run.

Replay is paused on the replica (``pg_wal_replay_pause()``) wherever a test
must prove a read did not come from it: a row written then is missing there
for as long as the pause lasts, so finding it proves where the read went.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory, override_settings

import dbfleet
from dbfleet.replicas import ReadYourWritesMiddleware
from dbfleet.testing import capture_queries, fresh_scope
from tests.library.models import Author
from tests.settings import DBFLEET, REPLICA
from tests.threads import run_in_thread

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

#: Checks every 50 ms, a cool-down of half a second.
FAST = {
    **DBFLEET,
    "REPLICA_CHECK_INTERVAL": 0.05,
    "REPLICA_COOLDOWN": 0.5,
    "MAX_LAG": 60,
    "READ_YOUR_WRITES_WINDOW": 1,
}


@pytest.fixture(autouse=True)
def fast_health() -> Iterator[None]:
    with override_settings(DBFLEET=FAST):
        yield


def on_replica(sql: str) -> Any:
    with connections[REPLICA].cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def replica_position() -> str:
    return str(on_replica("SELECT pg_last_wal_replay_lsn()::text"))


def wait_for_replay() -> None:
    """Until the replica has replayed everything the primary has written."""
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_lsn()::text")
        target = cursor.fetchone()[0]
    deadline = time.monotonic() + 10
    while not on_replica(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"):
        assert time.monotonic() < deadline, "the replica did not catch up in 10 s"
        time.sleep(0.02)


@pytest.fixture
def paused() -> Iterator[None]:
    """Replay paused on the replica: what the primary writes now is not there."""
    wait_for_replay()
    on_replica("SELECT pg_wal_replay_pause()::text")
    try:
        yield
    finally:
        on_replica("SELECT pg_wal_replay_resume()::text")


def resume() -> None:
    on_replica("SELECT pg_wal_replay_resume()::text")
    wait_for_replay()


def found(name: str) -> tuple[bool, list[str]]:
    """Whether a read finds the author ``name``, and where its queries went."""
    with capture_queries() as queries:
        exists = Author.objects.filter(first_name=name).exists()
    return exists, queries.aliases


def test_reads_go_to_the_replica_and_writes_to_the_primary() -> None:
    with capture_queries() as queries:
        Author.objects.create(first_name="Ada", last_name="Lovelace")
    assert queries.aliases == ["default"]
    wait_for_replay()
    assert on_replica("SELECT pg_is_in_recovery()") is True
    with fresh_scope():  # A new scope: it has not written.
        assert found("Ada") == (True, [REPLICA])


def test_the_replica_really_is_behind_while_paused(paused: None) -> None:
    Author.objects.create(first_name="Ada", last_name="Lovelace")
    with dbfleet.use_replica():
        assert found("Ada") == (False, [REPLICA])


def test_a_read_after_a_write_in_the_same_scope_sees_it(paused: None) -> None:
    with fresh_scope():
        Author.objects.create(first_name="Ada", last_name="Lovelace")
        assert found("Ada") == (True, ["default"])
    with fresh_scope():
        assert found("Ada") == (False, [REPLICA])  # Another scope, which did not write.


def view_writes(request: HttpRequest) -> HttpResponse:
    Author.objects.create(first_name=request.GET["name"], last_name="Lovelace")
    return HttpResponse("created")


def view_reads(request: HttpRequest) -> HttpResponse:
    exists, aliases = found(request.GET["name"])
    return HttpResponse(f"{exists} {' '.join(aliases)}")


def request(
    view: Callable[[HttpRequest], HttpResponse], name: str, cookies: dict[str, str]
) -> HttpResponse:
    incoming = RequestFactory().get("/", {"name": name})
    incoming.COOKIES.update(cookies)
    response: HttpResponse = ReadYourWritesMiddleware(view)(incoming)
    cookies.update({key: morsel.value for key, morsel in response.cookies.items()})
    return response


@pytest.mark.parametrize("mode", ["time", "position"])
def test_the_next_request_inside_the_window_sees_the_write(paused: None, mode: str) -> None:
    with override_settings(DBFLEET={**FAST, "READ_YOUR_WRITES": mode}):
        browser: dict[str, str] = {}
        request(view_writes, "Ada", browser)
        assert "dbfleet_primary" in browser
        assert request(view_reads, "Ada", browser).content == b"True default"
        # Another browser, without the cookie, reads from the (stale) replica.
        assert request(view_reads, "Ada", {}).content == b"False " + REPLICA.encode()
        if mode == "position":
            resume()  # Once the replica has replayed the write it is used again.
            assert request(view_reads, "Ada", browser).content == b"True " + REPLICA.encode()
        else:
            time.sleep(1.1)  # READ_YOUR_WRITES_WINDOW is 1 s here.
            assert request(view_reads, "Ada", browser).content == b"False " + REPLICA.encode()


def test_a_background_task_with_the_position_reads_the_write(paused: None) -> None:
    with fresh_scope():
        Author.objects.create(first_name="Ada", last_name="Lovelace")
        position = dbfleet.write_position()
    assert position.startswith('{"default":"')

    def task() -> tuple[bool, list[str]]:
        with dbfleet.read_your_writes(position):
            return found("Ada")

    assert run_in_thread(task) == (True, ["default"])
    # Without the position, the task would have read the stale replica.
    assert run_in_thread(lambda: found("Ada")) == (False, [REPLICA])
    resume()
    assert run_in_thread(task) == (True, [REPLICA])


def test_a_replica_that_lags_more_than_max_lag_is_skipped(paused: None) -> None:
    with override_settings(DBFLEET={**FAST, "MAX_LAG": 0.2}):
        Author.objects.create(first_name="Ada", last_name="Lovelace")
        with fresh_scope():
            deadline = time.monotonic() + 5
            # Behind at two checks in a row and more than MAX_LAG: skipped.
            while found("Ada") != (True, ["default"]):
                assert time.monotonic() < deadline, "the lagging replica was still read"
                time.sleep(0.05)


#: Health checked rarely: a replica that stops is found by the read that needs it.
SLOW_CHECKS = {**FAST, "REPLICA_CHECK_INTERVAL": 60}


def test_a_replica_stopped_under_an_open_connection(clusters: Any) -> None:
    _, replica = clusters
    Author.objects.create(first_name="Ada", last_name="Lovelace")
    wait_for_replay()
    with override_settings(DBFLEET=SLOW_CHECKS), fresh_scope():
        assert found("Ada") == (True, [REPLICA])  # Checked, and the connection is open.
        replica.stop("immediate")
        try:
            # The connection dies under the read: the primary answers it, on the
            # caller's cursor, and the replica is skipped from now on.
            assert found("Ada") == (True, ["default"])
            assert found("Ada") == (True, ["default"])
            assert f"{REPLICA} (replica of 'default'): unreachable" in fleet_status(exit=6)
        finally:
            replica.start("max_prepared_transactions=8")
        wait_for_replay()
        time.sleep(0.6)  # The cool-down, after which the replica is checked again.
        assert found("Ada") == (True, [REPLICA])
        assert f"{REPLICA} (replica of 'default'): reachable" in fleet_status()


def test_a_replica_stopped_between_requests(clusters: Any) -> None:
    _, replica = clusters
    Author.objects.create(first_name="Ada", last_name="Lovelace")
    wait_for_replay()
    with override_settings(DBFLEET=SLOW_CHECKS), fresh_scope():
        assert found("Ada") == (True, [REPLICA])
        connections.close_all()  # As at the end of a request.
        replica.stop("immediate")
        try:
            # No check is due, but the new connection is refused: the primary reads.
            assert found("Ada") == (True, ["default"])
            connections.close_all()
            time.sleep(0.6)  # Past the cool-down: the replica is checked, and refused again.
            assert found("Ada") == (True, ["default"])
        finally:
            replica.start("max_prepared_transactions=8")
        wait_for_replay()
        time.sleep(0.6)
        assert found("Ada") == (True, [REPLICA])


def fleet_status(exit: int = 0) -> str:
    """``fleet status``'s table; it exits ``exit`` (6: a database is unreachable)."""
    output = StringIO()
    try:
        call_command("fleet", "status", stdout=output)
    except CommandError as error:
        assert error.returncode == exit, error
    else:
        assert exit == 0, "fleet status exited 0"
    return output.getvalue()


def test_fleet_status_shows_the_lag(paused: None) -> None:
    Author.objects.create(first_name="Ada", last_name="Lovelace")
    time.sleep(0.3)
    output = StringIO()
    call_command("fleet", "status", format="json", stdout=output)
    (replica,) = json.loads(output.getvalue())["replicas"]
    assert replica["reachable"] is True and replica["lag"] >= 0.3
