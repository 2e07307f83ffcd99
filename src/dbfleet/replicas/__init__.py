"""Read replicas: where a read goes, replica health, read-your-writes.

``scopes`` keeps what belongs to a request or task (context variables),
``positions`` the replication positions, ``health`` what the process knows of
each replica, ``choice`` where a read goes, ``guard`` the execute wrappers and
``middleware`` read-your-writes across requests.
"""

from dbfleet.replicas.health import Health, ReplicaHealth, replica_health
from dbfleet.replicas.middleware import ReadYourWritesMiddleware
from dbfleet.replicas.positions import is_own_query
from dbfleet.replicas.scopes import (
    ReadPreference,
    Scope,
    read_preference,
    read_your_writes,
    root_scope,
    use_primary,
    use_replica,
    write_position,
)

__all__ = [
    "Health",
    "ReadPreference",
    "ReadYourWritesMiddleware",
    "ReplicaHealth",
    "Scope",
    "is_own_query",
    "read_preference",
    "read_your_writes",
    "replica_health",
    "root_scope",
    "use_primary",
    "use_replica",
    "write_position",
]
