"""``fleet plan``: which migration operation runs on which database, and why."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from dbfleet.management.fleet.output import (
    Out,
    add_database_option,
    add_format_option,
    add_verbosity_option,
    chosen_databases,
    shorten,
)
from dbfleet.management.fleet.status import refuse_unless_in_order
from dbfleet.migrating.plan import DatabasePlan, plan
from dbfleet.reports import plan_reasons

NAME = "plan"
HELP = "Show which migration operation runs on which database, and why."
DESCRIPTION = (
    "For every database, each pending migration (every one with --all) "
    "and each of its operations: runs here, or skipped by routing, with the reason. "
    "With --check, exits 0 only when nothing is pending anywhere."
)


def add_arguments(parser: CommandParser) -> None:
    add_database_option(parser, "Plan only this database (repeatable).")
    parser.add_argument("--all", action="store_true", help="Include applied migrations.")
    parser.add_argument(
        "--check",
        action="store_true",
        help="Exit non-zero unless nothing is pending anywhere: 1 pending, 6 unreachable, "
        "7 configuration errors (as `fleet status`).",
    )
    add_format_option(parser)
    add_verbosity_option(parser)


def handle(
    out: Out,
    *,
    databases: list[str] | None,
    all: bool,
    format: str,
    verbosity: int,
    check: bool = False,
    **options: Any,
) -> None:
    plans = plan(chosen_databases(databases), include_applied=all)
    if format == "json":
        out.json(plans)
    else:
        write_text(out, plans, verbosity)
    if check:
        refuse_unless_in_order(plan_reasons(plans))


def write_text(out: Out, plans: list[DatabasePlan], verbosity: int = 1) -> None:
    """Each database's migrations and operations, and the verdict on each (also for --plan)."""
    style = out.style
    for database in plans:
        heading = f"{database.alias} ({database.vendor})"
        if database.error:
            out.write(style.ERROR(f"{heading}: unreachable: {database.error}"))
            continue
        if not database.migrations:
            out.write(style.MIGRATE_HEADING(heading) + ": up to date")
            continue
        pending = f"{database.pending} pending" if database.pending else "up to date"
        out.write(style.MIGRATE_HEADING(heading) + f": {pending}")
        for migration in database.migrations:
            mark = "applied" if migration.applied else "pending"
            label = f"  {style.MIGRATE_LABEL(migration.label)} ({mark})"
            idle = not any(step.runs or step.finding for step in migration.operations)
            if idle and verbosity < 2:
                out.write(f"{label}: nothing runs here")
                continue
            out.write(label)
            for step in migration.operations:
                verdict = style.SUCCESS("runs here") if step.runs else style.WARNING("skipped  ")
                description = shorten(step.description, 34)
                out.write(f"    {step.position:>2}. {description:<34} {verdict}  {step.reason}")
                if step.finding:
                    out.write(
                        style.ERROR(f"        ! {step.finding.problem}")
                        + f"\n        fix: {step.finding.fix}"
                    )
