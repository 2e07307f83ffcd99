"""Where a read goes: the group's healthy replicas, weighted, unless the scope says otherwise.

A read in a group with replicas costs no query: health is checked at most once
per ``REPLICA_CHECK_INTERVAL`` per replica and process, on the read that finds
the check due.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

from django.db import DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper

from dbfleet.conf import clears_on_reset, fleet_settings, get_topology
from dbfleet.replicas.health import Health, ReplicaHealth, check, measure, skip
from dbfleet.replicas.positions import has_replayed
from dbfleet.replicas.scopes import IMPLICIT, STATE, ReadPreference, State, settle_position
from dbfleet.topology import Group


def in_event_loop() -> bool:
    """Whether async code runs in this thread now: then dbfleet makes no query."""
    return asyncio._get_running_loop() is not None


class GroupReads:
    """How reads of one group are routed: its replicas' health and the weighted choice.

    Built anew when the settings change. ``read()`` is on the path of every
    ORM read, so its usual case (nothing pinned, no check due) is a handful of
    attribute reads.
    """

    def __init__(self, group: Group) -> None:
        self.primary = group.primary
        self.replicas = tuple(
            ReplicaHealth(replica.alias, group.primary, replica.weight)
            for replica in group.replicas
        )
        self.by_alias = {health.alias: health for health in self.replicas}
        #: The replicas not skipped, each repeated by its weight.
        self.pool: tuple[ReplicaHealth, ...] = ()
        #: time.monotonic() of the next check or end of a cool-down.
        self.next_event = 0.0
        # ``django.db.connections[alias]`` costs about 2 µs (asgiref's Local).
        # Connection objects belong to a thread, so a thread-local cache gives
        # the same objects for a few nanoseconds.
        self._local = threading.local()

    def connections(self) -> dict[str, BaseDatabaseWrapper]:
        """This thread's connection objects for the group's databases."""
        try:
            found: dict[str, BaseDatabaseWrapper] = self._local.connections
        except AttributeError:
            aliases = (self.primary, *(health.alias for health in self.replicas))
            found = {alias: connections[alias] for alias in aliases}
            if not in_event_loop():  # There Django hands out other objects, per context.
                self._local.connections = found
        return found

    def read(self) -> str:
        """The database for a read now, in the current scope."""
        state = STATE.get()
        ruled = None if state.force is ReadPreference.REPLICA else self._ruled(state)
        if ruled is not None:
            return ruled
        pool = self.pool
        if pool and time.monotonic() < self.next_event:
            # The usual case: no check due, no cool-down ending, the connection open.
            alias = pick(pool).alias
            if self.connections()[alias].connection is not None:
                return alias
        return self.replica() or self.primary

    def read_bound(self, db: str) -> str:
        """The database for a read bound to an instance read from ``db`` (of this group).

        It stays there, unless the scope's rules decide, or that replica is skipped now.
        """
        if db == self.primary:
            return db
        state = STATE.get()
        ruled = None if state.force is ReadPreference.REPLICA else self._ruled(state)
        if ruled is not None:
            return ruled
        health = self.by_alias.get(db)
        if health is None or health.down_until <= time.monotonic():
            return db
        return self.replica() or self.primary

    def _ruled(self, state: State) -> str | None:
        """Where the scope sends the read (``use_primary``, a transaction, a pin), or None."""
        if (
            state.force is ReadPreference.PRIMARY
            or self.connections()[self.primary].in_atomic_block
        ):
            return self.primary
        writes = state.writes or IMPLICIT.get()
        if writes is None or not writes.pins:
            return None
        pin = writes.pins.get(self.primary)
        if pin is None:
            return None
        if pin.until <= time.time():
            writes.pins.pop(self.primary, None)
            return None
        if pin.wrote and (fleet_settings().read_your_writes != "position" or in_event_loop()):
            return self.primary
        settle_position(self.primary, pin)
        if pin.position is None:
            return self.primary
        return self.replica(pin.position) or self.primary

    def replica(self, position: str | None = None) -> str | None:
        """A healthy replica (that has replayed ``position``), or None."""
        now = time.monotonic()
        if now >= self.next_event:
            self._refresh(now)
        pool = self.pool
        while pool:
            health = pick(pool)
            if self._usable(health, now) and (
                position is None or self._has_replayed(health, position)
            ):
                return health.alias
            pool = tuple(other for other in pool if other is not health)
        return None

    def _usable(self, health: ReplicaHealth, now: float) -> bool:
        connection = self.connections()[health.alias]
        if in_event_loop():
            pass  # Called from async code: no query, no connection, what is known holds.
        elif now >= health.check_after:
            check(health, now)
            self._refresh(now)
        elif connection.connection is None:
            # A new connection: connecting costs no query, and a refused one
            # is found here rather than in the caller's read.
            try:
                connection.ensure_connection()
            except DatabaseError as error:
                health.fail(Health.UNREACHABLE, str(error))
                skip(health, now)
                self._refresh(now)
        return health.down_until <= now

    def _has_replayed(self, health: ReplicaHealth, position: str) -> bool:
        vendor = self.connections()[health.alias].vendor
        if has_replayed(vendor, health.replayed, position):
            return True
        if in_event_loop():
            return False
        try:  # One query on the replica: has it caught up since its last check?
            health.replayed = measure(health.alias, health.primary).replayed
        except DatabaseError:
            return False
        return has_replayed(vendor, health.replayed, position)

    def _refresh(self, now: float) -> None:
        """Rebuild the pool and find the next moment something is due."""
        up = [health for health in self.replicas if health.down_until <= now]
        self.pool = tuple(health for health in up for _ in range(health.weight))
        # A skipped replica's next check is when its cool-down ends (see _skip).
        self.next_event = min(health.check_after for health in self.replicas)


def pick(pool: tuple[ReplicaHealth, ...]) -> ReplicaHealth:
    """One replica of the pool, where each is repeated by its weight."""
    return pool[0] if len(pool) == 1 else pool[int(random.random() * len(pool))]


class Reads(dict[str | None, GroupReads | None]):
    """Router answer -> the reads of its group, or None when the group has no replicas."""

    def __missing__(self, answer: str | None) -> GroupReads | None:
        topology = get_topology()
        # An unrouted model (no answer) is read where Django falls back to: "default".
        alias = topology.default_database if answer is None else answer
        group = topology.groups.get(alias)
        reads = None
        if group is not None and group.replicas:
            known = (found for found in list(self.values()) if found and found.primary == alias)
            reads = next(known, None) or GroupReads(group)
        self[answer] = reads
        return reads


READS = Reads()
clears_on_reset(READS.clear)


def mark_down(alias: str, problem: str) -> None:
    """Skip replica ``alias`` for REPLICA_COOLDOWN seconds from now."""
    for reads in filter(None, list(READS.values())):
        health = reads.by_alias.get(alias)
        if health is not None:
            health.fail(Health.UNREACHABLE, problem)
            skip(health, time.monotonic())
            reads.next_event = 0.0  # Rebuild the pool at the next read.
