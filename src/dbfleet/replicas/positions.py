"""Replication positions: where a primary is, whether a replica has replayed it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.db import connections

from dbfleet import vendors

#: Set while dbfleet runs a query of its own (a health check, a position).
OWN_QUERY: ContextVar[bool] = ContextVar("dbfleet_own_query", default=False)


@contextmanager
def own_query() -> Iterator[None]:
    """Mark the queries run inside as dbfleet's own."""
    token = OWN_QUERY.set(True)
    try:
        yield
    finally:
        OWN_QUERY.reset(token)


def is_own_query() -> bool:
    """Whether the statement running now is dbfleet's own (replica health, a position)."""
    return OWN_QUERY.get()


def primary_position(alias: str) -> str | None:
    """The primary's current replication position (WAL LSN, GTID), or None if it has none."""
    connection = connections[alias]
    with own_query():
        return vendors.of(connection).position(connection)


def has_replayed(vendor: str, replayed: str | None, position: str) -> bool:
    """Whether a replica that replayed up to ``replayed`` has everything up to ``position``."""
    if replayed is None:
        return False
    if replayed == vendors.CURRENT:
        return True
    key = vendors.of_engine(vendor).position_key
    have = key(replayed)
    return all(have.get(part, -1) >= value for part, value in key(position).items())
