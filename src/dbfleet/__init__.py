"""Run one Django project on many databases."""

from dbfleet.exceptions import (
    CommitError,
    InDoubtError,
    PartialCommitError,
    WriteOutsideTransaction,
    WriteOutsideTransactionError,
    WriteToReplicaError,
)
from dbfleet.replicas import (
    read_your_writes,
    use_primary,
    use_replica,
    write_position,
)
from dbfleet.routing import Router, database_for
from dbfleet.transactions import atomic, on_commit

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
