"""Replica health: what this process knows of each replica, and the checks that find it out.

Health is the process's knowledge of its servers and is shared by all threads.
A replica is checked at most once per ``REPLICA_CHECK_INTERVAL``; one that is
unreachable, lags more than ``MAX_LAG`` or does not replicate at all is
skipped for ``REPLICA_COOLDOWN`` and checked again when that ends.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable
from dataclasses import dataclass

from django.db import DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper

from dbfleet import vendors
from dbfleet.conf import fleet_settings, get_topology
from dbfleet.replicas.positions import own_query
from dbfleet.vendors import CURRENT, ReplicaStatus

#: The settings that say which database a connection reaches.
_WHERE = ("ENGINE", "NAME", "HOST", "PORT")


class Health(enum.StrEnum):
    """The state of a replica at its last check."""

    OK = "ok"
    UNREACHABLE = "unreachable"
    #: Reachable and writable, but it replicates from nothing: reads never go there.
    NOT_A_REPLICA = "not a replica"
    LAGGING = "lagging"
    #: Replication is configured but not running.
    STOPPED = "stopped"


class NotAReplica(DatabaseError):
    """The database behind a replica alias does not replicate from anything."""


@dataclass
class ReplicaHealth:
    """What this process knows about one replica."""

    alias: str
    primary: str
    weight: int
    #: time.monotonic() until which the replica is skipped.
    down_until: float = 0.0
    check_after: float = 0.0
    lag: float | None = None
    #: The position it had replayed at the last check, CURRENT, or None (unknown).
    replayed: str | None = None
    #: Whether it was behind its primary at the last check.
    behind: bool = False
    state: Health = Health.OK
    #: What is wrong, in words ("" when nothing is).
    problem: str = ""

    @property
    def reachable(self) -> bool:
        return self.state is not Health.UNREACHABLE

    def fail(self, state: Health, problem: str) -> None:
        self.state, self.problem = state, f"{state}: {problem}".strip().rstrip(":")


def mirrors(alias: str, primary: str) -> bool:
    """Whether ``alias`` reaches its primary's very database (a test mirror, a second alias)."""
    mine, theirs = connections[alias].settings_dict, connections[primary].settings_dict
    return all(mine.get(key) == theirs.get(key) for key in _WHERE)


def measure(alias: str, primary: str) -> ReplicaStatus:
    """The replica's status, with one query; raise NotAReplica if it does not replicate."""
    connection = connections[alias]
    if mirrors(alias, primary):
        connection.ensure_connection()
        return ReplicaStatus(0.0, CURRENT, False)
    with own_query():
        status = vendors.of(connection).replica_status(connection)
    if status is None:
        raise NotAReplica(
            f"{alias!r} is listed as a replica of {primary!r}, but its database replicates "
            "from nothing (it is writable, and reads there would miss the primary's writes)"
        )
    return status


def check(health: ReplicaHealth, now: float) -> None:
    """Check a replica now; skip it for REPLICA_COOLDOWN if it is unusable or lags."""
    seconds = fleet_settings().seconds
    health.check_after = now + seconds["REPLICA_CHECK_INTERVAL"]
    connection = connections[health.alias]
    try:
        status = measure(health.alias, health.primary)
    except NotAReplica as error:
        health.fail(Health.NOT_A_REPLICA, str(error))
        health.lag = health.replayed = None
        skip(health, now)
        return
    except DatabaseError as error:
        close(connection)
        health.fail(Health.UNREACHABLE, str(error))
        health.lag = health.replayed = None
        skip(health, now)
        return
    # A replica is only lagging if it was behind at two checks in a row: right
    # after an idle spell, "now - last replayed commit" is large for a moment
    # even on a replica that is milliseconds behind.
    stopped = status.lag == float("inf")
    lagging = status.behind and (health.behind or stopped) and status.lag > seconds["MAX_LAG"]
    health.lag = None if stopped else status.lag
    health.replayed, health.behind = status.replayed, status.behind
    health.state, health.problem, health.down_until = Health.OK, "", 0.0
    if lagging:
        if stopped:
            health.state, health.problem = Health.STOPPED, "replication is not running"
        else:
            health.state = Health.LAGGING
            health.problem = f"lags {status.lag:.1f} s (MAX_LAG {seconds['MAX_LAG']:g} s)"
        skip(health, now)


def skip(health: ReplicaHealth, now: float) -> None:
    cooldown = fleet_settings().seconds["REPLICA_COOLDOWN"]
    # Checked again as soon as the cool-down ends, before any read goes there.
    health.down_until = health.check_after = now + cooldown


def close(connection: BaseDatabaseWrapper) -> None:
    """Drop a broken connection so the next use reconnects."""
    if not connection.in_atomic_block:
        try:
            connection.close()
        except DatabaseError:
            connection.connection = None


def replica_health(aliases: Iterable[str] = ()) -> list[ReplicaHealth]:
    """Check the replicas (those of ``aliases``, or every one) now; return what was found."""
    chosen = set(aliases)
    found = [
        # One check, with no earlier one to confirm a lag: count it (behind=True).
        ReplicaHealth(replica.alias, group.primary, replica.weight, behind=True)
        for group in get_topology().groups.values()
        for replica in group.replicas
        if not chosen or chosen & {replica.alias, group.primary}
    ]
    with vendors.probing([h.alias for h in found], fleet_settings().seconds["PROBE_TIMEOUT"]):
        for health in found:
            check(health, time.monotonic())
    return found
