"""Run one Django project on many databases."""

from dbfleet.exceptions import (
    CommitError,
    CrossShardError,
    InDoubtError,
    PartialCommitError,
    ShardKeyRequired,
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
from dbfleet.sharding.ids import FleetIdField
from dbfleet.sharding.query import ShardedManager, ShardedQuerySet
from dbfleet.sharding.slots import shard_for
from dbfleet.transactions import atomic, on_commit

__all__ = [
    "CommitError",
    "CrossShardError",
    "FleetIdField",
    "InDoubtError",
    "PartialCommitError",
    "Router",
    "ShardKeyRequired",
    "ShardedManager",
    "ShardedQuerySet",
    "WriteOutsideTransaction",
    "WriteOutsideTransactionError",
    "WriteToReplicaError",
    "atomic",
    "database_for",
    "on_commit",
    "read_your_writes",
    "shard_for",
    "use_primary",
    "use_replica",
    "write_position",
]
