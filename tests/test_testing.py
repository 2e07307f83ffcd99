"""``dbfleet.testing.capture_queries()`` across the threads of a fan-out.

A fan-out over a shard group (``books`` + ``loans``, as in tests/test_sharding.py)
runs each database's query on a thread of its own, with that thread's connections.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connections
from django.test import override_settings

import dbfleet
from dbfleet.testing import capture_queries
from tests.settings import ENGINES
from tests.shop.models import Customer

SHARDS = ("books", "loans")
FLEET = {
    "ROUTES": {},
    "SHARDS": {"customers": {"databases": list(SHARDS), "keys": {"shop.Customer": "id"}}},
}
pytestmark = [
    pytest.mark.django_db(databases="__all__", transaction=True),
    pytest.mark.skipif(
        ENGINES["books"] != ENGINES["loans"],
        reason="a shard group is one engine; this configuration has none on two aliases",
    ),
]


@pytest.fixture(scope="module")
def customer_tables(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    with django_db_blocker.unblock():
        for alias in SHARDS:
            with connections[alias].schema_editor() as editor:
                editor.create_model(Customer)
        yield
        for alias in SHARDS:
            with connections[alias].schema_editor() as editor:
                editor.delete_model(Customer)


@pytest.fixture(autouse=True)
def customers(customer_tables: None) -> Iterator[None]:
    with override_settings(DBFLEET=FLEET):
        for key in range(1, 7):
            Customer.objects.create(id=key, name=f"c{key}", country="fr")
        assert all(Customer.objects.on_shard(alias).exists() for alias in SHARDS)
        yield
        for alias in SHARDS:
            Customer.objects.using(alias).all()._raw_delete(alias)


def counts(queries: list[str]) -> list[str]:
    return [sql for sql in queries if "COUNT(" in sql.upper() and "shop_customer" in sql]


def test_a_fan_out_shows_each_shard_s_statements() -> None:
    with capture_queries() as queries:
        assert Customer.objects.count() == 6  # Each shard counts on a thread of its own.
        assert sorted(c.id for c in Customer.objects.filter(country="fr")) == [1, 2, 3, 4, 5, 6]
    assert sorted(set(queries.aliases)) == list(SHARDS)
    for alias in SHARDS:
        assert len(counts(queries.on(alias))) == 1
        assert len([sql for sql in queries.on(alias) if "country" in sql]) == 1


def test_a_one_shard_query_shows_that_shard_only() -> None:
    home = dbfleet.shard_for(Customer, 3)
    with capture_queries() as queries:
        assert Customer.objects.filter(id=3).count() == 1
        connections[home].close()  # Connected anew: recorded once still.
        assert Customer.objects.get(pk=3).name == "c3"
    assert queries.aliases == [home, home]
    assert len(counts(queries.on(home))) == 1


class Worker(threading.Thread):
    """A thread that runs the jobs it is given, one at a time, on its own connections."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.jobs: queue.Queue[Callable[[], Any] | None] = queue.Queue()
        self.results: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self.start()

    def run(self) -> None:
        try:
            while (job := self.jobs.get()) is not None:
                try:
                    self.results.put((True, job()))
                except Exception as error:  # Raised again in the test's thread.
                    self.results.put((False, error))
        finally:
            connections.close_all()

    def do(self, job: Callable[[], Any]) -> Any:
        self.jobs.put(job)
        ok, value = self.results.get(timeout=30)
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        self.jobs.put(None)
        self.join(30)


def count_on_books() -> int:
    # override_settings is process-wide: the worker sees the shard group too.
    count: int = Customer.objects.on_shard("books").count()
    return count


def test_threads_that_were_running_before_are_left_out() -> None:
    worker = Worker()
    try:
        with capture_queries() as queries:
            # It connects now, but it was running before: not the code under test's.
            assert worker.do(count_on_books) > 0
        assert queries == []
    finally:
        worker.stop()


def test_a_thread_started_inside_is_recorded_while_open_only() -> None:
    with capture_queries() as queries:
        worker = Worker()
        try:
            worker.do(count_on_books)
        except BaseException:
            worker.stop()
            raise
    try:
        assert queries.aliases == ["books"]
        worker.do(count_on_books)  # After the capture: not recorded, and nothing left behind.
        assert queries.aliases == ["books"]
        wrappers = worker.do(lambda: list(connections["books"].execute_wrappers))
        assert not [w for w in wrappers if "capture_queries" in w.__qualname__]
    finally:
        worker.stop()
