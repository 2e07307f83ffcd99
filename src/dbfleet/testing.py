"""Test helpers: see where each query went; start a scope afresh."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

from dbfleet.replicas import Scope, is_own_query, root_scope
from dbfleet.sharding.query import FAN_OUT_WRAPPERS


@dataclass(frozen=True)
class Query:
    """One statement, and the database that ran it."""

    alias: str
    sql: str


class Queries(list[Query]):
    """The statements run while ``capture_queries()`` was open, in order."""

    @property
    def aliases(self) -> list[str]:
        """The database of each statement, in order."""
        return [query.alias for query in self]

    def on(self, alias: str) -> list[str]:
        """The statements that ran on ``alias``."""
        return [query.sql for query in self if query.alias == alias]


@contextmanager
def capture_queries() -> Iterator[Queries]:
    """Record every statement run by this code, on every database, with its alias.

    That is every statement on this thread's connections, and on the connections
    that threads started while it is open connect with: a fan-out over the
    databases of a shard group runs each database's query on a thread of its own.
    Threads that were already running when it opened (a live server, a worker
    pool) are left out, even if they connect anew meanwhile, except dbfleet's own
    fan-out threads while they run a part of this code's query. Any thread started
    while it is open is taken for the code under test's, so keep unrelated work
    from starting threads that query meanwhile.

    A read that a dead replica handed to its primary is recorded on the primary.
    dbfleet's own queries (replica health, replication positions) are left out:
    they run on a timer, not because of the code under test; so is what a new
    connection runs to set itself up.
    """
    captured = Queries()
    here = threading.current_thread()
    running = weakref.WeakSet(threading.enumerate())
    # The DB-API connection of each wrapper once it is set up: Django sends
    # connection_created after a new connection ran its own statements.
    ready: weakref.WeakKeyDictionary[BaseDatabaseWrapper, Any] = weakref.WeakKeyDictionary()
    # The wrappers it joined when they connected, to be left again at the end.
    joined: weakref.WeakSet[BaseDatabaseWrapper] = weakref.WeakSet()

    def record(
        execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
    ) -> Any:
        result = execute(sql, params, many, context)
        connection = context["connection"]
        if not is_own_query() and ready.get(connection) is connection.connection:
            captured.append(Query(connection.alias, sql))  # One append: safe across threads.
        return result

    def created(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
        ready[connection] = connection.connection
        thread = threading.current_thread()
        if thread is not here and thread in running:
            return  # Not started by the code under test.
        if record not in connection.execute_wrappers:
            connection.execute_wrappers.append(record)
            joined.add(connection)

    @contextmanager
    def in_fan_out(connection: BaseDatabaseWrapper) -> Iterator[None]:
        """A fan-out thread (started before, and kept) runs a shard's part of the query."""
        if record in connection.execute_wrappers:
            yield  # Joined when it connected.
            return
        if connection.connection is not None:
            ready[connection] = connection.connection
        with connection.execute_wrapper(record):
            yield

    connection_created.connect(created, weak=False)
    token = FAN_OUT_WRAPPERS.set((*FAN_OUT_WRAPPERS.get(), in_fan_out))
    try:
        with ExitStack() as stack:
            for connection in connections.all():
                if connection.connection is not None:
                    ready[connection] = connection.connection
                stack.enter_context(connection.execute_wrapper(record))
            yield captured
    finally:
        FAN_OUT_WRAPPERS.reset(token)
        connection_created.disconnect(created)
        for connection in list(joined):
            with suppress(ValueError):
                connection.execute_wrappers.remove(record)


def fresh_scope() -> Scope:
    """A read-your-writes scope that inherits no pin, as a new request or task would start.

    Use it around each test, so that one test's writes pin none of the next
    test's reads, and inside a test to play "another user".
    """
    return root_scope()
