"""``fleet status``: migrations x databases, the audit, replicas, in-doubt transactions, syncs."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import CommandError, CommandParser

from dbfleet.management.fleet.output import (
    Out,
    add_database_option,
    add_format_option,
    add_verbosity_option,
    chosen_databases,
    grid,
)
from dbfleet.migrating.status import State
from dbfleet.moving.move import COPYING, FINISHING
from dbfleet.reports import FleetStatus, Reason, ReplicaStatus, fleet_status
from dbfleet.vendors.base import ABORTED

NAME = "status"
HELP = "Show migrations x databases, the audit, replica health and lag, in-doubt transactions."
DESCRIPTION = (
    "A matrix of migrations x databases (applied, pending, not routed here), an audit "
    "of every table and column against the migration records and the routes, each "
    "replica's reachability and lag, and the in-doubt two-phase transactions. Exits 0 "
    "only when all is in order: 1 pending, 3 drift, 4 in doubt, 5 a replica not "
    "serving reads, 6 unreachable, 7 configuration errors (the highest that applies)."
)
#: How each state shows in the matrix.
SYMBOLS = {State.APPLIED: "applied", State.PENDING: "[bold]pending[/]", State.NOT_ROUTED: "-"}


def add_arguments(parser: CommandParser) -> None:
    add_database_option(parser, "Only this database (repeatable).")
    parser.add_argument(
        "--all", action="store_true", help="List every migration, not only pending ones."
    )
    add_format_option(parser)
    add_verbosity_option(parser)


def handle(
    out: Out, *, databases: list[str] | None, all: bool, format: str, **options: Any
) -> None:
    report = fleet_status(chosen_databases(databases), only=databases or ())
    if format == "json":
        out.json(report)
    else:
        write_text(out, report, all)
    refuse_unless_in_order(report.reasons)


def refuse_unless_in_order(reasons: list[Reason]) -> None:
    """Exit with the most serious reason's code, if there is any (also ``plan --check``)."""
    if not reasons:
        return
    code = max(reason.code for reason in reasons)
    raise CommandError(
        f"Not in order (exit {int(code)}, {code.name.lower().replace('_', ' ')}): "
        + "; ".join(reason.text for reason in reasons)
        + ".",
        returncode=int(code),
    )


def write_text(out: Out, report: FleetStatus, all: bool) -> None:
    style = out.style
    if report.configuration:
        out.write(
            style.ERROR(
                "Configuration errors: fix these first. Until then the routes are not what "
                "the settings mean, and nothing is audited:"
            )
        )
        for line in report.configuration:
            out.write(f"  {line}")
        out.write()
    for alias in report.databases:
        if alias in report.errors:
            out.write(style.ERROR(f"{alias}: unreachable: {report.errors[alias]}"))
            continue
        counts = ", ".join(f"{report.count(alias, state)} {state}" for state in State)
        if alias in report.in_doubt:
            counts += ", " + in_doubt_summary(out, report.in_doubt[alias])
        out.write(f"{style.MIGRATE_HEADING(alias)}: {counts}")
    for alias in report.audited:
        if alias not in report.databases:
            out.write(f"{style.MIGRATE_HEADING(alias)}: nothing is migrated here; audited for "
                      "tables left behind")  # fmt: skip
    for alias, error in report.errors.items():
        if alias not in report.databases:
            out.write(style.ERROR(f"{alias} (nothing is migrated here): unreachable: {error}"))
    for alias in report.participants:
        if alias not in report.databases:
            summary = (
                style.ERROR(f"unreachable: {report.in_doubt_unreachable[alias]}")
                if alias in report.in_doubt_unreachable
                else in_doubt_summary(out, report.in_doubt[alias])
            )
            out.write(f"{style.MIGRATE_HEADING(alias)}: {summary}")
    for health in report.replicas:
        out.write(
            f"{style.MIGRATE_HEADING(health.alias)} (replica of {health.primary!r}): "
            + replica_summary(out, health)
        )
    write_synced(out, report)
    write_moves(out, report)
    reachable = [alias for alias in report.databases if alias not in report.errors]
    rows = [
        (label, states)
        for label, states in report.migrations.items()
        if all or State.PENDING in states.values()
    ]
    if rows and reachable:
        table = grid("migration", *reachable)
        for label, states in rows:
            table.add_row(label, *(SYMBOLS[states[alias]] for alias in reachable))
        out.write()
        out.table(table)
        out.write("(-: not routed here; migrate still records it)")
    write_audit(out, report)


def write_audit(out: Out, report: FleetStatus) -> None:
    style = out.style
    if report.configuration:
        out.write("\nAudit: not done until the configuration errors above are fixed.")
        return
    unaudited = list(report.errors)
    if report.audit:
        out.write(style.ERROR(f"\n{len(report.audit)} table(s) or column(s) disagree:"))
        for item in report.audit:
            out.write(f"  {item.database}: {item.model}: {item.problem}")
        if report.fixes:
            out.write("\nTo put it right (each command checked against what the database has):")
            for fix in report.fixes:
                out.write(f"  {style.MIGRATE_HEADING(fix.database)}: {fix.note}")
                for command in fix.commands:
                    out.write(f"    {command}")
    elif not unaudited:
        out.write("\nAudit: every table is where its migrations and routes say.")
    elif report.audited:
        out.write(
            f"\nAudit of {', '.join(report.audited)}: every table is where its migrations "
            "and routes say."
        )
    if unaudited:
        out.write(style.ERROR(f"Not audited (unreachable): {', '.join(unaudited)}."))


def write_synced(out: Out, report: FleetStatus) -> None:
    """Each synced model: its backlog and lag now, its last sync, its last error."""
    style = out.style
    for synced in report.synced:
        where = f"{synced.source} on {synced.source_database or '?'} -> {synced.database or '?'}"
        parts = []
        if synced.pending is not None and synced.lag is not None:
            parts.append(f"{synced.pending:,} changes pending, lag {synced.lag:.1f} s")
        if synced.synced_at is None:
            parts.append("never synced: run `fleet sync`")
        else:
            ago = max(0.0, time.time() - synced.synced_at)
            parts.append(f"last sync {ago:.0f} s ago (lag {synced.last_lag or 0:.1f} s)")
            if not synced.loaded:
                parts.append("a full load is due")
        if synced.error:
            parts.append(style.ERROR(f"last error: {synced.error}"))
        if synced.problem:
            parts.append(style.ERROR(synced.problem))
        out.write(
            f"{style.MIGRATE_HEADING(synced.model)} (synced from {where}): " + "; ".join(parts)
        )


def write_moves(out: Out, report: FleetStatus) -> None:
    """Each move: its phase and backlog; a finished one's backup tables."""
    heading = out.style.MIGRATE_HEADING
    for move in report.moves:
        models = ", ".join(move.models)
        where = f"{move.source} -> {move.target}"
        if move.backlog is None:
            tables = ", ".join(f"`{table}`" for table in move.backups.values())
            out.write(
                f"{heading(models)} (moved {where}): finished; the old tables are kept on "
                f"{move.source}, refusing writes, as {tables}: drop them once not needed."
            )
            continue
        lag = f", the oldest {move.lag:.1f} s old" if move.lag is not None else ""
        named = " ".join(move.models)
        after = {
            COPYING: f"`manage.py fleet move {named} --from {move.source} --to "
            f"{move.target}` copies them again",
            FINISHING: f"`manage.py fleet move {named} --finish` again ends it",
            ABORTED: f"`manage.py fleet move {named} --abort` again ends the abort",
        }.get(
            move.phase,
            f"route them to {move.target!r}; with those settings, "
            f"`manage.py fleet move {named} --finish` as the deploy begins",
        )
        out.write(
            f"{heading(models)} (moving {where}): {move.phase}; {move.backlog:,} changes "
            f"not applied yet{lag}. Next: {after}"
            + ("." if move.phase == ABORTED else f" (or `fleet move {named} --abort`).")
        )


def replica_summary(out: Out, health: ReplicaStatus) -> str:
    if health.problem:
        return out.style.ERROR(f"{health.problem}; reads go to the other replicas or the primary")
    return f"reachable, lag {health.lag:.1f} s"


def in_doubt_summary(out: Out, count: int) -> str:
    if not count:
        return "0 in doubt"
    return out.style.ERROR(f"{count} in doubt: run `fleet recover`")
