"""A replica that is not one, and a server that accepts connections and never answers.

The silent server is a real listener: it accepts each connection and then
says nothing, as a hung server or a half-dead network path does.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connections
from django.test import override_settings

from dbfleet import vendors
from dbfleet.replicas import Health, replica_health
from dbfleet.replicas.choice import READS
from dbfleet.testing import capture_queries, fresh_scope
from dbfleet.transactions.two_phase import recover
from dbfleet.transactions.two_phase.recovery import find_in_doubt
from tests.library.models import Author
from tests.settings import DBFLEET, ENGINES, REPLICA

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)
on_a_server = pytest.mark.skipif(
    ENGINES["default"] == "sqlite", reason="the silent server stands in for a database server"
)
#: How long dbfleet's probes wait here; every wait below is bounded by a few times this.
TIMEOUT = 2.0
FAST = {**DBFLEET, "PROBE_TIMEOUT": TIMEOUT, "REPLICA_COOLDOWN": 60}


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port where a listener accepts every connection and never sends a byte."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        assert not thread.is_alive()
        for connection in accepted:
            connection.close()
        server.close()


@contextmanager
def alias_at(alias: str, port: int, **options: Any) -> Iterator[None]:
    """``connections[alias]`` (in this thread) reaches the silent server instead."""
    original = connections[alias]
    settings_dict = {**original.settings_dict, "HOST": "127.0.0.1", "PORT": port}
    settings_dict["OPTIONS"] = {**settings_dict.get("OPTIONS", {}), **options}
    connections[alias] = type(original)(settings_dict, alias)
    try:
        yield
    finally:
        connections[alias].close()
        connections[alias] = original


@on_a_server
@override_settings(DBFLEET=FAST)
def test_replica_health_gives_up_on_a_silent_server(silent_port: int) -> None:
    started = time.monotonic()
    with alias_at(REPLICA, silent_port):  # No timeout of its own in OPTIONS.
        (health,) = replica_health()
    assert time.monotonic() - started < 4 * TIMEOUT
    assert health.state is Health.UNREACHABLE


@on_a_server
@override_settings(DBFLEET=FAST)
def test_recovery_gives_up_on_a_silent_server(silent_port: int) -> None:
    started = time.monotonic()
    with alias_at("books", silent_port):
        found, unreachable = find_in_doubt(["books"])
        recovery = recover()
    assert time.monotonic() - started < 8 * TIMEOUT
    assert found == []
    assert set(unreachable) == {"books"}
    assert "books" in recovery.unreachable
    assert recovery.purged == 0  # Nothing is purged while a database cannot be asked.


@on_a_server
@override_settings(DBFLEET=FAST)
def test_a_read_whose_replica_never_answers_goes_to_the_primary(silent_port: int) -> None:
    Author.objects.create(first_name="Ada")
    option = vendors.of(connections[REPLICA]).connect_timeout_option
    assert option is not None
    READS.clear()  # No health known yet: the first read checks the replica.
    started = time.monotonic()
    with alias_at(REPLICA, silent_port, **{option: 2}), fresh_scope(), capture_queries() as queries:
        names = list(Author.objects.values_list("first_name", flat=True))
    assert time.monotonic() - started < 4 * TIMEOUT
    assert names == ["Ada"]
    assert queries.aliases == ["default"]
    (health,) = READS["default"].replicas  # type: ignore[union-attr]
    assert health.state is Health.UNREACHABLE


def test_the_probe_options_bound_connecting_and_statements() -> None:
    postgresql = vendors.of_engine("postgresql").probe_options({"options": "-c x=1"}, 2.5)
    assert postgresql == {"options": "-c x=1 -c statement_timeout=2500", "connect_timeout": 3}
    mysql = vendors.of_engine("mysql").probe_options({"charset": "utf8mb4"}, 0.5)
    assert mysql == {"charset": "utf8mb4", "connect_timeout": 1, "read_timeout": 1,
                     "write_timeout": 1}  # fmt: skip


def test_probing_puts_the_connection_back() -> None:
    original = connections["default"]
    with vendors.probing(["default"], TIMEOUT):
        probe = connections["default"]
        assert probe is not original
        assert probe.settings_dict["NAME"] == original.settings_dict["NAME"]
        with probe.cursor() as cursor:
            cursor.execute("SELECT 1")
    assert connections["default"] is original
    expected = vendors.of(original).probe_options(original.settings_dict["OPTIONS"], TIMEOUT)
    assert probe.settings_dict["OPTIONS"] == expected


# --- A replica that does not replicate ---------------------------------------------------


@override_settings(DBFLEET={**DBFLEET, "REPLICAS": {"default": ["books"]}})
def test_a_writable_database_listed_as_a_replica_is_not_read() -> None:
    """'books' is a database of its own: it replicates nothing from 'default'."""
    Author.objects.create(first_name="Ada")
    (health,) = replica_health()
    assert health.state is Health.NOT_A_REPLICA
    assert "replicates from nothing" in health.problem
    with fresh_scope(), capture_queries() as queries:  # Not pinned by the write.
        assert list(Author.objects.values_list("first_name", flat=True)) == ["Ada"]
    assert queries.aliases == ["default"]
    (health,) = READS["default"].replicas  # type: ignore[union-attr]
    assert health.state is Health.NOT_A_REPLICA


def test_a_test_mirror_counts_as_current() -> None:
    (health,) = replica_health()
    assert health.state is Health.OK
    assert health.lag == 0.0
