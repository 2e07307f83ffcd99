"""``fleet routes``: where every model is read, written and migrated, and why."""

from __future__ import annotations

from typing import Any

from django.core.checks import run_checks
from django.core.management.base import CommandParser

from dbfleet.management.fleet.output import (
    Out,
    add_format_option,
    add_verbosity_option,
    grid,
)
from dbfleet.reports import RoutesReport, routes_report
from dbfleet.routing import Route

NAME = "routes"
HELP = "Show where every model is read, written and migrated."
DESCRIPTION = "Show where every model is read, written and migrated, and why."


def add_arguments(parser: CommandParser) -> None:
    add_format_option(parser)
    add_verbosity_option(parser)


def handle(out: Out, *, format: str, verbosity: int, **options: Any) -> None:
    report = routes_report()
    if format == "json":
        out.json(report)
        return
    problems = [message for message in run_checks(tags=["dbfleet"]) if message.is_serious()]
    if problems:
        out.warn(
            f"{len(problems)} configuration error(s): run `manage.py check --tag dbfleet`. "
            "The table shows what Django would do now."
        )
    write_text(out, report, verbosity)


def write_text(out: Out, report: RoutesReport, verbosity: int) -> None:
    if verbosity >= 1:
        for database in report.databases:
            replicas = ", ".join(database.replicas)
            line = f"{database.alias} ({database.vendor})"
            out.write(line + (f", replicas: {replicas}" if replicas else ""))
        out.write()
    table = grid("model", "read", "write", "migrate", "decided by", "crosses groups")
    for route in report.models:
        crossings = ", ".join(f"{c.field} -> {c.to} ({c.database})" for c in route.crossings)
        read, write, decided_by = placed(route)
        table.add_row(
            route.model,
            read,
            write,
            ", ".join(route.migrate) or "-",
            decided_by,
            f"[bold red]{crossings}[/]" if crossings else "",
        )
    out.table(table)


def placed(route: Route) -> tuple[str, str, str]:
    """The read, write and "decided by" cells of a route.

    A sharded model's rows are read and written on the database of their key (a
    query without it reads every one); a reference model is read from the first
    copy and written to every copy.
    """
    if route.shard is None:
        return ", ".join(route.read_replicas) or route.read, route.write, route.decided_by
    databases = ", ".join(route.shard.databases)
    if route.shard.key is None:
        return route.read, databases, f"{route.decided_by}, reference (a copy on each)"
    return databases, databases, f"{route.decided_by}, by key {route.shard.key}"
