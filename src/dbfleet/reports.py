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

from django.db import connections

from dbfleet.conf import get_topology
from dbfleet.migrating.status import Status, status
from dbfleet.replicas import replica_health
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


@dataclass
class FleetStatus(Status):
    """``fleet status``: migrations x databases, the audit, in-doubt transactions, replicas."""

    #: Every database that can hold prepared transactions, in DATABASES order.
    participants: list[str] = field(default_factory=list)
    #: Participant -> the number of dbfleet transactions in doubt there.
    in_doubt: dict[str, int] = field(default_factory=dict)
    #: Participant that could not be asked -> the error.
    in_doubt_unreachable: dict[str, str] = field(default_factory=dict)
    replicas: list[ReplicaStatus] = field(default_factory=list)


def fleet_status(aliases: Sequence[str], only: Sequence[str] = ()) -> FleetStatus:
    """Migrations on ``aliases``; in-doubt transactions and replicas of ``only`` (or of all)."""
    migrations = status(list(aliases))
    # Every database that can hold prepared transactions, migrated here or not; one found
    # unreachable by the migration status is not asked again.
    asked = [
        alias
        for alias in participants()
        if alias not in migrations.errors and (not only or alias in only)
    ]
    found, unreachable = find_in_doubt(asked)
    return FleetStatus(
        databases=migrations.databases,
        migrations=migrations.migrations,
        errors=migrations.errors,
        audit=migrations.audit,
        participants=asked,
        in_doubt={
            alias: sum(prepared.alias == alias for prepared in found)
            for alias in asked
            if alias not in unreachable
        },
        in_doubt_unreachable=unreachable,
        replicas=[
            ReplicaStatus(
                health.alias, health.primary, health.reachable, health.lag, health.problem
            )
            for health in replica_health(only)
        ],
    )


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
