"""Read replicas: where a read goes, replica health, read-your-writes.

What belongs to a request or a task (``use_primary``, ``use_replica``, the
writes of a ``read_your_writes`` scope) lives in context variables set with
tokens: nested scopes restore exactly what they found, and threads and asyncio
tasks never see each other's. Replica health is the process's knowledge of its
servers and is shared by all threads.

A read in a group with replicas costs no query: health is checked at most once
per ``REPLICA_CHECK_INTERVAL`` per replica and process, on the read that finds
the check due.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.core.signals import setting_changed
from django.db import DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.transaction import TransactionManagementError
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponseBase

from dbfleet.conf import fleet_settings, get_topology
from dbfleet.topology import Group

F = TypeVar("F", bound=Callable[..., Any])

PRIMARY = "primary"
REPLICA = "replica"
#: Statements that change data or schema, refused on a replica.
_WRITE_KEYWORDS = (
    "INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "TRUNCATE", "CREATE", "ALTER", "DROP",
    "RENAME", "GRANT", "REVOKE", "COPY", "CALL", "LOAD", "LOCK",
)  # fmt: skip
_COOKIE_SALT = "dbfleet.read_your_writes"
#: First keywords of statements that change nothing: anything else counts as a write,
#: so a statement this list does not know about is treated as one (the safe side).
_NOT_WRITES = (
    "SELECT", "SHOW", "EXPLAIN", "DESCRIBE", "SAVEPOINT", "RELEASE", "ROLLBACK",
    "SET ", "PRAGMA", "BEGIN", "COMMIT", "XA ", "(SELECT", "KILL",
)  # fmt: skip


def is_write(sql: str) -> bool:
    """Whether ``sql`` may change data (by its first keyword)."""
    return not _first_words(sql).startswith(_NOT_WRITES)


def _first_words(sql: str) -> str:
    """The start of ``sql`` in capitals, after leading comments and blanks."""
    sql = sql.lstrip()
    while sql.startswith(("/*", "--")):
        end = sql.find("*/") + 2 if sql.startswith("/*") else sql.find("\n") + 1
        sql = sql[end:].lstrip() if end > 1 else ""
    return sql[:16].upper()


class WriteToReplicaError(DatabaseError):
    """A write was sent to a replica, which only its primary may change."""


# --- Read-your-writes state ----------------------------------------------------------------


@dataclass
class _Pin:
    """Reads of one group after a write to it: where they may go, until when."""

    #: Wall-clock time after which the pin no longer holds (infinity: until the scope ends).
    until: float
    #: The primary's replication position the replica must have replayed; None: unknown.
    position: str | None = None
    #: Set by a write (in this scope or the one it is nested in), not handed over.
    wrote: bool = False
    #: Written to since ``position`` was read from the primary.
    stale: bool = False


@dataclass
class _Writes:
    """The writes of one scope (a request, a task, a ``read_your_writes`` block).

    Mutable on purpose: asyncio tasks started inside a scope, and threads that
    run with a copy of its context (asgiref's ``sync_to_async`` does), record
    their writes in it, so the rest of the scope reads them.
    """

    #: Pins end with the scope; outside any scope they last READ_YOUR_WRITES_WINDOW seconds.
    explicit: bool
    pins: dict[str, _Pin] = field(default_factory=dict)
    #: The primaries written in this very scope.
    written: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _State:
    force: str | None = None
    writes: _Writes | None = None


#: Set while dbfleet runs a query of its own (a health check, a position).
OWN_QUERY: ContextVar[bool] = ContextVar("dbfleet_own_query", default=False)

_NO_STATE = _State()
_STATE: ContextVar[_State] = ContextVar("dbfleet_replicas", default=_NO_STATE)
#: Writes made outside any scope, per context (a thread, a task).
_IMPLICIT: ContextVar[_Writes | None] = ContextVar("dbfleet_implicit_writes", default=None)
#: The tokens of the scopes entered in this context, innermost last.
_TOKENS: ContextVar[tuple[Token[_State], ...]] = ContextVar("dbfleet_tokens", default=())


class _Scope:
    """A context manager and decorator (of functions and coroutine functions) for one state.

    One object may be entered again, nested, and from several threads or tasks
    at once: the tokens live in the context, not on the object.
    """

    def state(self, current: _State) -> _State:
        raise NotImplementedError

    def __enter__(self) -> None:
        token = _STATE.set(self.state(_STATE.get()))
        _TOKENS.set((*_TOKENS.get(), token))

    def __exit__(self, *exc_info: object) -> None:
        *outer, token = _TOKENS.get()
        _TOKENS.set(tuple(outer))
        _STATE.reset(token)

    def __call__(self, func: F) -> F:
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(
                f"{func.__qualname__} is a generator function: the scope would end before "
                "its body runs. Use the scope as a `with` block inside it."
            )
        if iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with self:
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self:
                return func(*args, **kwargs)

        return run  # type: ignore[return-value]


class _Force(_Scope):
    def __init__(self, force: str) -> None:
        self.force = force

    def state(self, current: _State) -> _State:
        return _State(self.force, current.writes)


class _ReadYourWrites(_Scope):
    """A read-your-writes scope.

    Nested in another one it starts with the outer scope's pins and hands its
    own writes back when it ends; a root scope (a request, ``fresh_scope()``)
    starts from nothing and keeps its writes to itself.
    """

    def __init__(
        self, position: str | None, pins: Mapping[str, _Pin] | None = None, nested: bool = True
    ) -> None:
        self.pins = {} if pins is None else dict(pins)
        for primary, value in _parse_position(position).items():
            self.pins[primary] = _Pin(float("inf"), value or None)
        self.nested = nested

    def state(self, current: _State) -> _State:
        pins = {primary: _Pin(pin.until, pin.position) for primary, pin in self.pins.items()}
        if self.nested and current.writes is not None:
            for primary, pin in current.writes.pins.items():
                pins.setdefault(primary, _Pin(pin.until, pin.position, pin.wrote, pin.stale))
        return _State(current.force, _Writes(explicit=True, pins=pins))

    def __exit__(self, *exc_info: object) -> None:
        inner = _STATE.get().writes
        super().__exit__(*exc_info)
        if self.nested and inner is not None and _STATE.get().writes is not None:
            for primary in inner.written:
                note_write(primary)


def use_primary() -> _Scope:
    """Read from primaries (as decorator or context manager), replicas stay unused."""
    return _Force(PRIMARY)


def use_replica() -> _Scope:
    """Read from replicas even after a write or inside a transaction (for reporting code).

    A group falls back to its primary when none of its replicas is healthy.
    """
    return _Force(REPLICA)


def read_preference() -> str | None:
    """``"primary"`` or ``"replica"`` inside ``use_primary()`` / ``use_replica()``, else None."""
    return _STATE.get().force


def read_your_writes(position: str | None = None) -> _Scope:
    """A scope whose writes later reads in it see: a request, a task, a ``with`` block.

    ``position`` (from ``write_position()`` in another scope) makes the reads
    here see that scope's writes too: a replica is used only once it has
    replayed them.
    """
    return _ReadYourWrites(position)


def write_position() -> str:
    """Where this scope's writes reached on each primary, to hand to ``read_your_writes()``.

    An opaque string (JSON) that survives a task queue. It costs one query on
    each primary written since the last call. Call it once the writes have
    committed (after the ``atomic`` block, or in ``transaction.on_commit``).
    """
    writes = _STATE.get().writes or _IMPLICIT.get()
    positions: dict[str, str] = {}
    now = time.time()
    for primary, pin in (writes.pins if writes else {}).items():
        if pin.until > now:
            if pin.stale and connections[primary].in_atomic_block:
                raise TransactionManagementError(
                    f"write_position() inside a transaction on {primary!r}: the position "
                    "would not cover its commit. Call it after the atomic block, or hand the "
                    "task over in transaction.on_commit()."
                )
            _settle_position(primary, pin)
            positions[primary] = pin.position or ""  # "": unknown, read from the primary.
    return json.dumps(positions, separators=(",", ":"), sort_keys=True)


def _parse_position(position: str | None) -> dict[str, str]:
    if not position:
        return {}
    try:
        parsed = json.loads(position)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in parsed.items()
    ):
        raise ValueError(
            f"{position!r} is not a position from dbfleet.write_position(); pass that "
            "string unchanged."
        )
    return parsed


def _settle_position(primary: str, pin: _Pin) -> None:
    """Read the primary's position for a pin written since it was last read."""
    if pin.stale:
        pin.position = primary_position(primary)
        pin.stale = False


def note_write(primary: str) -> None:
    """Record a write to ``primary`` in the current scope."""
    writes = _STATE.get().writes or _IMPLICIT.get()
    if writes is None:
        writes = _Writes(explicit=False)
        _IMPLICIT.set(writes)
    until = float("inf") if writes.explicit else time.time() + _window()
    writes.written.add(primary)
    pin = writes.pins.get(primary)
    if pin is None:
        writes.pins[primary] = _Pin(until, wrote=True, stale=True)
    else:
        pin.until = max(pin.until, until)
        pin.wrote = pin.stale = True


def _window() -> float:
    return fleet_settings().seconds["READ_YOUR_WRITES_WINDOW"]


# --- Replication positions -----------------------------------------------------------------


def primary_position(alias: str) -> str | None:
    """The primary's current replication position (WAL LSN, GTID), or None if it has none."""
    connection = connections[alias]
    if connection.vendor != "postgresql" and not _is_mariadb(connection):
        return None  # SQLite has none; MySQL's GTID sets are not compared (yet).
    query = (
        "SELECT pg_current_wal_insert_lsn()::text"
        if connection.vendor == "postgresql"
        else "SELECT @@GLOBAL.gtid_binlog_pos"
    )
    with _own_query(), connection.cursor() as cursor:
        cursor.execute(query)
        value = cursor.fetchone()[0]
    return value or None  # MariaDB without a binary log has no GTIDs.


@contextmanager
def _own_query() -> Iterator[None]:
    """Mark the queries run inside as dbfleet's own."""
    token = OWN_QUERY.set(True)
    try:
        yield
    finally:
        OWN_QUERY.reset(token)


def _is_mariadb(connection: BaseDatabaseWrapper) -> bool:
    return connection.vendor == "mysql" and bool(connection.mysql_is_mariadb)  # type: ignore[attr-defined]


def _position_key(position: str) -> dict[str, int]:
    """A position as comparable numbers: {"": lsn} for PostgreSQL, {domain: seq} for MariaDB."""
    if "/" in position:
        high, _, low = position.partition("/")
        return {"": int(high, 16) << 32 | int(low, 16)}
    found: dict[str, int] = {}
    for gtid in filter(None, position.replace(" ", "").split(",")):
        domain, _, sequence = gtid.rpartition("-")
        domain = domain.partition("-")[0]
        found[domain] = max(found.get(domain, 0), int(sequence))
    return found


def has_replayed(replayed: str | None, position: str) -> bool:
    """Whether a replica that replayed up to ``replayed`` has everything up to ``position``."""
    if replayed is None:
        return False
    have = _position_key(replayed)
    return all(have.get(key, -1) >= value for key, value in _position_key(position).items())


# --- Health --------------------------------------------------------------------------------


#: A replica that does not replicate (a test mirror, SQLite): it has all its primary has.
CURRENT = "current"


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
    problem: str = ""

    @property
    def reachable(self) -> bool:
        return not self.problem.startswith("unreachable")


def _check_postgresql(cursor: Any) -> tuple[float, str | None, bool]:
    cursor.execute(
        "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
        # Behind: WAL received but not replayed, or no WAL coming in at all (the
        # receiver is not running, so nothing says the replica is current).
        "pg_last_wal_receive_lsn() IS DISTINCT FROM pg_last_wal_replay_lsn() "
        "OR NOT EXISTS (SELECT FROM pg_stat_wal_receiver), "
        "COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)"
    )
    recovering, replayed, behind, since_replay = cursor.fetchone()
    if not recovering:
        return 0.0, CURRENT, False
    return (float(since_replay) if behind else 0.0), replayed, behind


def _check_mysql(cursor: Any) -> tuple[float, str | None, bool]:
    # MariaDB 10.5+ and MySQL 8.0.22+; MySQL names the lag column after the source.
    cursor.execute("SHOW REPLICA STATUS")
    row = cursor.fetchone()
    if row is None:
        return 0.0, CURRENT, False
    status = dict(zip((column[0] for column in cursor.description), row, strict=True))
    lag = status.get("Seconds_Behind_Master", status.get("Seconds_Behind_Source"))
    if lag is None:  # Replication is not running.
        return float("inf"), None, True
    replayed = None
    if "Gtid_IO_Pos" in status:  # MariaDB
        cursor.execute("SELECT @@GLOBAL.gtid_slave_pos")
        replayed = cursor.fetchone()[0] or None
    return float(lag), replayed, lag > 0


_CHECKS: Mapping[str, Callable[[Any], tuple[float, str | None, bool]]] = {
    "postgresql": _check_postgresql,
    "mysql": _check_mysql,
}


def measure(connection: BaseDatabaseWrapper) -> tuple[float, str | None, bool]:
    """(lag in seconds, replayed position, behind its primary) of a replica, with one query."""
    check = _CHECKS.get(connection.vendor)
    if check is None:
        connection.ensure_connection()
        return 0.0, CURRENT, False
    with _own_query(), connection.cursor() as cursor:
        return check(cursor)


def check(health: ReplicaHealth, now: float) -> None:
    """Check a replica now; skip it for REPLICA_COOLDOWN if it is unreachable or lags."""
    seconds = fleet_settings().seconds
    health.check_after = now + seconds["REPLICA_CHECK_INTERVAL"]
    connection = connections[health.alias]
    try:
        lag, replayed, behind = measure(connection)
    except DatabaseError as error:
        _close(connection)
        health.problem = f"unreachable: {error}".strip()
        health.lag = health.replayed = None
        _skip(health, now)
        return
    # A replica is only lagging if it was behind at two checks in a row: right
    # after an idle spell, "now - last replayed commit" is large for a moment
    # even on a replica that is milliseconds behind.
    stopped = lag == float("inf")
    lagging = behind and (health.behind or stopped) and lag > seconds["MAX_LAG"]
    health.lag, health.replayed, health.behind = (None if stopped else lag), replayed, behind
    health.problem, health.down_until = "", 0.0
    if lagging:
        health.problem = (
            "replication is not running"
            if stopped
            else f"lags {lag:.1f} s (MAX_LAG {seconds['MAX_LAG']:g} s)"
        )
        _skip(health, now)


def _skip(health: ReplicaHealth, now: float) -> None:
    cooldown = fleet_settings().seconds["REPLICA_COOLDOWN"]
    # Checked again as soon as the cool-down ends, before any read goes there.
    health.down_until = health.check_after = now + cooldown


def _close(connection: BaseDatabaseWrapper) -> None:
    """Drop a broken connection so the next use reconnects."""
    if not connection.in_atomic_block:
        try:
            connection.close()
        except DatabaseError:
            connection.connection = None


def mark_down(alias: str, problem: str) -> None:
    """Skip replica ``alias`` for REPLICA_COOLDOWN seconds from now."""
    for reads in filter(None, list(READS.values())):
        health = reads.by_alias.get(alias)
        if health is not None:
            health.problem = f"unreachable: {problem}"
            _skip(health, time.monotonic())
            reads.next_event = 0.0  # Rebuild the pool at the next read.


# --- Choosing the database of a read ------------------------------------------------------


def _in_event_loop() -> bool:
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
            if not _in_event_loop():  # There Django hands out other objects, per context.
                self._local.connections = found
        return found

    def read(self) -> str:
        """The database for a read now, in the current scope."""
        state = _STATE.get()
        ruled = None if state.force is REPLICA else self._ruled(state)
        if ruled is not None:
            return ruled
        pool = self.pool
        if pool and time.monotonic() < self.next_event:
            # The usual case: no check due, no cool-down ending, the connection open.
            alias = _pick(pool).alias
            if self.connections()[alias].connection is not None:
                return alias
        return self.replica() or self.primary

    def read_bound(self, db: str) -> str:
        """The database for a read bound to an instance read from ``db`` (of this group).

        It stays there, unless the scope's rules decide, or that replica is skipped now.
        """
        if db == self.primary:
            return db
        state = _STATE.get()
        ruled = None if state.force is REPLICA else self._ruled(state)
        if ruled is not None:
            return ruled
        health = self.by_alias.get(db)
        if health is None or health.down_until <= time.monotonic():
            return db
        return self.replica() or self.primary

    def _ruled(self, state: _State) -> str | None:
        """Where the scope sends the read (``use_primary``, a transaction, a pin), or None."""
        if state.force is PRIMARY or self.connections()[self.primary].in_atomic_block:
            return self.primary
        writes = state.writes or _IMPLICIT.get()
        if writes is None or not writes.pins:
            return None
        pin = writes.pins.get(self.primary)
        if pin is None:
            return None
        if pin.until <= time.time():
            writes.pins.pop(self.primary, None)
            return None
        if pin.wrote and (fleet_settings().read_your_writes != "position" or _in_event_loop()):
            return self.primary
        _settle_position(self.primary, pin)
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
            health = _pick(pool)
            if self._usable(health, now) and (
                position is None or self._has_replayed(health, position)
            ):
                return health.alias
            pool = tuple(other for other in pool if other is not health)
        return None

    def _usable(self, health: ReplicaHealth, now: float) -> bool:
        connection = self.connections()[health.alias]
        if _in_event_loop():
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
                health.problem = f"unreachable: {error}".strip()
                _skip(health, now)
                self._refresh(now)
        return health.down_until <= now

    def _has_replayed(self, health: ReplicaHealth, position: str) -> bool:
        if health.replayed is CURRENT or has_replayed(health.replayed, position):
            return True
        if _in_event_loop():
            return False
        try:  # One query on the replica: has it caught up since its last check?
            health.replayed = measure(self.connections()[health.alias])[1]
        except DatabaseError:
            return False
        return health.replayed is CURRENT or has_replayed(health.replayed, position)

    def _refresh(self, now: float) -> None:
        """Rebuild the pool and find the next moment something is due."""
        up = [health for health in self.replicas if health.down_until <= now]
        self.pool = tuple(health for health in up for _ in range(health.weight))
        # A skipped replica's next check is when its cool-down ends (see _skip).
        self.next_event = min(health.check_after for health in self.replicas)


def _pick(pool: tuple[ReplicaHealth, ...]) -> ReplicaHealth:
    """One replica of the pool, where each is repeated by its weight."""
    return pool[0] if len(pool) == 1 else pool[int(random.random() * len(pool))]


class _Reads(dict[str | None, GroupReads | None]):
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


READS = _Reads()


@receiver(setting_changed)
def _setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in {"DBFLEET", "DATABASES", "INSTALLED_APPS"}:
        READS.clear()


def replica_health(aliases: Iterable[str] = ()) -> list[ReplicaHealth]:
    """Check the replicas (those of ``aliases``, or every one) now; return what was found."""
    chosen = set(aliases)
    now = time.monotonic()
    found = []
    for group in get_topology().groups.values():
        for replica in group.replicas:
            if chosen and not chosen & {replica.alias, group.primary}:
                continue
            # One check, with no earlier one to confirm a lag: count it (behind=True).
            health = ReplicaHealth(replica.alias, group.primary, replica.weight, behind=True)
            check(health, now)
            found.append(health)
    return found


# --- Execute wrappers: the replica guard, failover, noting writes ---------------------------


def guard_replica(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """Execute wrapper of a replica: refuse writes; read from the primary if the replica died."""
    connection = context["connection"]
    if not sql.startswith("SELECT") and _first_words(sql).startswith(_WRITE_KEYWORDS):
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
            or is_write(sql)  # Only a statement known to read is run again elsewhere.
            or OWN_QUERY.get()
            or connection.in_atomic_block
            or _usable_connection(connection)
        ):
            raise
        # The server went away under an open connection: skip the replica and
        # answer this read from the primary, on the caller's cursor.
        mark_down(connection.alias, str(error))
        _close(connection)
        primary = get_topology().primary_of(connection.alias)
        fallback = connections[primary].cursor()
        result = fallback.execute(sql, params)
        context["cursor"].cursor = fallback.cursor
        return result


def _usable_connection(connection: BaseDatabaseWrapper) -> bool:
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
    # What the connection ran before this (setting itself up) is not the caller's.
    connection.dbfleet_ready = connection.connection  # type: ignore[attr-defined]
    topology = get_topology()
    if topology.is_replica(connection.alias):
        wrapper = guard_replica
    elif topology.groups.get(connection.alias, Group("")).replicas:
        wrapper = note_writes
    else:
        return
    if wrapper not in connection.execute_wrappers:
        connection.execute_wrappers.insert(0, wrapper)


# --- Read-your-writes across requests -------------------------------------------------------


class ReadYourWritesMiddleware:
    """Keep a user's reads on the primary (or caught-up replicas) right after they wrote.

    Each request is a ``read_your_writes`` scope. A request that wrote sets a
    signed cookie, so the same browser's next requests see the write: for
    READ_YOUR_WRITES_WINDOW seconds in "time" mode, or until a replica has
    replayed it in "position" mode.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        with _ReadYourWrites(None, pins_from_cookie(request), nested=False):
            writes = _scope_writes()
            response = self.get_response(request)
            save_pins(writes, request, response)
        return response

    async def __acall__(self, request: HttpRequest) -> Any:
        with _ReadYourWrites(None, pins_from_cookie(request), nested=False):
            writes = _scope_writes()
            response = await self.get_response(request)
            if writes.written:  # Else no thread hop.
                await sync_to_async(save_pins)(writes, request, response)
        return response


def _scope_writes() -> _Writes:
    writes = _STATE.get().writes
    assert writes is not None  # Inside a read_your_writes scope.
    return writes


def pins_from_cookie(request: HttpRequest) -> dict[str, _Pin]:
    """The pins a previous request's writes left in the cookie and that still hold."""
    config = fleet_settings()
    value = request.get_signed_cookie(config.cookie, default=None, salt=_COOKIE_SALT)
    try:
        entries = json.loads(value) if value else {}
        now = time.time()
        return {
            primary: _Pin(float(until), position or None)
            for primary, (until, position) in entries.items()
            if until > now and primary in get_topology().groups
        }
    except (ValueError, TypeError, AttributeError):
        return {}


def save_pins(writes: _Writes, request: HttpRequest, response: HttpResponseBase) -> None:
    """Put this request's pins in the cookie when it wrote."""
    if not writes.written:
        return
    config = fleet_settings()
    now = time.time()
    lifetime = config.seconds["READ_YOUR_WRITES_WINDOW"]
    by_position = config.read_your_writes == "position"
    if by_position:  # Past MAX_LAG, a replica that has not replayed the write is skipped.
        lifetime = max(lifetime, config.seconds["MAX_LAG"])
    entries: dict[str, tuple[float, str | None]] = {}
    for primary, pin in writes.pins.items():
        if primary in writes.written:
            # Inside a transaction (one the middleware runs in) the position would
            # not cover the commit: the pin then keeps to the primary instead.
            if by_position and not connections[primary].in_atomic_block:
                _settle_position(primary, pin)
            position = pin.position if by_position and not pin.stale else None
            entries[primary] = (now + lifetime, position)
        elif now < pin.until < float("inf"):  # From the cookie, still holding.
            entries[primary] = (pin.until, pin.position)
    response.set_signed_cookie(
        config.cookie,
        json.dumps(entries, separators=(",", ":")),
        salt=_COOKIE_SALT,
        # Whole seconds, rounded up: the entries carry their own expiry.
        max_age=math.ceil(max(until for until, _ in entries.values()) - now),
        secure=request.is_secure(),
        httponly=True,
        samesite="Lax",
    )
