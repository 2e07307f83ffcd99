"""Every public error dbfleet raises or warns with."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from django.db import DatabaseError
from django.db.transaction import TransactionManagementError


def names(aliases: Iterable[str]) -> str:
    """``'a', 'b'``: aliases as messages quote them."""
    return ", ".join(repr(alias) for alias in aliases) or "no database"


class CommitError(DatabaseError):
    """A transaction over several databases did not end the same way on all of them."""


class PartialCommitError(CommitError):
    """A best-effort commit failed after an earlier database had committed."""

    def __init__(self, committed: Sequence[str], failed: str, rolled_back: Sequence[str]) -> None:
        self.committed = tuple(committed)
        self.failed = failed
        self.rolled_back = tuple(rolled_back)
        undone = f"; rolled back on {names(rolled_back)}" if rolled_back else ""
        super().__init__(
            f"Committed on {names(committed)}, then the commit on {failed!r} failed{undone}. "
            f"The changes on {names(committed)} stay; those on {failed!r}"
            f"{' and ' + names(rolled_back) if rolled_back else ''} are lost. "
            "Repair the data by hand, or use dbfleet.atomic(..., two_phase=True) "
            "so that all databases commit or none does."
        )


class InDoubtError(CommitError):
    """A two-phase transaction could not be finished; ``fleet recover`` will."""

    def __init__(self, transaction_id: str, message: str) -> None:
        self.transaction_id = transaction_id
        super().__init__(
            f"Two-phase transaction {transaction_id}: {message} "
            "Run `python manage.py fleet recover` once the databases are reachable; "
            "it settles the transaction the same way on every database."
        )


class WriteOutsideTransaction(RuntimeWarning):
    """A write ran on its own while a transaction was open on another database."""


class WriteOutsideTransactionError(TransactionManagementError):
    """The write guard's error, when ``DBFLEET["WRITE_GUARD"]`` is ``"raise"``."""


class WriteToReplicaError(DatabaseError):
    """A write was sent to a replica, which only its primary may change."""


class ShardKeyRequired(ValueError):
    """A write to a sharded model, or a query that must have one shard, lacks the shard key."""


class CrossShardError(DatabaseError):
    """A query or write would need several shards in a way that cannot be answered correctly."""
