"""The complete reports ``manage.py fleet`` shows, each assembled from the layers below.

``fleet routes``, ``status`` and ``recover`` each show facts from several layers
(routing and the engines; migrations, replicas and two-phase commit). Each is
gathered here into one dataclass, which the command renders as a table or, the
same object, as JSON, and which tests and other code can call directly. A
report that one layer can answer alone comes from that layer: ``fleet plan``
renders ``migrating.plan.plan()``, ``fleet migrate`` ``migrating.runner.migrate_all()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from django.core.checks import ERROR, run_checks
from django.db import connections

from dbfleet import vendors
from dbfleet.conf import fleet_settings, get_topology
from dbfleet.migrating.plan import DatabasePlan, primary_databases
from dbfleet.migrating.status import State, Status, status
from dbfleet.replicas import Health, replica_health
from dbfleet.routing import Route, routes
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
    report = FleetStatus(
        databases=migrations.databases,
        migrations=migrations.migrations,
        errors=migrations.errors,
        audit=migrations.audit,
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
