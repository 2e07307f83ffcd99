"""``fleet recover``: settle the two-phase transactions left in doubt on every database."""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError

from dbfleet.management.fleet.output import Out, add_format_option, add_verbosity_option, grid
from dbfleet.reports import RecoveryReport, recovery_report
from dbfleet.transactions.two_phase import Action

NAME = "recover"
HELP = "Settle in-doubt two-phase transactions on every database."
DESCRIPTION = (
    "Find the two-phase transactions left prepared on every PostgreSQL and "
    "MariaDB database and settle each: commit where the decision to commit was recorded, "
    "roll back where it was not and the transaction is older than the grace period."
)


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help='Roll back undecided transactions older than this (default: DBFLEET["RECOVERY_'
        'GRACE"], 60). Younger ones may still be committing.',
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="Say what would be done, and do nothing."
    )
    add_format_option(parser)
    add_verbosity_option(parser)


def handle(
    out: Out, *, grace: float | None, dry_run: bool, format: str, verbosity: int, **options: Any
) -> None:
    if grace is not None and not 0 <= grace < float("inf"):
        raise CommandError(f"--grace must be a number of seconds >= 0, not {grace:g}.")
    try:
        report = recovery_report(grace, dry_run=dry_run)
    except DatabaseError as error:
        raise CommandError(
            f"Could not read the decision log ({error}). It lives in the dbfleet_decision "
            "table on DEFAULT_DATABASE: run `manage.py fleet migrate` to create it, and "
            "check that the database is reachable.",
            returncode=1,
        ) from error
    if format == "json":
        out.json(report)
    else:
        write_text(out, report, verbosity)
    if not report.complete:
        raise CommandError(
            "Some transactions could not be settled (see above); fix the connection and "
            "run `fleet recover` again. Nothing was settled differently on two databases.",
            returncode=1,
        )


def write_text(out: Out, report: RecoveryReport, verbosity: int) -> None:
    for alias, error in report.unreachable.items():
        out.write(out.style.ERROR(f"{alias}: unreachable: {error.splitlines()[0]}"))
    if not report.outcomes:
        if verbosity:
            out.write("No in-doubt transactions.")
        return
    table = grid("database", "transaction", "age", "action", "why")
    for outcome in report.outcomes:
        table.add_row(
            outcome.database,
            outcome.transaction,
            f"{outcome.age_seconds:.0f} s",
            outcome.action,
            outcome.detail,
        )
    out.table(table)
    counts = Counter(outcome.action for outcome in report.outcomes)
    summary = ", ".join(f"{count} {action}" for action, count in counts.items())
    out.write(f"\n{summary}.")
    if counts.get(Action.WAITING):
        out.write(
            "Waiting transactions may still be committing; run `fleet recover` again "
            "after the grace period."
        )
    if report.purged_decisions and verbosity:
        out.write(f"Purged {report.purged_decisions} settled decision(s) from the log.")
