"""``fleet move``: move models to another database while the application writes."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import connections

from dbfleet.management.fleet.copy import bars
from dbfleet.management.fleet.copy import write_report as write_copy
from dbfleet.management.fleet.output import (
    Out,
    add_format_option,
    add_verbosity_option,
    positive,
)
from dbfleet.moving import move
from dbfleet.moving.copy import DEFAULT_BATCH_SIZE

NAME = "move"
HELP = "Move models to another database online: copy, catch up, then --finish or --abort."
DESCRIPTION = (
    "With --to: logs every change of the models' tables on their database (triggers), "
    "copies the rows as fleet copy does, applies the changes written meanwhile, and "
    "compares both sides; run again, it goes on where it stopped (with --follow it keeps "
    "applying changes until interrupted). Then change ROUTES to send the models to the "
    "new database and, with those settings, run --finish as the deploy begins, before "
    "processes on the new routes write: it refuses every write to the old tables (a process "
    "still on the old routes fails instead of writing there), applies the last changes, "
    "compares both sides exactly and keeps the old tables, renamed, as a backup. --abort, "
    "before --finish, drops the triggers and the log and empties the new database's "
    "tables: the old database is as it was. Rows are written as they are: no save(), no "
    "signals."
)


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument(
        "models", nargs="*", metavar="MODEL", help="app_label.ModelName or app_label."
    )
    aliases = tuple(connections)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--to", choices=aliases, metavar="ALIAS", help="Where to move them.")
    what.add_argument(
        "--finish",
        action="store_true",
        help="End the moves (of MODEL…, or all) whose models are routed to their target now.",
    )
    what.add_argument(
        "--abort", action="store_true", help="Undo the moves (of MODEL…, or all) not finished."
    )
    parser.add_argument(
        "--from",
        dest="source",
        choices=aliases,
        metavar="ALIAS",
        help="Where the rows are (else where the models are routed).",
    )
    parser.add_argument(
        "--follow",
        action="store_true",
        help="With --to: keep applying the changes, once a second, until interrupted.",
    )
    parser.add_argument(
        "--batch-size",
        type=positive,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"Rows per batch of the copy (default {DEFAULT_BATCH_SIZE:,}).",
    )
    add_format_option(parser)
    add_verbosity_option(parser)


def handle(
    out: Out,
    *,
    models: list[str],
    to: str | None,
    finish: bool,
    abort: bool,
    source: str | None,
    follow: bool,
    batch_size: int,
    format: str,
    verbosity: int,
    **options: Any,
) -> None:
    if to is None and (source or follow):
        raise CommandError("--from and --follow go with --to (the start of a move).")
    talk = format == "text" and verbosity >= 1
    if abort:
        undone = move.abort(models)
        documents = [described(one) for one in undone]
        for one in undone:
            if talk:
                out.write(
                    f"Aborted the move of {one.named()} from {one.source} to {one.target}: "
                    f"{one.source} is as it was (no triggers, no log); the tables on "
                    f"{one.target} are empty."
                )
    elif finish:
        reports = move.finish(models)
        documents = [described(report.move, report) for report in reports]
        for report in reports:
            if talk:
                write_finished(out, report)
    else:
        assert to is not None
        if not models:
            raise CommandError("Name the models to move (app_label.ModelName or app_label).")
        with bars(out, verbosity if format == "text" else 0) as progress:
            report = move.start(models, to, source, batch_size=batch_size, progress=progress)
        if talk:
            if report.copy is not None:
                write_copy(out, report.copy)
            write_following(out, report)
        if follow:
            keep_following(out, report, talk)
        documents = [described(report.move, report)]
    if format == "json":
        out.json(documents)


def described(one: move.Move, report: move.MoveReport | None = None) -> dict[str, Any]:
    """A move as ``--format json`` prints it."""
    document: dict[str, Any] = {
        "models": one.labels,
        "from": one.source,
        "to": one.target,
        "phase": one.phase,
        "backups": one.backups,
    }
    if report is not None:
        document |= {
            "applied": report.applied,
            "changing": report.changing,
            "backlog": report.backlog,
            "lag": report.lag,
        }
    return document


def write_following(out: Out, report: move.MoveReport) -> None:
    one = report.move
    rows = sum(result.rows_first for result in report.verify.models) if report.verify else 0
    out.write(
        f"Moving {one.named()} from {one.source} to {one.target}: {report.applied:,} changes "
        f"applied, {rows:,} rows compared, {report.changing:,} changing as they were "
        f"compared (logged, applied next); {report.backlog:,} changes waiting"
        + (f", the oldest {report.lag:.1f} s old." if report.lag is not None else ".")
    )
    out.write(
        f"Next: change ROUTES to send {one.named()} to {one.target!r}; with those settings, "
        f"run `manage.py fleet move {one.named()} --finish` as the deploy begins, before "
        f"processes on the new routes take writes (from then on {one.source!r} refuses "
        "writes to these models, until the old processes are gone). Until then the changes "
        f"are logged on {one.source}; run this again (or with --follow) to apply them as "
        "they come, or --abort to undo the move."
    )


def keep_following(out: Out, report: move.MoveReport, talk: bool) -> None:
    """Apply the changes once a second until interrupted."""
    try:
        with move.exclusive(report.move.source, report.move.target):
            while True:
                report.applied += len(move.catch_up(report.move))
                report.backlog, report.lag = move.backlog(report.move)
                if talk:
                    out.write(f"  {report.applied:,} changes applied, {report.backlog:,} waiting")
                time.sleep(1)
    except KeyboardInterrupt:
        if talk:
            out.write("Stopped following; the changes are logged until the next run.")


def write_finished(out: Out, report: move.MoveReport) -> None:
    one = report.move
    backups = ", ".join(f"`{table}`" for table in one.backups.values())
    rows = sum(result.rows_first for result in report.verify.models) if report.verify else 0
    out.write(
        f"Moved {one.named()} from {one.source} to {one.target}: the last {report.applied:,} "
        f"changes applied, {rows:,} rows the same on both. On {one.source} the old tables "
        f"refuse writes and are kept, renamed, as {backups}: drop them once you no longer "
        "need them."
    )
