"""The complete reports ``manage.py fleet`` shows, each assembled from the layers below.

``fleet routes``, ``status``, ``recover`` and ``shards`` each show facts from several
layers (routing and the engines; migrations, replicas and two-phase commit; the shard
groups and their tables). Each is
gathered here into one dataclass, which the command renders as a table or, the
same object, as JSON, and which tests and other code can call directly. A
report that one layer can answer alone comes from that layer: ``fleet plan``
renders ``migrating.plan.plan()``, ``fleet migrate`` ``migrating.runner.migrate_all()``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from django.apps import apps
from django.core.checks import ERROR, run_checks
from django.db import DatabaseError, connections, models

from dbfleet import vendors
from dbfleet.analytics.sync import SyncStatus, sync_status
from dbfleet.conf import did_you_mean, fleet_settings, get_topology
from dbfleet.migrating.drift import Drift
from dbfleet.migrating.plan import DatabasePlan, primary_databases
from dbfleet.migrating.status import State, Status, status
from dbfleet.moving.move import MoveStatus, move_status
from dbfleet.replicas import Health, replica_health
from dbfleet.routing import Route, routes
from dbfleet.topology import ShardGroup
from dbfleet.transactions.two_phase import Action, find_in_doubt, participants, recover


@dataclass(frozen=True)
class Database:
    """A primary database, its engine and its replicas."""

    alias: str
    vendor: str
    replicas: tuple[str, ...]


@dataclass(frozen=True)
class RoutesReport:
    """``fleet routes``: the primary databases, and where every model is read, written, migrated."""

    databases: tuple[Database, ...]
    models: tuple[Route, ...]


def routes_report() -> RoutesReport:
    """Every group's primary with its engine and replicas, and the routing table."""
    groups = get_topology().groups.values()
    return RoutesReport(
        databases=tuple(
            Database(
                group.primary,
                connections[group.primary].vendor,
                tuple(replica.alias for replica in group.replicas),
            )
            for group in groups
        ),
        models=tuple(routes()),
    )


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica as a health check found it just now."""

    alias: str
    primary: str
    reachable: bool
    #: Seconds behind its primary; None when it could not be measured.
    lag: float | None
    #: Why reads skip it, or "".
    problem: str
    #: ``ok``, ``unreachable``, ``not a replica``, ``lagging`` or ``stopped``.
    state: str = Health.OK.value


class ExitCode(IntEnum):
    """What ``fleet status`` and ``fleet plan --check`` exit with; the highest that applies."""

    OK = 0
    #: Migrations are pending (``fleet migrate`` applies them).
    PENDING = 1
    # 2 is argparse's, for a mistyped command line.
    #: A table or column disagrees with the migration records or the routes (the audit).
    DRIFT = 3
    #: Two-phase transactions are in doubt (``fleet recover`` settles them).
    IN_DOUBT = 4
    #: A replica does not replicate, has stopped, or lags more than ``MAX_LAG``.
    REPLICA = 5
    #: A database (primary, replica or two-phase participant) could not be reached.
    UNREACHABLE = 6
    #: ``DBFLEET`` or the migrations' hints have errors (system checks): fix those first.
    CONFIGURATION = 7


@dataclass(frozen=True)
class Reason:
    """One reason a report is not in order."""

    code: ExitCode
    text: str


def exit_code(reasons: Sequence[Reason]) -> ExitCode:
    return max((reason.code for reason in reasons), default=ExitCode.OK)


def configuration_errors() -> list[str]:
    """The errors dbfleet's system checks find (no database is asked), one line each."""
    from dbfleet.checks import TAG

    return [
        f"{message.id}: {message.msg}" + (f" HINT: {message.hint}" if message.hint else "")
        for message in run_checks(tags=[TAG])
        if message.level >= ERROR and not message.is_silenced()
    ]


@dataclass
class FleetStatus(Status):
    """``fleet status``: migrations x databases, the audit, in-doubt transactions, replicas."""

    #: Errors in the configuration (system checks): while there are any, nothing is audited.
    configuration: list[str] = field(default_factory=list)
    #: Every database that can hold prepared transactions, in DATABASES order.
    participants: list[str] = field(default_factory=list)
    #: Participant -> the number of dbfleet transactions in doubt there.
    in_doubt: dict[str, int] = field(default_factory=dict)
    #: Participant that could not be asked -> the error.
    in_doubt_unreachable: dict[str, str] = field(default_factory=dict)
    replicas: list[ReplicaStatus] = field(default_factory=list)
    #: Each synced model: changes its source logged and not copied yet, its last sync.
    synced: list[SyncStatus] = field(default_factory=list)
    #: Each move (fleet move): its phase, and the changes not applied yet.
    moves: list[MoveStatus] = field(default_factory=list)
    #: Why it is not in order (none: it is), and the exit code that says so.
    reasons: list[Reason] = field(default_factory=list)
    exit_code: ExitCode = ExitCode.OK


def fleet_status(aliases: Sequence[str], only: Sequence[str] = ()) -> FleetStatus:
    """Migrations on ``aliases``; in-doubt transactions and replicas of ``only`` (or of all).

    Without ``only``, databases nothing is migrated to are audited too, for tables
    a route change left there. Every database is read on a probe connection, so a
    server that never answers is reported unreachable after ``PROBE_TIMEOUT``.
    """
    configuration = configuration_errors()
    also = [] if only else [a for a in primary_databases() if a not in aliases]
    with vendors.probing([*aliases, *also], fleet_settings().seconds["PROBE_TIMEOUT"]):
        migrations = status(list(aliases), audited=not configuration, also=also)
    # Every database that can hold prepared transactions, migrated here or not; one found
    # unreachable by the migration status is not asked again.
    asked = [
        alias
        for alias in participants()
        if alias not in migrations.errors and (not only or alias in only)
    ]
    found, unreachable = find_in_doubt(asked)
    moves = move_status(only)
    # A move's tables hold its models' rows on both sides until it is finished: the move
    # is shown, with what to do next, instead of rows in the wrong place.
    moving = {
        (alias, label)
        for move in moves
        if move.backlog is not None
        for alias in (move.source, move.target)
        for label in move.labels
    }
    report = FleetStatus(
        databases=migrations.databases,
        migrations=migrations.migrations,
        errors=migrations.errors,
        audit=[
            item
            for item in migrations.audit
            if item.kind not in (Drift.ROWS_ELSEWHERE, Drift.STRAY)
            or (item.database, item.model) not in moving
        ],
        audited=migrations.audited,
        fixes=migrations.fixes,
        configuration=configuration,
        participants=asked,
        in_doubt={
            alias: sum(prepared.alias == alias for prepared in found)
            for alias in asked
            if alias not in unreachable
        },
        in_doubt_unreachable=unreachable,
        replicas=[
            ReplicaStatus(
                health.alias,
                health.primary,
                health.reachable,
                health.lag,
                health.problem,
                health.state.value,
            )
            for health in replica_health(only)
        ],
        synced=sync_status(only),
        moves=moves,
    )
    report.reasons = status_reasons(report)
    report.exit_code = exit_code(report.reasons)
    return report


def status_reasons(report: FleetStatus) -> list[Reason]:
    """Why ``report`` is not in order, most serious first."""
    reasons = []
    if report.configuration:
        reasons.append(
            Reason(
                ExitCode.CONFIGURATION,
                f"{len(report.configuration)} configuration error(s); the audit waits for "
                "them to be fixed",
            )
        )
    unreachable = {**report.errors, **report.in_doubt_unreachable}
    unreachable |= {r.alias: r.problem for r in report.replicas if not r.reachable}
    if unreachable:
        reasons.append(Reason(ExitCode.UNREACHABLE, f"unreachable: {', '.join(unreachable)}"))
    troubled = [r.alias for r in report.replicas if r.reachable and r.state != Health.OK]
    if troubled:
        reasons.append(
            Reason(ExitCode.REPLICA, f"replica not serving reads: {', '.join(troubled)}")
        )
    in_doubt = {alias: count for alias, count in report.in_doubt.items() if count}
    if in_doubt:
        reasons.append(
            Reason(
                ExitCode.IN_DOUBT,
                "in doubt: "
                + ", ".join(f"{count} on {alias}" for alias, count in in_doubt.items()),
            )
        )
    drifted = list(dict.fromkeys(item.database for item in report.audit))
    if drifted:
        reasons.append(
            Reason(
                ExitCode.DRIFT,
                f"{len(report.audit)} audit finding(s) on {', '.join(drifted)}",
            )
        )
    pending = {
        alias: report.count(alias, State.PENDING)
        for alias in report.databases
        if report.count(alias, State.PENDING)
    }
    if pending:
        reasons.append(
            Reason(
                ExitCode.PENDING,
                "pending: " + ", ".join(f"{count} on {alias}" for alias, count in pending.items()),
            )
        )
    return reasons


def plan_reasons(plans: Sequence[DatabasePlan]) -> list[Reason]:
    """Why ``fleet plan --check`` fails: configuration errors, unreachable databases, work to do."""
    reasons = []
    configuration = configuration_errors()
    if configuration:
        reasons.append(
            Reason(ExitCode.CONFIGURATION, f"{len(configuration)} configuration error(s)")
        )
    unreachable = [database.alias for database in plans if database.error]
    if unreachable:
        reasons.append(Reason(ExitCode.UNREACHABLE, f"unreachable: {', '.join(unreachable)}"))
    pending = {
        database.alias: count
        for database in plans
        if (count := sum(1 for m in database.migrations if not m.applied and m.runs_here))
    }
    if pending:
        reasons.append(
            Reason(
                ExitCode.PENDING,
                "pending: " + ", ".join(f"{count} on {alias}" for alias, count in pending.items()),
            )
        )
    return reasons


@dataclass(frozen=True)
class Settled:
    """One in-doubt transaction and what recovery did with it."""

    database: str
    transaction: str
    #: Its age when found, to a tenth of a second.
    age_seconds: float
    action: Action
    detail: str


@dataclass(frozen=True)
class RecoveryReport:
    """``fleet recover``: what was done with each in-doubt transaction; who could not be asked."""

    outcomes: tuple[Settled, ...]
    #: Database that could not be asked -> the error.
    unreachable: dict[str, str]
    #: Settled decisions deleted from the decision log.
    purged_decisions: int

    @property
    def complete(self) -> bool:
        """Whether every database was asked and nothing failed to settle."""
        return not self.unreachable and all(o.action is not Action.FAILED for o in self.outcomes)


def recovery_report(grace: float | None = None, dry_run: bool = False) -> RecoveryReport:
    """Settle every in-doubt transaction (see ``two_phase.recover``) and report each."""
    result = recover(grace, dry_run=dry_run)
    return RecoveryReport(
        outcomes=tuple(
            Settled(
                outcome.prepared.alias,
                outcome.prepared.transaction_id,
                round(outcome.prepared.age, 1),
                outcome.action,
                outcome.detail,
            )
            for outcome in result.outcomes
        ),
        unreachable=result.unreachable,
        purged_decisions=result.purged,
    )


@dataclass(frozen=True)
class SlotRange:
    """Slots ``first`` to ``last``, both included."""

    first: int
    last: int

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@dataclass(frozen=True)
class ShardDatabase:
    """One database of a shard group and the slots it holds."""

    alias: str
    slots: tuple[SlotRange, ...]
    slot_count: int


@dataclass(frozen=True)
class TableRows:
    """A model's rows on one database of its group."""

    database: str
    #: None when the table could not be read (``error`` says why).
    rows: int | None
    #: Whether ``rows`` was counted (``COUNT(*)``), not the engine's estimate.
    exact: bool
    error: str = ""


@dataclass(frozen=True)
class ShardedModelRows:
    """A sharded model: its key, its rows on each database, and how evenly they spread."""

    model: str
    key: str
    table: str
    rows: tuple[TableRows, ...]
    #: The rows on every database (None when one could not be read).
    total: int | None
    #: The largest database's rows over the mean (1.0: even; None: no rows, or unread).
    imbalance: float | None
    #: The database with the most rows (None when ``imbalance`` is).
    largest: str | None


@dataclass(frozen=True)
class ReferenceCopy:
    """One database's copy of a reference model, read whole by ``check``."""

    database: str
    rows: int | None
    #: BLAKE2b of the rows in primary-key order (None when it could not be read).
    checksum: str | None
    error: str = ""


@dataclass(frozen=True)
class ReferenceModelRows:
    """A reference model: its rows on each database and, checked, whether the copies agree."""

    model: str
    table: str
    rows: tuple[TableRows, ...]
    #: Each copy, read whole; empty when not checked.
    copies: tuple[ReferenceCopy, ...] = ()
    #: The databases whose copy differs from the first one read (where queries read).
    differ: tuple[str, ...] = ()
    #: Whether every copy was read and agrees; None when not checked.
    agree: bool | None = None


@dataclass(frozen=True)
class ShardGroupReport:
    """One shard group: its slot map, its models and their rows on each database."""

    name: str
    vendor: str
    slots: int
    two_phase: bool
    databases: tuple[ShardDatabase, ...]
    sharded: tuple[ShardedModelRows, ...]
    reference: tuple[ReferenceModelRows, ...]


@dataclass(frozen=True)
class ShardsReport:
    """``fleet shards``: every shard group's slot map, rows per database, and imbalance."""

    groups: tuple[ShardGroupReport, ...]
    #: Whether every table was counted (``exact=True``), not estimated where the engine can.
    exact: bool
    #: Whether the copies of reference models were compared (``check=True``).
    checked: bool
    #: Errors in the configuration (system checks): groups with errors are left out.
    configuration: tuple[str, ...]
    #: What is not in order: unreadable tables, copies that differ, configuration errors.
    problems: tuple[str, ...]


#: What ``fleet shards`` says when ``DBFLEET["SHARDS"]`` has no group.
NO_SHARD_GROUPS = (
    'no shard groups are configured. Add them to DBFLEET["SHARDS"]: '
    '{"customers": {"databases": ["shard0", "shard1"], "keys": {"shop.Customer": "id", '
    '"shop.Order": "customer"}, "reference": ["shop.Product"], "slots": 1024}}, and give '
    "the sharded and reference models objects = dbfleet.ShardedManager()."
)


def slot_ranges(group: ShardGroup) -> dict[str, list[SlotRange]]:
    """Each database of ``group`` -> the slots it holds, contiguous slots as one range."""
    ranges: dict[str, list[SlotRange]] = {alias: [] for alias in group.databases}
    for slot in range(group.slots):
        held = ranges[group.database_for_slot(slot)]
        if held and held[-1].last == slot - 1:
            held[-1] = SlotRange(held[-1].first, slot)
        else:
            held.append(SlotRange(slot, slot))
    return ranges


class _Tables:
    """Reads the tables of a shard group's databases; one that fails is not asked again."""

    def __init__(self, exact: bool) -> None:
        self.exact = exact
        self.tables: dict[str, frozenset[str]] = {}
        self.failed: dict[str, str] = {}

    def rows(self, model: type[models.Model] | None, alias: str) -> TableRows:
        """The rows of ``model`` on ``alias``: estimated where the engine can, else counted."""
        if alias in self.failed:
            return TableRows(alias, None, False, self.failed[alias])
        if model is None:
            return TableRows(alias, None, False, "not an installed model")
        connection = connections[alias]
        table = model._meta.db_table
        try:
            if alias not in self.tables:
                self.tables[alias] = frozenset(connection.introspection.table_names())
            if table not in self.tables[alias]:
                return TableRows(
                    alias, None, False, f"no table {table}: run `manage.py fleet migrate`"
                )
            if not self.exact:
                estimate = vendors.of(connection).estimated_rows(connection, table)
                if estimate is not None:
                    return TableRows(alias, estimate, False)
            return TableRows(alias, models.QuerySet(model, using=alias).count(), True)
        except DatabaseError as error:
            unread = TableRows(alias, None, False, f"cannot be read: {error}")
            if alias not in self.tables:  # Not even its tables: ask it nothing more.
                self.failed[alias] = unread.error
            return unread


def _copy(model: type[models.Model] | None, found: TableRows) -> ReferenceCopy:
    """The copy of a reference model on ``found.database``: its rows and their checksum."""
    if model is None or found.error:
        return ReferenceCopy(found.database, None, None, found.error)
    names = [field.attname for field in model._meta.concrete_fields]
    rows: models.QuerySet[Any, tuple[Any, ...]] = (
        models.QuerySet(model, using=found.database).order_by("pk").values_list(*names)
    )
    digest = hashlib.blake2b(digest_size=16)
    count = 0
    try:
        for row in rows.iterator(chunk_size=2000):
            # One group is one engine: each value comes back as the same Python value
            # from every copy, and its repr is a faithful serialisation.
            digest.update(repr(row).encode() + b"\n")
            count += 1
    except DatabaseError as error:  # A column it lacks, say: migrations not applied.
        return ReferenceCopy(
            found.database,
            None,
            None,
            f"cannot be read: {error} (`manage.py fleet status` compares its tables with "
            "the migrations)",
        )
    return ReferenceCopy(found.database, count, digest.hexdigest())


def _installed(label: str) -> type[models.Model] | None:
    try:
        return apps.get_model(label)
    except LookupError:
        return None


def _imbalance(rows: Sequence[TableRows]) -> tuple[int | None, float | None, str | None]:
    """(total rows, the largest database's rows over the mean, that database)."""
    counts = [found.rows for found in rows]
    if any(count is None for count in counts):
        return None, None, None
    total = sum(count or 0 for count in counts)
    if not total:
        return 0, None, None
    largest = max(rows, key=lambda found: found.rows or 0)
    return total, (largest.rows or 0) * len(rows) / total, largest.database


def _problems(name: str, rows: Sequence[TableRows]) -> list[str]:
    return [f"{name} on {found.database}: {found.error}" for found in rows if found.error]


def _sharded_rows(
    label: str, key: str, group: ShardGroup, tables: _Tables, problems: list[str]
) -> ShardedModelRows:
    model = _installed(label)
    name, table = (model._meta.label, model._meta.db_table) if model is not None else (label, "")
    rows = tuple(tables.rows(model, alias) for alias in group.databases)
    problems.extend(_problems(name, rows))
    total, imbalance, largest = _imbalance(rows)
    return ShardedModelRows(name, key, table, rows, total, imbalance, largest)


def _reference_rows(
    label: str, group: ShardGroup, tables: _Tables, check: bool, problems: list[str]
) -> ReferenceModelRows:
    model = _installed(label)
    name, table = (model._meta.label, model._meta.db_table) if model is not None else (label, "")
    rows = tuple(tables.rows(model, alias) for alias in group.databases)
    problems.extend(_problems(name, rows))
    if not check:
        return ReferenceModelRows(name, table, rows)
    copies = tuple(_copy(model, found) for found in rows)
    problems.extend(
        f"{name} on {copy.database}: {copy.error}"
        for copy, found in zip(copies, rows, strict=True)
        if copy.error and not found.error  # Counted, then not read whole.
    )
    readable = [copy for copy in copies if not copy.error]
    differ: list[str] = []
    if readable:
        first = readable[0]  # Queries read the first copy.
        for copy in readable[1:]:
            if (copy.rows, copy.checksum) != (first.rows, first.checksum):
                differ.append(copy.database)
                problems.append(
                    f"{name}: the copy on {copy.database} ({copy.rows} rows, checksum "
                    f"{copy.checksum}) differs from the one on {first.database} "
                    f"({first.rows} rows, checksum {first.checksum})"
                )
    agree = not differ and len(readable) == len(copies)
    return ReferenceModelRows(name, table, rows, copies, tuple(differ), agree)


def _group_report(
    group: ShardGroup, tables: _Tables, check: bool, problems: list[str]
) -> ShardGroupReport:
    return ShardGroupReport(
        name=group.name,
        vendor=connections[group.databases[0]].vendor,
        slots=group.slots,
        two_phase=group.two_phase,
        databases=tuple(
            ShardDatabase(alias, tuple(ranges), sum(r.last - r.first + 1 for r in ranges))
            for alias, ranges in slot_ranges(group).items()
        ),
        sharded=tuple(
            _sharded_rows(label, key, group, tables, problems) for label, key in group.keys.items()
        ),
        reference=tuple(
            _reference_rows(label, group, tables, check, problems)
            for label in sorted(group.reference)
        ),
    )


def shards_report(
    groups: Sequence[str] = (), *, exact: bool = False, check: bool = False
) -> ShardsReport:
    """The slot map and rows per database of each shard group (of ``groups``, or all).

    Rows are the engine's estimate where it keeps one (PostgreSQL's planner
    statistics, InnoDB's), else counted; ``exact=True`` counts them all.
    ``check=True`` reads every copy of each reference model whole, in primary-key
    order, and compares their rows and checksums.
    """
    topology = get_topology()
    for name in groups:
        if name not in topology.shard_groups:
            known = ", ".join(map(repr, topology.shard_groups))
            raise LookupError(
                f"No shard group {name!r}: "
                + (
                    f"the groups are {known}.{did_you_mean(name, topology.shard_groups)}"
                    if known
                    else NO_SHARD_GROUPS
                )
            )
    configuration = configuration_errors()
    problems: list[str] = []
    if configuration:
        problems.append(
            f"{len(configuration)} configuration error(s): run `manage.py check --tag dbfleet`"
        )
    tables = _Tables(exact)
    chosen = [
        group for name, group in topology.shard_groups.items() if not groups or name in groups
    ]
    return ShardsReport(
        groups=tuple(_group_report(group, tables, check, problems) for group in chosen),
        exact=exact,
        checked=check,
        configuration=tuple(configuration),
        problems=tuple(problems),
    )
