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
from dbfleet.two_phase import InDoubtError

__all__ = [
    "CommitError",
    "InDoubtError",
    "PartialCommitError",
    "Router",
    "WriteOutsideTransaction",
    "WriteOutsideTransactionError",
    "atomic",
    "database_for",
    "on_commit",
]
