"""Run one Django project on many databases."""

from dbfleet.replicas import (
    WriteToReplicaError,
    read_your_writes,
    use_primary,
    use_replica,
    write_position,
)
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
    "WriteToReplicaError",
    "atomic",
    "database_for",
    "on_commit",
    "read_your_writes",
    "use_primary",
    "use_replica",
    "write_position",
]
