"""``fleet migrate``: every database migrations are routed to, in parallel worker processes."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError

from dbfleet.management.fleet import plan as plan_command
from dbfleet.management.fleet import resume
from dbfleet.management.fleet.output import (
    Out,
    add_database_option,
    add_verbosity_option,
    chosen_databases,
    grid,
)
from dbfleet.migrating.lint import lint
from dbfleet.migrating.plan import first_line, plan
from dbfleet.migrating.runner import Outcome, Result, migrate_all

NAME = "migrate"
HELP = "Migrate every database, in parallel."
DESCRIPTION = (
    "Migrate every database that migrations are routed to (never replicas), "
    "each in its own worker process running Django's migrate, several at once."
)


def add_arguments(parser: CommandParser) -> None:
    add_database_option(parser, "Migrate only this database (repeatable).")
    add_verbosity_option(parser)
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="Databases migrated at once."
    )
    parser.add_argument(
        "--fail-fast", action="store_true", help="Stop every database when one fails."
    )
    parser.add_argument(
        "--check", action="store_true", help="Exit 1 if any database has pending migrations."
    )
    parser.add_argument("--plan", action="store_true", help="Show what would run where, and stop.")
    parser.add_argument(
        "--fake", action="store_true", help="Record migrations as applied without running them."
    )
    parser.add_argument(
        "--noinput", "--no-input", action="store_false", dest="interactive",
        help="Never prompt (workers never prompt anyway).",
    )  # fmt: skip
    parser.add_argument("--skip-checks", action="store_true", help="Skip system checks.")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="First finish each migration that stopped half-way (`fleet status` names them): "
        "run its operations after those already done, and record it.",
    )


def refuse_broken_hints() -> None:
    """Stop before anything runs if an operation's hints would crash or route it wrongly."""
    broken = lint()
    if broken:
        lines = [
            f"  {finding.location()} {finding.problem}.\n    Fix: {finding.fix}"
            for finding in broken
        ]
        raise CommandError(
            "Nothing was migrated: these operations would fail, or run nowhere or on the "
            "wrong database:\n" + "\n".join(lines),
            returncode=2,
        )


def handle(out: Out, *, databases: list[str] | None, verbosity: int, **options: Any) -> None:
    aliases = chosen_databases(databases)
    if not options["skip_checks"]:
        # Database checks run in each worker (Django's migrate does them), where an
        # unreachable server fails that database alone. Some model checks still open
        # connections (Django 6 asks MySQL its version), so one server down must not
        # stop the rest here: each worker checks again before it migrates.
        try:
            out.command.check()
        except DatabaseError as error:
            out.warn(
                f"System checks could not finish ({first_line(error)}); "
                "each database's worker runs them again."
            )
    refuse_broken_hints()
    if options["plan"]:
        out.write("Would run, database by database:")
        plan_command.write_text(out, plan(aliases), verbosity)
        return
    if options["check"]:
        pending = [p for p in plan(aliases) if p.error or p.migrations]
        for database in pending:
            out.write(
                f"{database.alias}: {database.error or f'{len(database.migrations)} pending'}"
            )
        if pending:
            sys.exit(1)
        out.write("No pending migrations on " + ", ".join(aliases) + ".")
        return

    if options["resume"]:
        resume.finish_half_applied(out, aliases, verbosity)
    jobs = max(1, min(options["jobs"], len(aliases)))
    if verbosity >= 1:
        out.write(
            out.style.MIGRATE_HEADING(
                f"Migrating {len(aliases)} database(s), up to {jobs} at once:"
            )
        )
    try:
        outcomes = migrate_all(
            aliases,
            jobs=jobs,
            fake=options["fake"],
            fail_fast=options["fail_fast"],
            skip_checks=options["skip_checks"],
            verbosity=verbosity,
            report=progress(out, verbosity, width=max(len(alias) for alias in aliases)),
        )
    except RuntimeError as error:
        raise CommandError(str(error)) from error
    write_outcomes(out, outcomes, verbosity)
    failed = [outcome for outcome in outcomes if outcome.result is Result.FAILED]
    if failed:
        names = "; ".join(f"{outcome.alias} ({outcome.error})" for outcome in failed)
        others = [o.alias for o in outcomes if o.result in {Result.DONE, Result.UP_TO_DATE}]
        raise CommandError(
            f"Migrating failed on {names}. "
            + (f"Migrated: {', '.join(others)}. " if others else "")
            + "Fix the cause and run `manage.py fleet migrate` again: "
            "finished databases are skipped.",
            returncode=1,
        )


def progress(out: Out, verbosity: int, width: int) -> Callable[[Outcome, list[str]], None]:
    """A line as each database starts and ends, with the databases still running."""
    style = out.style
    styles = {
        Result.RUNNING: style.MIGRATE_LABEL,
        Result.DONE: style.SUCCESS,
        Result.UP_TO_DATE: style.SUCCESS,
        Result.FAILED: style.ERROR,
        Result.CANCELLED: style.WARNING,
    }

    def report(outcome: Outcome, running: list[str]) -> None:
        if verbosity < 1:
            return
        detail = {
            Result.RUNNING: f"{outcome.pending} pending",
            Result.DONE: f"{outcome.applied} applied in {outcome.seconds:.1f}s",
            Result.FAILED: outcome.error,
        }.get(outcome.result, "")
        state = f"{outcome.result:<10}"
        line = f"  {styles[outcome.result](state)} {outcome.alias:<{width}} {detail}"
        out.write(line + (f"  [running: {', '.join(running)}]" if running else ""))

    return report


def write_outcomes(out: Out, outcomes: list[Outcome], verbosity: int) -> None:
    """The workers' output where wanted, then one row per database."""
    for outcome in outcomes:
        if outcome.output.strip() and (verbosity >= 2 or outcome.result is Result.FAILED):
            out.write(out.style.MIGRATE_HEADING(f"\nOutput of {outcome.alias}:"))
            out.write("\n".join("  " + line for line in outcome.output.splitlines()))
    if verbosity < 1:
        return
    table = grid("database", "engine", "applied", "seconds", "result", right=("applied", "seconds"))
    for outcome in outcomes:
        table.add_row(
            outcome.alias,
            outcome.vendor,
            str(outcome.applied),
            f"{outcome.seconds:.1f}",
            outcome.result + (f": {outcome.error}" if outcome.error else ""),
        )
    out.write()
    out.table(table)
