"""Run one Django project on many databases."""

from dbfleet.routing import Router, database_for
from dbfleet.transactions import (
    CommitError,
    PartialCommitError,
    WriteOutsideTransaction,
    WriteOutsideTransactionError,
    atomic,
    on_commit,
)

__all__ = [
    "CommitError",
    "PartialCommitError",
    "Router",
    "WriteOutsideTransaction",
    "WriteOutsideTransactionError",
    "atomic",
    "database_for",
    "on_commit",
]
