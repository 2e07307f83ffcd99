"""``manage.py fleet``: see and operate every database of the project."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import shutil
import sys
from typing import Any

from django.core.checks import run_checks
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connections
from rich import box
from rich.console import Console
from rich.table import Table

from dbfleet.conf import get_topology
from dbfleet.migrating.lint import lint
from dbfleet.migrating.plan import DatabasePlan, first_line, migratable_databases, plan
from dbfleet.migrating.runner import Outcome, migrate_all
from dbfleet.migrating.status import APPLIED, NOT_ROUTED, PENDING, status
from dbfleet.replicas import ReplicaHealth, replica_health
from dbfleet.routing import routes
from dbfleet.transactions.two_phase import find_in_doubt, participants, recover


def render(table: Table, color: bool) -> str:
    """Render a rich table to text, wide enough not to wrap when not on a terminal."""
    # Off a terminal (a file, a pipe, CI) nothing wraps: a person reading a log scrolls.
    width = shutil.get_terminal_size((200, 24)).columns if color else 10_000
    buffer = io.StringIO()
    console = Console(
        file=buffer, width=width, color_system="standard" if color else None, highlight=False
    )
    console.print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def add_verbosity_option(parser: CommandParser) -> None:
    """Accept ``-v N`` after the subcommand too, as ``migrate -v 0`` does."""
    parser.add_argument(
        "-v",
        "--verbosity",
        type=int,
        choices=(0, 1, 2, 3),
        default=argparse.SUPPRESS,
        help="Verbosity level; 0=minimal output, 1=normal output, 2=verbose output.",
    )


def add_format_option(parser: CommandParser) -> None:
    parser.add_argument("--format", choices=("text", "json"), default="text", help="Output format.")


def add_database_option(parser: CommandParser, help: str) -> None:
    parser.add_argument(
        "--database",
        action="append",
        dest="databases",
        choices=tuple(connections),
        metavar="ALIAS",
        help=help,
    )


class Command(BaseCommand):
    help = (
        "Show and operate the project's databases. "
        "Subcommands: routes, migrate, plan, status, recover."
    )
    # Configuration problems are shown by the subcommands themselves: `fleet routes`
    # is how one looks into a configuration that the checks reject.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(
            dest="subcommand",
            title="subcommands",
            required=True,
            metavar="{routes,migrate,plan,status,recover}",
        )
        routes_parser = subcommands.add_parser(
            "routes",
            help="Show where every model is read, written and migrated.",
            description="Show where every model is read, written and migrated, and why.",
        )
        add_format_option(routes_parser)
        add_verbosity_option(routes_parser)

        migrate_parser = subcommands.add_parser(
            "migrate",
            help="Migrate every database, in parallel.",
            description="Migrate every database that migrations are routed to (never replicas), "
            "each in its own worker process running Django's migrate, several at once.",
        )
        add_database_option(migrate_parser, "Migrate only this database (repeatable).")
        add_verbosity_option(migrate_parser)
        migrate_parser.add_argument(
            "--jobs", type=int, default=os.cpu_count() or 1, help="Databases migrated at once."
        )
        migrate_parser.add_argument(
            "--fail-fast", action="store_true", help="Stop every database when one fails."
        )
        migrate_parser.add_argument(
            "--check", action="store_true", help="Exit 1 if any database has pending migrations."
        )
        migrate_parser.add_argument(
            "--plan", action="store_true", help="Show what would run where, and stop."
        )
        migrate_parser.add_argument(
            "--fake", action="store_true", help="Record migrations as applied without running them."
        )
        migrate_parser.add_argument(
            "--noinput", "--no-input", action="store_false", dest="interactive",
            help="Never prompt (workers never prompt anyway).",
        )  # fmt: skip
        migrate_parser.add_argument(
            "--skip-checks", action="store_true", help="Skip system checks."
        )

        plan_parser = subcommands.add_parser(
            "plan",
            help="Show which migration operation runs on which database, and why.",
            description="For every database, each pending migration (every one with --all) "
            "and each of its operations: runs here, or skipped by routing, with the reason.",
        )
        add_database_option(plan_parser, "Plan only this database (repeatable).")
        plan_parser.add_argument("--all", action="store_true", help="Include applied migrations.")
        add_format_option(plan_parser)
        add_verbosity_option(plan_parser)

        status_parser = subcommands.add_parser(
            "status",
            help="Show migrations x databases, replica health and lag, in-doubt transactions.",
            description="A matrix of migrations x databases (applied, pending, not routed "
            "here), an audit of tables against the migration records and the routes, each "
            "replica's reachability and lag, and the in-doubt two-phase transactions.",
        )
        add_database_option(status_parser, "Only this database (repeatable).")
        status_parser.add_argument(
            "--all", action="store_true", help="List every migration, not only pending ones."
        )
        add_format_option(status_parser)
        add_verbosity_option(status_parser)

        recover_parser = subcommands.add_parser(
            "recover",
            help="Settle in-doubt two-phase transactions on every database.",
            description="Find the two-phase transactions left prepared on every PostgreSQL and "
            "MariaDB database and settle each: commit where the decision to commit was recorded, "
            "roll back where it was not and the transaction is older than the grace period.",
        )
        recover_parser.add_argument(
            "--grace",
            type=float,
            metavar="SECONDS",
            help='Roll back undecided transactions older than this (default: DBFLEET["RECOVERY_'
            'GRACE"], 60). Younger ones may still be committing.',
        )
        recover_parser.add_argument(
            "--dry-run", action="store_true", help="Say what would be done, and do nothing."
        )
        add_format_option(recover_parser)
        add_verbosity_option(recover_parser)

    def handle(self, *args: Any, **options: Any) -> None:
        self.use_color = options["force_color"] or (
            self.stdout.isatty() and not options["no_color"]
        )
        getattr(self, f"handle_{options['subcommand']}")(**options)

    def handle_routes(self, *, format: str, **options: Any) -> None:
        table = routes()
        if format == "json":
            document = {
                "databases": self.databases(),
                "models": [dataclasses.asdict(route) for route in table],
            }
            self.stdout.write(json.dumps(document, indent=2))
            return

        problems = [message for message in run_checks(tags=["dbfleet"]) if message.is_serious()]
        if problems:
            self.stderr.write(
                f"{len(problems)} configuration error(s): run `manage.py check --tag dbfleet`. "
                "The table shows what Django would do now."
            )
        if options["verbosity"] >= 1:
            for database in self.databases():
                replicas = ", ".join(database["replicas"])
                line = f"{database['alias']} ({database['vendor']})"
                self.stdout.write(line + (f", replicas: {replicas}" if replicas else ""))
            self.stdout.write("")
        grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for column in ("model", "read", "write", "migrate", "decided by", "crosses groups"):
            grid.add_column(column)
        for route in table:
            crossings = ", ".join(f"{c.field} -> {c.to} ({c.database})" for c in route.crossings)
            grid.add_row(
                route.model,
                ", ".join(route.read_replicas) or route.read,
                route.write,
                ", ".join(route.migrate) or "-",
                route.decided_by,
                f"[bold red]{crossings}[/]" if crossings else "",
            )
        self.stdout.write(render(grid, color=self.use_color))

    def databases(self) -> list[dict[str, Any]]:
        """Each primary database with its engine and replicas."""
        topology = get_topology()
        return [
            {
                "alias": group.primary,
                "vendor": connections[group.primary].vendor,
                "replicas": [replica.alias for replica in group.replicas],
            }
            for group in topology.groups.values()
        ]

    def chosen_databases(self, databases: list[str] | None) -> list[str]:
        """The ``--database`` choices (checked), else every migratable database."""
        migratable = migratable_databases()
        for alias in databases or ():
            if alias not in migratable:
                raise CommandError(
                    f"{alias!r} is never migrated: it is a replica or a test mirror. "
                    f"Migrate its primary instead; migratable: {', '.join(migratable)}."
                )
        return list(dict.fromkeys(databases)) if databases else migratable

    def refuse_broken_hints(self) -> None:
        """Stop before anything runs if an operation's hints would crash or route nowhere."""
        broken = [finding for finding in lint() if finding.kind != "unhinted"]
        if broken:
            lines = [
                f"  {finding.location()} {finding.problem}.\n    Fix: {finding.fix}"
                for finding in broken
            ]
            raise CommandError(
                "Nothing was migrated: these operations would fail or run nowhere:\n"
                + "\n".join(lines),
                returncode=2,
            )

    def handle_migrate(self, **options: Any) -> None:
        aliases = self.chosen_databases(options["databases"])
        if not options["skip_checks"]:
            # Database checks run in each worker (Django's migrate does them), where an
            # unreachable server fails that database alone. Some model checks still open
            # connections (Django 6 asks MySQL its version), so one server down must not
            # stop the rest here: each worker checks again before it migrates.
            try:
                self.check()
            except DatabaseError as error:
                self.stderr.write(
                    f"System checks could not finish ({first_line(error)}); "
                    "each database's worker runs them again."
                )
        self.refuse_broken_hints()
        if options["plan"]:
            self.stdout.write("Would run, database by database:")
            self.write_plan(plan(aliases), options["verbosity"])
            return
        if options["check"]:
            pending = [p for p in plan(aliases) if p.error or p.migrations]
            for database in pending:
                self.stdout.write(
                    f"{database.alias}: {database.error or f'{len(database.migrations)} pending'}"
                )
            if pending:
                sys.exit(1)
            self.stdout.write("No pending migrations on " + ", ".join(aliases) + ".")
            return

        verbosity = options["verbosity"]
        jobs = max(1, min(options["jobs"], len(aliases)))

        def report(outcome: Outcome, running: list[str]) -> None:
            if verbosity < 1:
                return
            style = {
                "running": self.style.MIGRATE_LABEL,
                "done": self.style.SUCCESS,
                "up to date": self.style.SUCCESS,
                "failed": self.style.ERROR,
                "cancelled": self.style.WARNING,
            }[outcome.result]
            detail = {
                "running": f"{outcome.pending} pending",
                "done": f"{outcome.applied} applied in {outcome.seconds:.1f}s",
                "failed": outcome.error,
            }.get(outcome.result, "")
            state = f"{outcome.result:<10}"
            line = f"  {style(state)} {outcome.alias:<{width}} {detail}"
            self.stdout.write(line + (f"  [running: {', '.join(running)}]" if running else ""))

        width = max(len(alias) for alias in aliases)
        if verbosity >= 1:
            self.stdout.write(
                self.style.MIGRATE_HEADING(
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
                report=report,
            )
        except RuntimeError as error:
            raise CommandError(str(error)) from error

        for outcome in outcomes:
            if outcome.output.strip() and (verbosity >= 2 or outcome.result == "failed"):
                self.stdout.write(self.style.MIGRATE_HEADING(f"\nOutput of {outcome.alias}:"))
                self.stdout.write("\n".join("  " + line for line in outcome.output.splitlines()))
        if verbosity >= 1:
            grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
            for column in ("database", "engine", "applied", "seconds", "result"):
                grid.add_column(
                    column, justify="right" if column in {"applied", "seconds"} else "left"
                )
            for outcome in outcomes:
                grid.add_row(
                    outcome.alias,
                    outcome.vendor,
                    str(outcome.applied),
                    f"{outcome.seconds:.1f}",
                    outcome.result + (f": {outcome.error}" if outcome.error else ""),
                )
            self.stdout.write("")
            self.stdout.write(render(grid, color=self.use_color))
        failed = [outcome for outcome in outcomes if outcome.result == "failed"]
        if failed:
            names = "; ".join(f"{outcome.alias} ({outcome.error})" for outcome in failed)
            others = [o.alias for o in outcomes if o.result in {"done", "up to date"}]
            raise CommandError(
                f"Migrating failed on {names}. "
                + (f"Migrated: {', '.join(others)}. " if others else "")
                + "Fix the cause and run `manage.py fleet migrate` again: "
                "finished databases are skipped.",
                returncode=1,
            )

    def handle_plan(self, *, format: str, **options: Any) -> None:
        plans = plan(self.chosen_databases(options["databases"]), include_applied=options["all"])
        if format == "json":
            self.stdout.write(json.dumps([dataclasses.asdict(p) for p in plans], indent=2))
            return
        self.write_plan(plans, options["verbosity"])

    def write_plan(self, plans: list[DatabasePlan], verbosity: int = 1) -> None:
        for database in plans:
            heading = f"{database.alias} ({database.vendor})"
            if database.error:
                self.stdout.write(self.style.ERROR(f"{heading}: unreachable: {database.error}"))
                continue
            if not database.migrations:
                self.stdout.write(self.style.MIGRATE_HEADING(heading) + ": up to date")
                continue
            pending = f"{database.pending} pending" if database.pending else "up to date"
            self.stdout.write(self.style.MIGRATE_HEADING(heading) + f": {pending}")
            for migration in database.migrations:
                mark = "applied" if migration.applied else "pending"
                label = f"  {self.style.MIGRATE_LABEL(migration.label)} ({mark})"
                idle = not any(step.runs or step.finding for step in migration.operations)
                if idle and verbosity < 2:
                    self.stdout.write(f"{label}: nothing runs here")
                    continue
                self.stdout.write(label)
                for step in migration.operations:
                    verdict = (
                        self.style.SUCCESS("runs here")
                        if step.runs
                        else self.style.WARNING("skipped  ")
                    )
                    description = shorten(step.description, 34)
                    self.stdout.write(
                        f"    {step.position:>2}. {description:<34} {verdict}  {step.reason}"
                    )
                    if step.finding:
                        self.stdout.write(
                            self.style.ERROR(f"        ! {step.finding.problem}")
                            + f"\n        fix: {step.finding.fix}"
                        )

    def handle_status(self, *, format: str, **options: Any) -> None:
        result = status(self.chosen_databases(options["databases"]))
        # Every database that can hold prepared transactions, migrated here or not.
        capable = [
            alias
            for alias in participants()
            if alias not in result.errors
            and (not options["databases"] or alias in options["databases"])
        ]
        found, unreachable = find_in_doubt(capable)
        in_doubt = {
            alias: sum(prepared.alias == alias for prepared in found)
            for alias in capable
            if alias not in unreachable
        }
        replicas = replica_health(options["databases"] or ())
        if format == "json":
            document = {
                **dataclasses.asdict(result),
                "in_doubt": in_doubt,
                "replicas": [
                    {
                        "alias": health.alias,
                        "primary": health.primary,
                        "reachable": health.reachable,
                        "lag": health.lag,
                        "problem": health.problem,
                    }
                    for health in replicas
                ],
            }
            self.stdout.write(json.dumps(document, indent=2))
            return
        for alias in result.databases:
            if alias in result.errors:
                self.stdout.write(self.style.ERROR(f"{alias}: unreachable: {result.errors[alias]}"))
                continue
            counts = ", ".join(
                f"{result.count(alias, state)} {state}" for state in (APPLIED, PENDING, NOT_ROUTED)
            )
            if alias in in_doubt:
                counts += ", " + self.in_doubt_summary(in_doubt[alias])
            self.stdout.write(f"{self.style.MIGRATE_HEADING(alias)}: {counts}")
        for alias in capable:
            if alias not in result.databases:
                summary = (
                    self.style.ERROR(f"unreachable: {unreachable[alias]}")
                    if alias in unreachable
                    else self.in_doubt_summary(in_doubt[alias])
                )
                self.stdout.write(f"{self.style.MIGRATE_HEADING(alias)}: {summary}")
        for health in replicas:
            self.stdout.write(
                f"{self.style.MIGRATE_HEADING(health.alias)} (replica of {health.primary!r}): "
                + self.replica_summary(health)
            )
        reachable = [alias for alias in result.databases if alias not in result.errors]
        rows = [
            (label, states)
            for label, states in result.migrations.items()
            if options["all"] or PENDING in states.values()
        ]
        if rows:
            symbols = {APPLIED: "applied", PENDING: "[bold]pending[/]", NOT_ROUTED: "-"}
            grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
            grid.add_column("migration")
            for alias in reachable:
                grid.add_column(alias)
            for label, states in rows:
                grid.add_row(label, *(symbols[states[alias]] for alias in reachable))
            self.stdout.write("")
            self.stdout.write(render(grid, color=self.use_color))
            self.stdout.write("(-: not routed here; migrate still records it)")
        if result.audit:
            self.stdout.write(
                self.style.ERROR(f"\n{len(result.audit)} table(s) disagree with the records:")
            )
            for item in result.audit:
                self.stdout.write(f"  {item.database}: {item.model}: {item.problem}")
        else:
            self.stdout.write("\nAudit: every table is where its migrations and routes say.")

    def replica_summary(self, health: ReplicaHealth) -> str:
        if health.problem:
            return self.style.ERROR(
                f"{health.problem}; reads go to the other replicas or the primary"
            )
        return f"reachable, lag {health.lag:.1f} s"

    def in_doubt_summary(self, count: int) -> str:
        if not count:
            return "0 in doubt"
        return self.style.ERROR(f"{count} in doubt: run `fleet recover`")

    def handle_recover(
        self, *, grace: float | None, dry_run: bool, format: str, **options: Any
    ) -> None:
        if grace is not None and not 0 <= grace < float("inf"):
            raise CommandError(f"--grace must be a number of seconds >= 0, not {grace:g}.")
        try:
            result = recover(grace, dry_run=dry_run)
        except DatabaseError as error:
            raise CommandError(
                f"Could not read the decision log ({error}). It lives in the dbfleet_decision "
                "table on DEFAULT_DATABASE: run `manage.py fleet migrate` to create it, and "
                "check that the database is reachable.",
                returncode=1,
            ) from error
        failed = [outcome for outcome in result.outcomes if outcome.action == "failed"]
        if format == "json":
            document = {
                "outcomes": [
                    {
                        "database": outcome.prepared.alias,
                        "transaction": outcome.prepared.transaction_id,
                        "age_seconds": round(outcome.prepared.age, 1),
                        "action": outcome.action,
                        "detail": outcome.detail,
                    }
                    for outcome in result.outcomes
                ],
                "unreachable": result.unreachable,
                "purged_decisions": result.purged,
            }
            self.stdout.write(json.dumps(document, indent=2))
        else:
            self.write_recovery(result, options["verbosity"])
        if failed or result.unreachable:
            raise CommandError(
                "Some transactions could not be settled (see above); fix the connection and "
                "run `fleet recover` again. Nothing was settled differently on two databases.",
                returncode=1,
            )

    def write_recovery(self, result: Any, verbosity: int) -> None:
        for alias, error in result.unreachable.items():
            self.stdout.write(self.style.ERROR(f"{alias}: unreachable: {first_line(error)}"))
        if not result.outcomes:
            if verbosity:
                self.stdout.write("No in-doubt transactions.")
            return
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for column in ("database", "transaction", "age", "action", "why"):
            table.add_column(column)
        for outcome in result.outcomes:
            age = f"{outcome.prepared.age:.0f} s"
            table.add_row(
                outcome.prepared.alias,
                outcome.prepared.transaction_id,
                age,
                outcome.action,
                outcome.detail,
            )
        self.stdout.write(render(table, color=self.use_color))
        counts: dict[str, int] = {}
        for outcome in result.outcomes:
            counts[outcome.action] = counts.get(outcome.action, 0) + 1
        summary = ", ".join(f"{count} {action}" for action, count in counts.items())
        self.stdout.write(f"\n{summary}.")
        if counts.get("waiting"):
            self.stdout.write(
                "Waiting transactions may still be committing; run `fleet recover` again "
                "after the grace period."
            )
        if result.purged and verbosity:
            self.stdout.write(f"Purged {result.purged} settled decision(s) from the log.")
