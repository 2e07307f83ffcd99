"""Test helpers: see where each query went; start a scope afresh."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import connections

from dbfleet.replicas import OWN_QUERY, _ReadYourWrites, _Scope


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

    def record(alias: str) -> Callable[..., Any]:
        def wrapper(
            execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
        ) -> Any:
            result = execute(sql, params, many, context)
            connection = context["connection"]
            # Left out: dbfleet's own health and position queries, and what a new
            # connection runs to set itself up (MySQL's SET SESSION ...).
            if not OWN_QUERY.get() and getattr(connection, "dbfleet_ready", None) is (
                connection.connection
            ):
                captured.append(Query(alias, sql))
            return result

        return wrapper

    with ExitStack() as stack:
        for connection in connections.all():
            stack.enter_context(connection.execute_wrapper(record(connection.alias)))
        yield captured


def fresh_scope() -> _Scope:
    """A read-your-writes scope that inherits no pin, as a new request or task would start.

    Use it around each test, so that one test's writes pin none of the next
    test's reads, and inside a test to play "another user".
    """
    return _ReadYourWrites(None, nested=False)
