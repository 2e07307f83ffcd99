"""``fleet shards``: each shard group's slot map, rows per database and imbalance; copies."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from dbfleet.management.fleet.output import (
    Out,
    add_format_option,
    add_verbosity_option,
    grid,
)
from dbfleet.reports import (
    NO_SHARD_GROUPS,
    ReferenceModelRows,
    ShardedModelRows,
    ShardGroupReport,
    ShardsReport,
    TableRows,
    shards_report,
)

NAME = "shards"
HELP = "Show each shard group's slot map, rows per database and imbalance."
DESCRIPTION = (
    "For each shard group (DBFLEET['SHARDS']): the slots each database holds, the rows "
    "of each sharded and reference model on each database (the engine's estimate where "
    "it keeps one, marked ~; --exact counts them), and how unevenly each sharded model "
    "spreads (the largest database's rows over the mean). With --check, every copy of "
    "each reference model is read and compared, and it exits 1 unless they all agree "
    "and every table can be read."
)


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument(
        "--group",
        action="append",
        dest="groups",
        metavar="NAME",
        help="Only this shard group (repeatable).",
    )
    parser.add_argument(
        "--exact", action="store_true", help="Count the rows (COUNT(*)) instead of estimating."
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="Compare the copies of each reference model (rows and a checksum); exit 1 "
        "unless they agree and every table can be read.",
    )
    add_format_option(parser)
    add_verbosity_option(parser)


def handle(
    out: Out,
    *,
    groups: list[str] | None,
    exact: bool,
    check: bool,
    format: str,
    verbosity: int,
    **options: Any,
) -> None:
    try:
        report = shards_report(groups or (), exact=exact, check=check)
    except LookupError as error:
        raise CommandError(str(error.args[0])) from None
    if format == "json":
        out.json(report)
    else:
        write_text(out, report, verbosity)
    if check and report.problems:
        raise CommandError(
            f"Not in order (exit 1): {'; '.join(report.problems)}.",
            returncode=1,
        )


def write_text(out: Out, report: ShardsReport, verbosity: int) -> None:
    style = out.style
    if report.configuration:
        out.warn(
            f"{len(report.configuration)} configuration error(s): run `manage.py check --tag "
            "dbfleet`. Groups with errors are left out."
        )
    if not report.groups:
        out.write(NO_SHARD_GROUPS[0].upper() + NO_SHARD_GROUPS[1:])
        return
    for index, group in enumerate(report.groups):
        if index:
            out.write()
        write_group(out, group, verbosity, report.checked)
    if verbosity < 1:
        return
    cells = [found for group in report.groups for model in models_of(group) for found in model.rows]
    out.write()
    if any(not found.exact and found.rows is not None for found in cells):
        out.write(
            "Rows marked ~ are the engine's estimate (its statistics), not a count: "
            "--exact counts them."
        )
    elif report.exact:
        out.write("Rows are counted (COUNT(*)).")
    else:
        out.write("Rows are counted (COUNT(*)): the engine keeps no estimate.")
    unread = [
        f"  {model.model} on {found.database}: {found.error}"
        for group in report.groups
        for model in models_of(group)
        for found in model.rows
        if found.error
    ]
    if unread:
        out.write(style.ERROR("Tables that cannot be read (-):"))
        for text in unread:
            out.write(style.ERROR(text))
    if report.checked:
        write_check(out, report)


def write_group(out: Out, group: ShardGroupReport, verbosity: int, checked: bool) -> None:
    if verbosity >= 1:
        two_phase = ", two-phase writes to reference models" if group.two_phase else ""
        out.write(
            out.style.MIGRATE_HEADING(f"Shard group {group.name}")
            + f" ({group.vendor}, {group.slots} slots over {len(group.databases)} "
            f"databases{two_phase})"
        )
        out.write()
    slots = grid("database", "slots", "count", right=("count",))
    for database in group.databases:
        ranges = ", ".join(str(slot_range) for slot_range in database.slots) or "-"
        slots.add_row(database.alias, ranges, str(database.slot_count))
    out.table(slots)
    out.write()
    aliases = [database.alias for database in group.databases]
    columns = ["model", "key", *aliases, "total", "largest", "imbalance"]
    table = grid(*columns, *(["copies"] if checked else []), right=(*aliases, "total"))
    for model in group.sharded:
        table.add_row(
            model.model,
            model.key,
            *(cell(found) for found in model.rows),
            "-" if model.total is None else f"{model.total:,}",
            model.largest or "-",
            "-" if model.imbalance is None else f"{model.imbalance:.2f}",
        )
    for reference in group.reference:
        table.add_row(
            reference.model,
            "(reference)",
            *(cell(found) for found in reference.rows),
            "",
            "",
            "",
            *([copies(reference)] if checked else []),
        )
    out.table(table)


def models_of(group: ShardGroupReport) -> list[ShardedModelRows | ReferenceModelRows]:
    return [*group.sharded, *group.reference]


def cell(found: TableRows) -> str:
    if found.rows is None:
        return "[bold red]-[/]"
    return f"{found.rows:,}" if found.exact else f"~{found.rows:,}"


def copies(reference: ReferenceModelRows) -> str:
    """Whether the copies agree, as --check found."""
    if reference.differ:
        return f"[bold red]differ: {', '.join(reference.differ)}[/]"
    return "agree" if reference.agree else "[bold red]not all read[/]"


def write_check(out: Out, report: ShardsReport) -> None:
    style = out.style
    checked = [reference for group in report.groups for reference in group.reference]
    if not checked:
        out.write("No reference models: no copies to compare.")
        return
    out.write("Copies of reference models (rows; checksum of the rows in primary-key order):")
    for reference in checked:
        for copy in reference.copies:
            if copy.checksum is not None:
                out.write(
                    f"  {reference.model} on {copy.database}: {copy.rows:,} rows, {copy.checksum}"
                )
    if all(reference.agree for reference in checked):
        out.write(style.SUCCESS("Every copy of every reference model agrees."))
        return
    for reference in checked:
        if reference.differ:
            first = next(copy.database for copy in reference.copies if not copy.error)
            out.write(
                style.ERROR(
                    f"{reference.model}: the copy on {', '.join(reference.differ)} differs "
                    f"from the one on {first} (where queries read)."
                )
            )
        elif not reference.agree:
            out.write(style.ERROR(f"{reference.model}: not every copy could be read."))
        for copy, found in zip(reference.copies, reference.rows, strict=True):
            if copy.error and not found.error:  # Counted, then not read whole.
                out.write(style.ERROR(f"  {reference.model} on {copy.database}: {copy.error}"))
