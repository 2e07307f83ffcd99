"""Execute wrappers: the replica write guard, failover of reads, noting writes on primaries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper

from dbfleet.conf import get_topology
from dbfleet.exceptions import WriteToReplicaError
from dbfleet.replicas.choice import mark_down
from dbfleet.replicas.health import close
from dbfleet.replicas.positions import OWN_QUERY
from dbfleet.replicas.scopes import note_write
from dbfleet.sql import is_read, is_write
from dbfleet.topology import Group


def guard_replica(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """Execute wrapper of a replica: refuse writes; read from the primary if the replica died."""
    connection = context["connection"]
    write = is_write(sql)
    # A connection keeps its wrappers when the settings change (as in tests).
    if write and get_topology().is_replica(connection.alias):
        primary = get_topology().primary_of(connection.alias)
        raise WriteToReplicaError(
            f"Refused a write to {connection.alias!r}, a replica of {primary!r}: replicas are "
            f"only read. Write to {primary!r}: drop .using({connection.alias!r}), or pass "
            f"using={primary!r}."
        )
    try:
        return execute(sql, params, many, context)
    except DatabaseError as error:
        if (
            many
            or not is_read(sql)  # Only a statement known to read is run again elsewhere.
            or OWN_QUERY.get()
            or connection.in_atomic_block
            or _usable(connection)
        ):
            raise
        # The server went away under an open connection: skip the replica and
        # answer this read from the primary, on the caller's cursor.
        mark_down(connection.alias, str(error))
        close(connection)
        primary = get_topology().primary_of(connection.alias)
        fallback = connections[primary].cursor()
        result = fallback.execute(sql, params)
        context["cursor"].cursor = fallback.cursor
        return result


def _usable(connection: BaseDatabaseWrapper) -> bool:
    return connection.connection is not None and connection.is_usable()


def note_writes(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """Execute wrapper of a primary with replicas: a write pins later reads of its group."""
    result = execute(sql, params, many, context)
    if is_write(sql):
        note_write(context["connection"].alias)
    return result


def install_wrappers(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """``connection_created`` receiver: guard replicas, watch the writes of replicated primaries."""
    topology = get_topology()
    if topology.is_replica(connection.alias):
        wrapper = guard_replica
    elif topology.groups.get(connection.alias, Group("")).replicas:
        wrapper = note_writes
    else:
        return
    if wrapper not in connection.execute_wrappers:
        connection.execute_wrappers.insert(0, wrapper)
