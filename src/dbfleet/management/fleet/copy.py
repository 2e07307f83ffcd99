"""``fleet copy``: copy models' rows to another database, in key order, resumable."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.management.base import CommandParser
from django.db import connections
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from dbfleet.management.fleet.output import (
    Out,
    add_format_option,
    add_verbosity_option,
    grid,
    positive,
)
from dbfleet.moving.copy import DEFAULT_BATCH_SIZE, CopyReport, ModelCopy, copy_models

NAME = "copy"
HELP = "Copy models' rows to another database, in key order, resumable."
DESCRIPTION = (
    "Copies the rows of each model named (app_label.ModelName, or every model of "
    "app_label), and of their many-to-many tables, from the database each is routed to "
    "(or --from) into --to: in an order where foreign keys point to rows copied before, "
    "a batch of primary keys at a time, each batch committed with a checkpoint on the "
    "target. Rows are written as they are: no save(), no signals. A target that has rows "
    "already is refused unless --resume (go on after the last batch an earlier copy "
    "committed, as after a crash) or --replace (delete them first). Sequences are set "
    "past the copied ids. Rows written to the source during the copy may be missed: stop "
    "writes first, then compare with fleet verify."
)


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help="app_label.ModelName or app.")
    aliases = tuple(connections)
    parser.add_argument("--to", required=True, choices=aliases, metavar="ALIAS")
    parser.add_argument(
        "--from",
        dest="source",
        choices=aliases,
        metavar="ALIAS",
        help="Where to read (else where each model is routed).",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--resume", action="store_true", help="Go on after the last batch a copy committed."
    )
    what.add_argument(
        "--replace", action="store_true", help="Delete the target's rows of the models first."
    )
    parser.add_argument(
        "--batch-size",
        type=positive,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"Rows per batch and checkpoint (default {DEFAULT_BATCH_SIZE:,}).",
    )
    add_format_option(parser)
    add_verbosity_option(parser)


def handle(
    out: Out,
    *,
    models: list[str],
    to: str,
    source: str | None,
    resume: bool,
    replace: bool,
    batch_size: int,
    format: str,
    verbosity: int,
    **options: Any,
) -> None:
    with bars(out, verbosity if format == "text" else 0) as progress:
        report = copy_models(
            models,
            to,
            source,
            resume=resume,
            replace=replace,
            batch_size=batch_size,
            progress=progress,
        )
    if format == "json":
        out.json(report)
    elif verbosity >= 1:
        write_report(out, report)


@contextmanager
def bars(out: Out, verbosity: int) -> Iterator[Any]:
    """A progress bar per model (rows, rows/s, time left) on a terminal; else, with -v 2, a
    line per batch."""
    if verbosity < 1 or (verbosity < 2 and not out.isatty()):
        yield lambda copy: None
        return
    if not out.isatty():

        def line(copy: ModelCopy) -> None:
            out.write(f"  {copy.model}: {copy.before + copy.rows:,} of {copy.total:,} rows")

        yield line
        return
    console = Console(file=out.stream, color_system="standard" if out.color else None)
    tasks: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:

        def show(copy: ModelCopy) -> None:
            if copy.model not in tasks:
                tasks[copy.model] = bar.add_task(copy.model, total=copy.total, rate="")
            speed = bar.tasks[tasks[copy.model]].speed
            bar.update(
                tasks[copy.model],
                completed=copy.before + copy.rows,
                rate=f"{speed:,.0f} rows/s" if speed else "",
            )

        yield show


def write_report(out: Out, report: CopyReport) -> None:
    table = grid("model", "from", "rows", "rows/s", "how", right=("rows", "rows/s"))
    for copy in report.models:
        rate = f"{copy.rows / copy.seconds:,.0f}" if copy.seconds and copy.rows else "-"
        rows = f"{copy.rows:,}"
        if copy.resumed_after is not None:
            rows += f" (after {copy.before:,}, key {copy.resumed_after})"
        table.add_row(copy.model, copy.source, rows, rate, copy.method)
    out.write(f"Copied to {report.target} (no save(), no signals):")
    out.table(table)
    if report.sequences:
        out.write(f"Sequences set past the copied ids: {', '.join(report.sequences)}.")
