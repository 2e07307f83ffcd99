"""``fleet sync``: copy synced models to ClickHouse (once, or following), or compare them."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from django.core.management.base import CommandError, CommandParser

from dbfleet.analytics.sync import (
    DEFAULT_BATCH_SIZE,
    TEXT_BLOCK_ROWS,
    CheckReport,
    ModelSync,
    SyncReport,
    check,
    follow,
    sync,
)
from dbfleet.management.fleet.output import (
    Out,
    add_format_option,
    add_verbosity_option,
    grid,
    positive,
)

NAME = "sync"
HELP = "Copy synced models to ClickHouse: what changed, or everything; --check compares."
DESCRIPTION = (
    "Copies each synced model (dbfleet.analytics.SyncedModel; or those named, as "
    "app_label.ModelName) from its source: everything the first time (or with --full), "
    "then the changes its source's triggers logged since, a batch at a time. Each copy is "
    "synced by one process at a time (a lock on its source's database). With --follow it "
    "keeps copying until stopped (Ctrl-C, SIGTERM), waiting --interval seconds when there "
    "is nothing to copy. With --check it copies nothing: it compares the rows of each "
    "copy with its source's, by counts and checksums per key range, names the ranges "
    "that differ and exits 1 if any do."
)


def seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(text)
    return value


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="Synced models (app_label.ModelName); all if none.",
    )
    parser.add_argument(
        "--full", action="store_true", help="Load every copy again, in full, then what changed."
    )
    parser.add_argument(
        "--follow",
        action="store_true",
        help="Keep copying changes until stopped (SIGINT, SIGTERM).",
    )
    parser.add_argument(
        "--interval",
        type=seconds,
        default=1.0,
        metavar="SECONDS",
        help="With --follow: how long to wait when there is nothing to copy (default 1).",
    )
    parser.add_argument(
        "--batch-size",
        type=positive,
        default=None,
        metavar="N",
        help=f"Rows read and written at a time (default {DEFAULT_BATCH_SIZE:,}; "
        f"{TEXT_BLOCK_ROWS:,} for a load that sends the source's text).",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="Copy nothing: compare each copy with its source; exit 1 if they differ.",
    )
    add_format_option(parser)
    add_verbosity_option(parser)


def handle(
    out: Out,
    *,
    models: list[str],
    full: bool,
    follow: bool,
    interval: float,
    batch_size: int | None,
    check: bool,
    format: str,
    verbosity: int,
    **options: Any,
) -> None:
    if check and (full or follow):
        raise CommandError("--check copies nothing: it cannot go with --full or --follow.")
    if follow and format == "json":
        raise CommandError("--follow writes a line per sync as it goes: it has no JSON report.")
    try:
        if check:
            return run_check(out, models, format)
        if follow:
            return run_follow(out, models, full, interval, batch_size, verbosity)
        report = sync(
            models, full=full, batch_size=batch_size, progress=progress(out, verbosity, format)
        )
    except LookupError as error:
        raise CommandError(str(error.args[0])) from None
    if format == "json":
        out.json(report)
    else:
        write_report(out, report, verbosity)
    if report.errors:
        raise CommandError(
            "Not every copy was synced: "
            + "; ".join(f"{model.model}: {model.error}" for model in report.errors)
            + ". What was copied stays; sync again once the cause is fixed (`fleet status` "
            "shows each copy's last error).",
            returncode=1,
        )


def progress(out: Out, verbosity: int, format: str) -> Any:
    def show(label: str, what: str, count: int) -> None:
        if verbosity >= 2 and format == "text":
            out.write(f"  {label}: {count:,} {'rows loaded' if what == 'loaded' else what}")
            out.command.stdout.flush()

    return show


def summary(result: ModelSync) -> str:
    parts = []
    if result.full:
        parts.append(f"loaded in full ({result.loaded:,} rows)")
    if result.changes:
        parts.append(f"{result.changes:,} changes")
    if result.written or result.deleted:
        parts.append(f"{result.written:,} rows written, {result.deleted:,} deleted")
    if not parts:
        parts.append("nothing to copy")
    if result.pending:
        parts.append(f"{result.pending:,} pending")
    parts.append(f"lag {result.lag:.1f} s")
    return "; ".join(parts) + f" ({result.seconds:.1f} s)"


def write_report(out: Out, report: SyncReport, verbosity: int) -> None:
    style = out.style
    if not report.models:
        out.write(
            "No synced models: declare one with dbfleet.analytics.SyncedModel and "
            "class Sync: source = 'app_label.ModelName'."
        )
        return
    if verbosity < 1:
        return
    for result in report.models:
        where = f"{result.source} ({result.source_database}) -> {result.database}"
        if result.error:
            out.write(style.ERROR(f"{result.model} ({where}): {result.error}"))
        else:
            out.write(f"{style.MIGRATE_HEADING(result.model)} ({where}): {summary(result)}")


@contextmanager
def stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (the sync in progress ends its batch), then restore."""

    def handler(number: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {
        number: signal.signal(number, handler) for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def run_follow(
    out: Out, models: list[str], full: bool, interval: float, batch_size: int | None, verbosity: int
) -> None:
    stop = threading.Event()
    style = out.style

    def on_sync(result: ModelSync) -> None:
        if result.error:
            out.warn(style.ERROR(f"{result.model}: {result.error} (trying again)"))
        elif verbosity >= 1 and (result.full or result.changes or verbosity >= 2):
            stamp = time.strftime("%H:%M:%S")
            out.write(f"{stamp} {result.model}: {summary(result)}")
        out.command.stdout.flush()

    if verbosity >= 1:
        out.write(f"Following every {interval:g} s; stop with Ctrl-C (or SIGTERM).")
        out.command.stdout.flush()
    with stopped_by_signals(stop):
        follow(
            models,
            full=full,
            interval=interval,
            batch_size=batch_size,
            stop=stop,
            on_sync=on_sync,
            progress=progress(out, verbosity, "text"),
        )
    if verbosity >= 1:
        out.write("Stopped.")


def run_check(out: Out, models: list[str], format: str) -> None:
    report = check(models)
    if format == "json":
        out.json(report)
    else:
        write_check(out, report)
    if report.problems:
        raise CommandError(
            f"Not in order (exit 1): {'; '.join(report.problems)}.",
            returncode=1,
        )


def write_check(out: Out, report: CheckReport) -> None:
    style = out.style
    table = grid("model", "source", "rows", "copy", "ranges", "differ", "pending",
                 right=("rows", "copy", "ranges", "differ", "pending"))  # fmt: skip
    for model in report.models:
        table.add_row(
            model.model,
            model.source,
            f"{model.source_rows:,}",
            f"{model.copy_rows:,}",
            str(model.ranges),
            f"[bold red]{len(model.differ)}[/]" if model.differ else "0",
            "-" if model.pending is None else f"{model.pending:,}",
        )
    out.table(table)
    for model in report.models:
        if model.error:
            out.write(style.ERROR(f"{model.model}: {model.error}"))
        for difference in model.differ:
            keys = ", ".join(difference.keys)
            out.write(
                style.ERROR(
                    f"{model.model}: keys {difference.range} differ ({difference.source_rows:,} "
                    f"rows in the source, {difference.copy_rows:,} in the copy)"
                    + (f": {keys}" if keys else "")
                )
            )
        if model.differ and model.pending:
            out.write(
                f"{model.model} has {model.pending:,} changes not copied yet: "
                "run `fleet sync` first, then check again."
            )
    if not report.problems and report.models:
        out.write(style.SUCCESS("Every copy has exactly its source's rows."))
