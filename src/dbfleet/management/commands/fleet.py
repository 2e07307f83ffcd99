"""``manage.py fleet``: see and operate every database of the project."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from typing import Any

from django.core.checks import run_checks
from django.core.management.base import BaseCommand, CommandParser
from django.db import connections
from rich import box
from rich.console import Console
from rich.table import Table

from dbfleet.conf import get_topology
from dbfleet.routing import routes


def render(table: Table, color: bool) -> str:
    """Render a rich table to text, wide enough not to wrap when not on a terminal."""
    width = shutil.get_terminal_size((200, 24)).columns if color else 200
    buffer = io.StringIO()
    console = Console(
        file=buffer, width=width, color_system="standard" if color else None, highlight=False
    )
    console.print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


class Command(BaseCommand):
    help = "Show and operate the project's databases. Subcommands: routes."
    # Configuration problems are shown by the subcommands themselves: `fleet routes`
    # is how one looks into a configuration that the checks reject.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(
            dest="subcommand", title="subcommands", required=True, metavar="{routes}"
        )
        routes_parser = subcommands.add_parser(
            "routes",
            help="Show where every model is read, written and migrated.",
            description="Show where every model is read, written and migrated, and why.",
        )
        routes_parser.add_argument(
            "--format", choices=("text", "json"), default="text", help="Output format."
        )

    def handle(self, *args: Any, **options: Any) -> None:
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
                route.read,
                route.write,
                ", ".join(route.migrate) or "-",
                route.decided_by,
                f"[bold red]{crossings}[/]" if crossings else "",
            )
        self.stdout.write(render(grid, color=not options.get("no_color") and self.stdout.isatty()))

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
