"""``manage.py fleet``: see and operate every database of the project.

This module only builds the parser and dispatches; each subcommand lives in
``dbfleet.management.fleet.<name>``.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from dbfleet.management.fleet import (
    copy,
    dump,
    load,
    migrate,
    move,
    plan,
    recover,
    routes,
    shards,
    status,
    sync,
    verify,
)
from dbfleet.management.fleet.output import Out, add_django_options

SUBCOMMANDS = {
    module.NAME: module
    for module in (
        routes,
        migrate,
        plan,
        status,
        recover,
        shards,
        sync,
        copy,
        verify,
        move,
        dump,
        load,
    )
}


class Command(BaseCommand):
    help = (
        "Show and operate the project's databases. "
        "Subcommands: routes, migrate, plan, status, recover, shards, sync, copy, verify, move, "
        "dump, load."
    )
    # Configuration problems are shown by the subcommands themselves: `fleet routes`
    # is how one looks into a configuration that the checks reject.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(
            dest="subcommand",
            title="subcommands",
            required=True,
            metavar="{" + ",".join(SUBCOMMANDS) + "}",
        )
        for name, module in SUBCOMMANDS.items():
            subparser = subcommands.add_parser(
                name, help=module.HELP, description=module.DESCRIPTION
            )
            module.add_arguments(subparser)
            add_django_options(subparser)

    def handle(self, *args: Any, **options: Any) -> None:
        color = options["force_color"] or (self.stdout.isatty() and not options["no_color"])
        SUBCOMMANDS[options.pop("subcommand")].handle(Out(self, color), **options)
