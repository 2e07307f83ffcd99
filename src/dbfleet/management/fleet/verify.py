"""``fleet verify``: compare models' rows on two databases; name the rows that differ."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import connections

from dbfleet.management.fleet.output import Out, add_format_option, add_verbosity_option
from dbfleet.moving.verify import ModelVerify, verify_models

NAME = "verify"
HELP = "Compare models' rows on two databases; exit 1 and name the rows if they differ."
DESCRIPTION = (
    "Reads each model named (app_label.ModelName, or every model of app_label, with "
    "their many-to-many tables) from both databases in primary-key order and compares "
    "them row by row, value by value, in one normal form (decimals without their scale, "
    "times in UTC, JSON without its key order; text exactly). Prints the keys missing "
    "from the second, extra in it, and those whose values differ, with the columns; exits "
    "1 if anything differs."
)


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help="app_label.ModelName or app.")
    parser.add_argument(
        "--between",
        nargs=2,
        required=True,
        choices=tuple(connections),
        metavar="ALIAS",
        help="The two databases: the first is the reference (rows 'missing' from the second).",
    )
    add_format_option(parser)
    add_verbosity_option(parser)


def handle(
    out: Out, *, models: list[str], between: list[str], format: str, verbosity: int, **options: Any
) -> None:
    report = verify_models(models, *between)
    if format == "json":
        out.json(report)
    elif verbosity >= 1:
        for model in report.models:
            write_model(out, model)
    if report.differs:
        different = [model.model for model in report.models if not model.equal]
        raise CommandError(
            f"{', '.join(different)} differ between {report.first} and {report.second}.",
            returncode=1,
        )


def keys(found: list[Any], count: int) -> str:
    shown = ", ".join(str(key) for key in found)
    return shown + (f" and {count - len(found):,} more" if count > len(found) else "")


def write_model(out: Out, model: ModelVerify) -> None:
    style = out.style
    head = (
        f"{style.MIGRATE_HEADING(model.model)}: {model.rows_first:,} rows on {model.first}, "
        f"{model.rows_second:,} on {model.second}"
    )
    if model.equal:
        out.write(f"{head}: the same ({model.seconds:.1f} s)")
        return
    out.write(style.ERROR(f"{head}: they differ"))
    if model.missing_count:
        out.write(f"  missing from {model.second}: {keys(model.missing, model.missing_count)}")
    if model.extra_count:
        out.write(f"  extra in {model.second}: {keys(model.extra, model.extra_count)}")
    if model.different_count:
        out.write(f"  different ({model.different_count:,}):")
        for row in model.different:
            values = "; ".join(
                f"{column} {first!r} / {second!r}"
                for column, first, second in zip(row.columns, row.first, row.second, strict=True)
            )
            out.write(f"    {row.key}: {values}")
