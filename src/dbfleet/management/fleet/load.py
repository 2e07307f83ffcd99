"""``fleet load``: fixtures written to the databases their objects belong on."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from dbfleet.management.fleet.output import Out, add_verbosity_option
from dbfleet.moving.fixtures import load

NAME = "load"
HELP = "loaddata that follows the routes: each object written to its own database."
DESCRIPTION = (
    "Reads fixture files (json, jsonl, xml, yaml, by extension; fleet dump writes them, "
    "dumpdata too) and writes each object where it belongs: its model's route, its key's "
    "shard, every copy of a reference model. Everything inside one dbfleet.atomic over the "
    "project's databases: all or nothing. Objects are saved raw, as loaddata saves them "
    "(no save() of the model; signals get raw=True); sequences are set past the loaded ids."
)


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument("fixtures", nargs="+", metavar="FILE", help="Fixture files.")
    add_verbosity_option(parser)


def handle(out: Out, *, fixtures: list[str], verbosity: int, **options: Any) -> None:
    report = load(fixtures)
    if verbosity >= 1:
        for (model, alias), count in report.counts.items():
            out.write(f"  {model} into {alias}: {count:,}")
        out.write(f"Loaded {report.total:,} objects from {len(fixtures)} fixture(s).")
