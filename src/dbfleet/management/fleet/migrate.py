"""``fleet migrate``: every database migrations are routed to, in parallel worker processes."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from dbfleet.management.fleet import plan as plan_command
from dbfleet.management.fleet import resume
from dbfleet.management.fleet.output import (
    Out,
    add_database_option,
    add_verbosity_option,
    chosen_databases,
    grid,
    shorten,
)
from dbfleet.migrating.lint import lint
from dbfleet.migrating.lock import DEFAULT_TIMEOUT, LOCKED_EXIT
from dbfleet.migrating.plan import first_line, plan
from dbfleet.migrating.runner import Interrupted, Outcome, Result, Watcher, migrate_all

NAME = "migrate"
HELP = "Migrate every database, in parallel."
DESCRIPTION = (
    "Migrate every database that migrations are routed to (never replicas), "
    "each in its own worker process running Django's migrate, several at once."
)
#: The widest error the summary table shows; the full text follows the table.
ERROR_WIDTH = 60
#: What a final result looks like on a terminal.
STYLES = {
    Result.WAITING: "dim",
    Result.RUNNING: "cyan",
    Result.DONE: "green",
    Result.UP_TO_DATE: "green",
    Result.FAILED: "red",
    Result.LOCKED: "red",
    Result.INTERRUPTED: "red",
    Result.CANCELLED: "yellow",
}


def add_arguments(parser: CommandParser) -> None:
    add_database_option(parser, "Migrate only this database (repeatable).")
    add_verbosity_option(parser)
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="Databases migrated at once, 1 or more (default: the number of CPUs).",
    )
    parser.add_argument(
        "--fail-fast",
        action="store_true",
        help="After a failure, start no other database; those running finish.",
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="How long each database waits for another migrator to finish "
        f"(default {DEFAULT_TIMEOUT:g}; 0: fail at once).",
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


def check_options(jobs: int, lock_timeout: float) -> None:
    """Refuse values the run cannot use, before anything runs."""
    if jobs < 1:
        raise CommandError(
            f"--jobs {jobs}: it is how many databases are migrated at once, so 1 or more "
            "(leave it out for one per CPU).",
            returncode=2,
        )
    if not lock_timeout >= 0:  # negative, or NaN
        raise CommandError(
            f"--lock-timeout {lock_timeout:g}: give 0 (fail at once when another migrator "
            f"holds a database) or more seconds (default {DEFAULT_TIMEOUT:g}).",
            returncode=2,
        )


def handle(out: Out, **options: Any) -> None:
    try:
        migrate(out, **options)
    except KeyboardInterrupt:  # Ctrl-C before any worker started (or after all ended).
        raise CommandError(
            "Interrupted by SIGINT (Ctrl-C) while no worker ran: nothing is being migrated. "
            "Run `manage.py fleet migrate` again to finish.",
            returncode=128 + signal.SIGINT,
        ) from None


def migrate(out: Out, *, databases: list[str] | None, verbosity: int, **options: Any) -> None:
    """Check, then plan or migrate every chosen database, and say how it went."""
    check_options(options["jobs"], options["lock_timeout"])
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
        resume.finish_half_applied(out, aliases, verbosity, options["lock_timeout"])
    jobs = min(options["jobs"], len(aliases))
    if verbosity >= 1:
        out.write(
            out.style.MIGRATE_HEADING(
                f"Migrating {len(aliases)} database(s), up to {jobs} at once:"
            )
        )
    watcher = watcher_for(out, aliases, verbosity)
    try:
        with watcher:
            outcomes = migrate_all(
                aliases,
                jobs=jobs,
                fake=options["fake"],
                fail_fast=options["fail_fast"],
                skip_checks=options["skip_checks"],
                verbosity=verbosity,
                lock_timeout=options["lock_timeout"],
                watcher=watcher,
            )
    except RuntimeError as error:
        raise CommandError(str(error)) from error
    except Interrupted as interrupted:
        write_outcomes(out, interrupted.outcomes, verbosity)
        raise CommandError(
            interruption_report(interrupted), returncode=128 + interrupted.signum
        ) from None
    write_outcomes(out, outcomes, verbosity)
    failed = [o for o in outcomes if o.result in {Result.FAILED, Result.LOCKED}]
    if failed:
        names = "; ".join(f"{outcome.alias} ({outcome.error})" for outcome in failed)
        others = [o.alias for o in outcomes if o.result in {Result.DONE, Result.UP_TO_DATE}]
        locked = all(outcome.result is Result.LOCKED for outcome in failed)
        raise CommandError(
            f"Migrating failed on {names}. "
            + (f"Migrated: {', '.join(others)}. " if others else "")
            + "Fix the cause and run `manage.py fleet migrate` again: "
            "finished databases are skipped.",
            # Only locked out: try again later (EX_TEMPFAIL), as a lone migrate would say.
            returncode=LOCKED_EXIT if locked else 1,
        )


def interruption_report(interrupted: Interrupted) -> str:
    """Which databases were interrupted, and in what state each is."""
    name = signal.Signals(interrupted.signum).name
    lines = [f"Interrupted by {name}{' (Ctrl-C)' * (name == 'SIGINT')}: every worker is stopped."]
    for outcome in interrupted.outcomes:
        lines.append(f"  {outcome.alias}: {database_state(outcome)}")
    if any(outcome.may_be_half_applied for outcome in interrupted.outcomes):
        lines.append(
            "A migration stopped half-way on an engine that commits DDL at once (MariaDB/"
            "MySQL) keeps the changes it made, unrecorded: `manage.py fleet status` shows "
            "them before you run again."
        )
    lines.append("Run `manage.py fleet migrate` again to finish: finished databases are skipped.")
    return "\n".join(lines)


def database_state(outcome: Outcome) -> str:
    """One database's state after an interrupted run, in words."""
    if outcome.result is Result.INTERRUPTED:
        before = f"{outcome.applied} of {outcome.pending} applied"
        if not outcome.current:
            return f"interrupted before a migration started ({before})."
        state = f"interrupted while applying {outcome.current} ({before} before it); "
        if outcome.may_be_half_applied:
            return state + (
                f"{outcome.current} may be half-applied: its engine ({outcome.vendor}) "
                "commits DDL at once (or the migration is not atomic), and it is not recorded."
            )
        return state + f"{outcome.current} was rolled back: nothing of it stays."
    if outcome.result is Result.DONE:
        return f"done ({outcome.applied} applied)."
    if outcome.result is Result.CANCELLED:
        return "not started."
    return f"{outcome.result}" + (f": {outcome.error}" if outcome.error else ".")


class LineWatcher(Watcher):
    """Plain lines (a log, CI): one as each database starts, waits for the lock, and ends."""

    def __init__(self, out: Out, width: int, verbosity: int) -> None:
        self.out, self.width, self.verbosity = out, width, verbosity
        style = out.style
        self.styles = {
            Result.RUNNING: style.MIGRATE_LABEL,
            Result.DONE: style.SUCCESS,
            Result.UP_TO_DATE: style.SUCCESS,
            Result.FAILED: style.ERROR,
            Result.LOCKED: style.ERROR,
            Result.INTERRUPTED: style.ERROR,
            Result.CANCELLED: style.WARNING,
            Result.WAITING: style.WARNING,
        }

    def __enter__(self) -> LineWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def line(self, result: Result, outcome: Outcome, detail: str, running: list[str]) -> None:
        if self.verbosity < 1:
            return
        state = self.styles[result](f"{result:<10}")
        line = f"  {state} {outcome.alias:<{self.width}} {detail}"
        self.out.write(line + (f"  [running: {', '.join(running)}]" if running else ""))

    def changed(self, outcome: Outcome, running: list[str]) -> None:
        detail = {
            Result.RUNNING: f"{outcome.pending} pending",
            Result.DONE: f"{outcome.applied} applied in {outcome.seconds:.1f}s",
            Result.FAILED: outcome.error,
            Result.LOCKED: outcome.error,
            Result.INTERRUPTED: f"in {outcome.current}" if outcome.current else "",
        }.get(outcome.result, "")
        self.line(outcome.result, outcome, detail, running)

    def progressed(self, outcome: Outcome) -> None:
        if outcome.waiting_for:
            detail = f"for the migration lock, held by {outcome.waiting_for}"
            self.line(Result.WAITING, outcome, detail, [])

    def output(self, outcome: Outcome, line: str) -> None:
        if self.verbosity >= 2:
            self.out.write(f"  {outcome.alias:<{self.width}} | {line}")


class LiveWatcher(LineWatcher):
    """On a terminal: a progress bar per database, with the migration it is applying."""

    def __init__(self, out: Out, aliases: list[str], width: int, verbosity: int) -> None:
        super().__init__(out, width, verbosity)
        console = Console(
            file=out.stream,
            force_terminal=True,
            color_system="standard" if out.color else None,
            no_color=not out.color,
            highlight=False,
        )
        self.progress = Progress(
            TextColumn("  {task.fields[state]}"),
            TextColumn(f"{{task.description:<{width}}}", markup=False),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
            console=console,
            refresh_per_second=8,
        )
        self.tasks: dict[str, TaskID] = {
            alias: self.progress.add_task(
                alias, total=None, start=False, state=self.state(Result.WAITING), detail=""
            )
            for alias in aliases
        }

    def __enter__(self) -> LiveWatcher:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    @staticmethod
    def state(result: Result) -> str:
        return f"[{STYLES[result]}]{result:<11}[/]"

    def changed(self, outcome: Outcome, running: list[str]) -> None:
        task = self.tasks[outcome.alias]
        final = outcome.result not in {Result.WAITING, Result.RUNNING}
        detail = outcome.error if outcome.error else ""
        if outcome.result is Result.RUNNING:
            self.progress.start_task(task)
        if outcome.result is Result.INTERRUPTED and outcome.current:
            detail = f"in {outcome.current}"
        self.progress.update(
            task,
            total=outcome.pending or (1 if final else None),
            completed=(outcome.applied if outcome.pending else 1) if final else outcome.progress,
            state=self.state(outcome.result),
            detail=escape(shorten(detail, ERROR_WIDTH)),
        )
        if final:
            self.progress.stop_task(task)

    def progressed(self, outcome: Outcome) -> None:
        if outcome.waiting_for:
            detail = f"waiting for the lock, held by {outcome.waiting_for}"
        else:
            detail = f"applying {outcome.current}" if outcome.current else ""
        self.progress.update(
            self.tasks[outcome.alias],
            completed=outcome.progress,
            detail=escape(shorten(detail, 2 * ERROR_WIDTH)),
        )

    def output(self, outcome: Outcome, line: str) -> None:
        if self.verbosity >= 2:
            self.progress.console.print(
                f"  {outcome.alias:<{self.width}} | {line}", markup=False, highlight=False
            )


def watcher_for(out: Out, aliases: list[str], verbosity: int) -> LineWatcher:
    """A live display on a terminal, plain lines elsewhere, nothing at ``-v 0``."""
    width = max(len(alias) for alias in aliases)
    if verbosity >= 1 and out.isatty():
        return LiveWatcher(out, aliases, width, verbosity)
    return LineWatcher(out, width, verbosity)


def write_outcomes(out: Out, outcomes: list[Outcome], verbosity: int) -> None:
    """Output not yet shown where wanted, one row per database, then errors in full."""
    if verbosity < 2:  # From -v 2 it was shown as it came.
        for outcome in outcomes:
            # A locked or interrupted database is described in full; its output only repeats it.
            failed = outcome.result is Result.FAILED
            if outcome.output.strip() and failed:
                out.write(out.style.MIGRATE_HEADING(f"\nOutput of {outcome.alias}:"))
                out.write("\n".join("  " + line for line in outcome.output.splitlines()))
    if verbosity < 1:
        return
    table = grid("database", "engine", "applied", "seconds", "result", right=("applied", "seconds"))
    cut = []
    for outcome in outcomes:
        error = shorten(outcome.error, ERROR_WIDTH)
        if error != outcome.error:
            cut.append(outcome)
        table.add_row(
            escape(outcome.alias),
            outcome.vendor,
            str(outcome.applied),
            f"{outcome.seconds:.1f}",
            escape(outcome.result + (f": {error}" if error else "")),
        )
    out.write()
    out.table(table)
    if cut:
        out.write("\nErrors in full:")
        for outcome in cut:
            out.write(f"  {outcome.alias}: {outcome.error}")
