"""Test helpers: see where each query went; start a scope afresh."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

from dbfleet.replicas import Scope, is_own_query, root_scope


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
    """Record every statement run in this thread, on every database, with its alias.

    A read that a dead replica handed to its primary is recorded on the primary.
    dbfleet's own queries (replica health, replication positions) are left out:
    they run on a timer, not because of the code under test; so is what a new
    connection runs to set itself up.
    """
    captured = Queries()
    # The DB-API connection of each wrapper once it is set up: Django sends
    # connection_created after a new connection ran its own statements.
    ready: weakref.WeakKeyDictionary[BaseDatabaseWrapper, Any] = weakref.WeakKeyDictionary()

    def created(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
        ready[connection] = connection.connection

    def record(alias: str) -> Callable[..., Any]:
        def wrapper(
            execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
        ) -> Any:
            result = execute(sql, params, many, context)
            connection = context["connection"]
            if not is_own_query() and ready.get(connection) is connection.connection:
                captured.append(Query(alias, sql))
            return result

        return wrapper

    connection_created.connect(created, weak=False)
    try:
        with ExitStack() as stack:
            for connection in connections.all():
                if connection.connection is not None:
                    ready[connection] = connection.connection
                stack.enter_context(connection.execute_wrapper(record(connection.alias)))
            yield captured
    finally:
        connection_created.disconnect(created)


def fresh_scope() -> Scope:
    """A read-your-writes scope that inherits no pin, as a new request or task would start.

    Use it around each test, so that one test's writes pin none of the next
    test's reads, and inside a test to play "another user".
    """
    return root_scope()
