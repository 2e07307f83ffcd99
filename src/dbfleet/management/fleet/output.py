"""What every ``fleet`` subcommand shares: its common options and the ways it writes."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import IO, Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.management.color import Style
from django.db import connections
from rich import box
from rich.console import Console
from rich.table import Table

from dbfleet.migrating.plan import migratable_databases, primary_databases


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: dataclasses as objects (fields in order), enums as values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: jsonable(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {jsonable(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value


def to_json(report: Any) -> str:
    """A report (a dataclass, or a list of them) as the JSON document ``--format json`` prints."""
    return json.dumps(jsonable(report), indent=2)


def grid(*columns: str, right: tuple[str, ...] = ()) -> Table:
    """An empty table in the house style, with ``right`` columns aligned right."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left")
    return table


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


@dataclass
class Out:
    """Where a subcommand writes: the command's stdout and stderr; tables in colour or not."""

    command: BaseCommand
    color: bool

    @property
    def style(self) -> Style:
        return self.command.style

    @property
    def stream(self) -> IO[str]:
        """The file under the command's stdout, for output that draws (a live display)."""
        stream: IO[str] = getattr(self.command.stdout, "_out", sys.stdout)
        return stream

    def isatty(self) -> bool:
        return self.command.stdout.isatty()

    def write(self, text: str = "") -> None:
        self.command.stdout.write(text)

    def warn(self, text: str) -> None:
        self.command.stderr.write(text)

    def table(self, table: Table) -> None:
        self.write(render(table, color=self.color))

    def json(self, report: Any) -> None:
        self.write(to_json(report))


def positive(text: str) -> int:
    """An option's whole number of at least 1 (argparse says so otherwise)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


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


def add_django_options(parser: CommandParser) -> None:
    """Django's options of every command, accepted after the subcommand as before it.

    ``default=SUPPRESS``: a value given before the subcommand is not reset by the
    subcommand's parser. ``--settings`` and ``--pythonpath`` are applied by
    ``manage.py`` wherever they are; here they only need to be accepted.
    Options a subcommand defines itself are left as it made them.
    """
    options: list[tuple[tuple[str, ...], dict[str, Any]]] = [
        (("--settings",), {"help": "A settings module (else DJANGO_SETTINGS_MODULE)."}),
        (("--pythonpath",), {"help": 'A directory to add to the import path, "/home/project".'}),
        (("--traceback",), {"action": "store_true", "help": "Show a traceback on errors."}),
        (("--no-color",), {"action": "store_true", "help": "Don't colorize the output."}),
        (("--force-color",), {"action": "store_true", "help": "Colorize the output always."}),
    ]
    for flags, settings in options:
        with contextlib.suppress(argparse.ArgumentError):  # The subcommand has it.
            parser.add_argument(*flags, default=argparse.SUPPRESS, **settings)
    with contextlib.suppress(argparse.ArgumentError):
        add_verbosity_option(parser)


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


def chosen_databases(databases: list[str] | None) -> list[str]:
    """The ``--database`` choices (checked), else every migratable database."""
    migratable = migratable_databases()
    for alias in databases or ():
        if alias in migratable:
            continue
        if alias in primary_databases():
            raise CommandError(
                f"Nothing is routed to {alias!r}, so migrating it would only record every "
                "migration as applied there. Route an app or a model to it first (`fleet "
                f"move` makes the tables of the models it moves there); migratable: "
                f"{', '.join(migratable)}."
            )
        raise CommandError(
            f"{alias!r} is never migrated: it is a replica or a test mirror. "
            f"Migrate its primary instead; migratable: {', '.join(migratable)}."
        )
    return list(dict.fromkeys(databases)) if databases else migratable
