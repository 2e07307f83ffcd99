"""Finding and settling in-doubt two-phase transactions (``fleet recover``)."""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.db import DatabaseError, connections

from dbfleet import vendors
from dbfleet.conf import fleet_settings, get_topology
from dbfleet.transactions.two_phase.decisions import (
    PREFIX,
    decide_rollback,
    decisions,
    now_ms,
    purge,
    started_ms,
)


class Action(enum.StrEnum):
    """What recovery did (or, in a dry run, would do) with one prepared transaction."""

    COMMITTED = "committed"
    ROLLED_BACK = "rolled back"
    ALREADY_SETTLED = "already settled"
    #: Younger than the grace period, with no decision: its coordinator may still decide.
    WAITING = "waiting"
    #: A live session holds it (its coordinator, finishing).
    BUSY = "busy"
    FAILED = "failed"
    WOULD_COMMIT = "would commit"
    WOULD_ROLL_BACK = "would roll back"


@dataclass(frozen=True)
class Prepared:
    """A prepared transaction found on a database."""

    alias: str
    transaction_id: str
    name: str  # the engine's own name for it: a PostgreSQL gid, an XA xid's data

    @property
    def age(self) -> float:
        return time.time() - started_ms(self.transaction_id) / 1000


@dataclass
class Outcome:
    """What recovery did with one prepared transaction."""

    prepared: Prepared
    action: Action
    detail: str = ""


@dataclass
class Recovery:
    """The report of one recovery run."""

    outcomes: list[Outcome] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)  # alias -> error
    purged: int = 0


def participants() -> list[str]:
    """Aliases that can hold prepared transactions (PostgreSQL, MariaDB), replicas excepted."""
    topology = get_topology()
    return [
        alias
        for alias in connections
        if vendors.of(connections[alias]).two_phase and not topology.is_replica(alias)
    ]


def in_doubt(alias: str) -> list[Prepared]:
    """The dbfleet transactions prepared on ``alias`` and not yet settled."""
    connection = connections[alias]
    return [
        Prepared(alias, transaction_id, name)
        for transaction_id, name in vendors.of(connection).in_doubt(connection, PREFIX)
    ]


def settle(prepared: Prepared, commit: bool) -> None:
    """Commit or roll back one prepared transaction."""
    connection = connections[prepared.alias]
    vendors.of(connection).settle(connection, prepared.transaction_id, prepared.name, commit)


def settle_one(prepared: Prepared, commit: bool, detail: str = "") -> Outcome:
    """Settle ``prepared`` as decided, and say how that went."""
    try:
        settle(prepared, commit)
    except DatabaseError as error:
        try:
            still = any(found.name == prepared.name for found in in_doubt(prepared.alias))
        except DatabaseError:
            still = True
        if not still:
            # Settled since it was listed: by its coordinator, finishing, or
            # another recovery; either way as the decision says.
            return Outcome(prepared, Action.ALREADY_SETTLED, detail)
        if vendors.of(connections[prepared.alias]).is_busy(error):
            return Outcome(
                prepared,
                Action.BUSY,
                "a live session holds it (its coordinator, finishing?); run again",
            )
        return Outcome(prepared, Action.FAILED, str(error).strip())
    return Outcome(prepared, Action.COMMITTED if commit else Action.ROLLED_BACK, detail)


def find_in_doubt(aliases: Sequence[str] | None = None) -> tuple[list[Prepared], dict[str, str]]:
    """Prepared dbfleet transactions on ``aliases`` (all participants), and unreachable aliases.

    Each database is asked on a connection of its own that gives up after
    ``PROBE_TIMEOUT``.
    """
    aliases = participants() if aliases is None else aliases
    with vendors.probing(aliases, fleet_settings().seconds["PROBE_TIMEOUT"]):
        return _find_in_doubt(aliases)


def _find_in_doubt(aliases: Sequence[str]) -> tuple[list[Prepared], dict[str, str]]:
    found: list[Prepared] = []
    unreachable: dict[str, str] = {}
    seen: set[str] = set()
    for alias in aliases:
        try:
            for prepared in in_doubt(alias):
                # Two aliases may name one database: settle its transactions once.
                if prepared.name not in seen:
                    seen.add(prepared.name)
                    found.append(prepared)
        except DatabaseError as error:
            unreachable[alias] = str(error).strip() or type(error).__name__
    return found, unreachable


def recover(grace: float | None = None, dry_run: bool = False) -> Recovery:
    """Settle every in-doubt dbfleet transaction; purge decisions nobody needs any more."""
    seconds = fleet_settings().seconds
    grace = seconds["RECOVERY_GRACE"] if grace is None else grace
    aliases = [*participants(), fleet_settings().default_database]
    with vendors.probing(aliases, seconds["PROBE_TIMEOUT"]):
        return _recover(grace, dry_run)


def _recover(grace: float, dry_run: bool) -> Recovery:
    started = now_ms()  # Before the search: see purge().
    found, unreachable = _find_in_doubt(participants())
    known = decisions(sorted({prepared.transaction_id for prepared in found}))
    recovery = Recovery(unreachable=unreachable)
    for prepared in found:
        recovery.outcomes.append(_recover_one(prepared, known, grace, dry_run))
    if (
        not dry_run
        and not unreachable
        and all(outcome.action is not Action.FAILED for outcome in recovery.outcomes)
    ):
        keep = {
            outcome.prepared.transaction_id
            for outcome in recovery.outcomes
            if outcome.action in (Action.WAITING, Action.BUSY)
        }
        recovery.purged = purge(started - int(grace * 1000), keep)
    return recovery


def _recover_one(
    prepared: Prepared, known: dict[str, bool], grace: float, dry_run: bool
) -> Outcome:
    decision = known.get(prepared.transaction_id)
    if decision is None:
        if prepared.age < grace:
            return Outcome(prepared, Action.WAITING, f"no decision yet; younger than {grace:g} s")
        if dry_run:
            return Outcome(prepared, Action.WOULD_ROLL_BACK, "no decision recorded")
        try:
            decision = decide_rollback(prepared.transaction_id)
        except DatabaseError as error:
            # Its coordinator's own record may be in flight, holding the key:
            # recording "roll back" waits for it and can time out. Settle the rest.
            reason = f"could not record a decision: {str(error).strip()}; run again"
            return Outcome(prepared, Action.BUSY, reason)
        known[prepared.transaction_id] = decision
    detail = "decision: commit" if decision else "no decision recorded"
    if dry_run:
        return Outcome(
            prepared, Action.WOULD_COMMIT if decision else Action.WOULD_ROLL_BACK, detail
        )
    return settle_one(prepared, decision, detail)
