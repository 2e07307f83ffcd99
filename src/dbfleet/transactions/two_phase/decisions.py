"""The decision log: ``dbfleet_decision`` on ``DEFAULT_DATABASE``, one row per decided transaction.

A row says how a two-phase transaction ends: ``committed = true`` once its
coordinator decided to commit, ``false`` once recovery decided to roll it
back. Its primary key makes the first decision the only one.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator, Sequence
from typing import Any

from django.db import IntegrityError, connections
from django.db.backends.base.base import BaseDatabaseWrapper

from dbfleet import vendors
from dbfleet.conf import fleet_settings
from dbfleet.transactions.guard import unguarded
from dbfleet.vendors import literal, query

PREFIX = "dbfleet:"
TABLE = "dbfleet_decision"
#: How long a decision to roll back is kept (see purge()).
TOMBSTONE_SECONDS = 24 * 3600
INSERT = f"INSERT INTO {TABLE} (transaction_id, committed, created_ms) VALUES (%s, %s, %s)"
DELETE = f"DELETE FROM {TABLE} WHERE transaction_id = %s"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_transaction_id() -> str:
    """``dbfleet:<milliseconds>:<random>``; the time lets recovery tell its age."""
    return f"{PREFIX}{now_ms()}:{secrets.token_hex(6)}"


def started_ms(transaction_id: str) -> int:
    return int(transaction_id.split(":")[1])


def execute(
    connection: BaseDatabaseWrapper, sql: str, params: Sequence[Any] | None = None
) -> list[tuple[Any, ...]]:
    """Run dbfleet's own bookkeeping statement, past the write guard."""
    with unguarded():
        return query(connection, sql, params)


def forget_sql(connection: BaseDatabaseWrapper, transaction_id: str) -> str:
    """The statement that deletes a decision; its commit need not wait for the disk."""
    # No bound parameters, so that the engine may take several statements at once.
    delete = f"DELETE FROM {TABLE} WHERE transaction_id = {literal(transaction_id)}"
    return vendors.of(connection).unsynced(delete, connection.get_autocommit())


@contextlib.contextmanager
def decision_connection() -> Iterator[BaseDatabaseWrapper]:
    """A connection to ``DEFAULT_DATABASE`` in autocommit mode, for the decision log.

    The thread's own connection when no transaction is open on it; otherwise a
    new one, so that the record does not wait for (or die with) that transaction.
    """
    alias = fleet_settings().default_database
    connection = connections[alias]
    if not connection.in_atomic_block:
        yield connection
        return
    own = connections.create_connection(alias)
    try:
        yield own
    finally:
        own.close()


def decisions(transaction_ids: Sequence[str]) -> dict[str, bool]:
    """The recorded decisions for ``transaction_ids``."""
    if not transaction_ids:
        return {}
    with decision_connection() as connection:
        marks = ", ".join(["%s"] * len(transaction_ids))
        rows = execute(
            connection,
            f"SELECT transaction_id, committed FROM {TABLE} WHERE transaction_id IN ({marks})",
            list(transaction_ids),
        )
    return {transaction_id: bool(committed) for transaction_id, committed in rows}


def decide_rollback(transaction_id: str) -> bool:
    """Record "roll back" unless a decision exists; return the decision that stands."""
    with decision_connection() as connection:
        try:
            execute(connection, INSERT, (transaction_id, False, now_ms()))
        except IntegrityError:
            return decisions([transaction_id])[transaction_id]
    return False


def purge(before_ms: int, keep: set[str]) -> int:
    """Delete decisions that no prepared transaction can need any more.

    A decision to commit is recorded after its transactions were prepared, so
    one recorded before recovery searched (minus the grace period) whose
    transaction was not found prepared has been carried out everywhere. A
    decision to roll back is kept for a day, so that a coordinator that stalled
    before recording its own decision finds it and cannot commit.
    """
    with decision_connection() as connection:
        rows = execute(
            connection,
            f"SELECT transaction_id FROM {TABLE} WHERE "
            f"(committed = %s AND created_ms < %s) OR created_ms < %s",
            (True, before_ms, now_ms() - TOMBSTONE_SECONDS * 1000),
        )
        stale = [transaction_id for (transaction_id,) in rows if transaction_id not in keep]
        for transaction_id in stale:
            execute(connection, DELETE, (transaction_id,))
    return len(stale)
