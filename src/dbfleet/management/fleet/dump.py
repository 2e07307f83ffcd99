"""``fleet dump``: a fixture of models read from the databases they live on."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import CommandError, CommandParser

from dbfleet.management.fleet.output import Out, add_verbosity_option
from dbfleet.moving.fixtures import FORMATS, dump

NAME = "dump"
HELP = "dumpdata that follows the routes: each model read from its own database."
DESCRIPTION = (
    "Writes a Django fixture (json, jsonl, xml, yaml) of the models named "
    "(app_label.ModelName or app_label; every model if none), each read from the database "
    "it lives on: its route, every shard of a sharded model, the first copy of a reference "
    "model. Rows are read in batches of keys and written as they come (no save(), as "
    "dumpdata). Load it with fleet load."
)


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL", help="app_label.ModelName or app.")
    parser.add_argument(
        "--format", help="json, jsonl, xml or yaml (else the --output file's extension, or json)."
    )
    parser.add_argument("--indent", type=int, help="Indent the output by this many spaces.")
    parser.add_argument("-o", "--output", help="A file to write (else standard output).")
    add_verbosity_option(parser)


def handle(
    out: Out,
    *,
    models: list[str],
    format: str | None,
    indent: int | None,
    output: str | None,
    verbosity: int,
    **options: Any,
) -> None:
    known = FORMATS.get(os.path.splitext(output)[1]) if output else None
    if format and known and format != known:
        raise CommandError(
            f"--format {format} into {output!r}: fleet load reads a file by its extension "
            f"({known}). Name the file for its format, or leave --format out."
        )
    format = format or known or "json"
    if output is None:
        dump(models, out.stream, format, indent)
        return
    # Into a file beside it, renamed into place at the end: a dump that fails leaves the
    # file that was there (an earlier backup) as it was.
    partial = f"{output}.partial"
    try:
        with open(partial, "w", encoding="utf-8") as stream:
            report = dump(models, stream, format, indent)
        os.replace(partial, output)
    except OSError as error:
        raise CommandError(f"Cannot write {output!r}: {error.strerror}.") from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    if verbosity >= 1:
        for (model, alias), count in report.counts.items():
            out.write(f"  {model} from {alias}: {count:,}")
        out.write(f"Dumped {report.total:,} objects to {output}.")
