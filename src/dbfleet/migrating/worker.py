"""``fleet migrate``'s worker: Django's ``migrate`` for one database, minus the wasted work.

Run as::

    python -m dbfleet.migrating.worker --database ALIAS [migrate's options] [--progress]

It takes every option of ``manage.py migrate`` and runs that command (the
project's own ``migrate`` if it overrides Django's, as ``manage.py`` would): the
same checks, plan, signals, output and exit status. One thing differs. Django
renders the model state and clones it for every operation of every migration it
applies, also on a database where routing skips every operation of a migration;
with one app per database that is almost all of them. Here a migration none of
whose operations can run on the database (the router says no, exactly as Django
asks it) only advances the project state, unrendered, and is recorded as applied,
as Django records it. Migrations with an operation that runs, ``--fake``, and
any Django release whose internals are not the ones vetted in
``dbfleet.migrating.internals`` go through Django's code unchanged.

With ``--progress`` it also prints, on stdout, one line per event for
``fleet migrate`` to show progress (each flushed as it happens; every other
line is ``migrate``'s own output, also flushed line by line)::

    dbfleet-progress <applied>/<pending>                       planned, or one more applied
    dbfleet-progress <applied>/<pending> <app_label>.<name>    <name> starts (the current one)

``<pending>`` is the number of migrations in the plan, ``<applied>`` those done
so far. The first line comes once the plan is made (``0/<pending>``, before
anything runs); the last is ``<pending>/<pending>``. Unapplying (a target
before the current state) counts the same way. Errors end the output as in
Django's ``migrate``: the exception's line (``django.db.utils.ProgrammingError:
...``) or ``CommandError: ...`` on stderr, and a non-zero exit status.

``migrate_up_to_date()`` runs ``migrate`` in the calling process for a database
with nothing to apply, so that ``pre_migrate`` and ``post_migrate`` (content
types, permissions, a project's own receivers) run there as ``manage.py migrate
--database ALIAS`` would run them, without starting an interpreter.
"""

from __future__ import annotations

import gc
import io
import sys
from argparse import SUPPRESS
from collections.abc import Callable
from importlib import import_module
from typing import Any

import django
from django.apps import apps
from django.core import checks
from django.core.management import call_command, get_commands, load_command_class
from django.core.management.base import (
    BaseCommand,
    CommandParser,
    OutputWrapper,
    handle_default_options,
)
from django.core.management.commands import migrate
from django.db.migrations import Migration
from django.db.migrations.executor import MigrationExecutor
from django.db.models.signals import pre_migrate
from django.utils.module_loading import module_has_submodule

from dbfleet.migrating import internals

PROGRESS = "dbfleet-progress"
PROG = "python -m dbfleet.migrating.worker"


def runs_on(alias: str) -> Callable[[Migration], bool]:
    """``migration -> whether any operation of it may run on alias``."""

    def runs_here(migration: Migration) -> bool:
        return not all(
            internals.skipped(alias, migration.app_label, op) for op in migration.operations
        )

    return runs_here


def may_be_faked(migration: Migration) -> bool:
    """Whether ``--fake-initial`` looks at ``migration`` (``detect_soft_applied`` does)."""
    if migration.initial is None:
        return not any(app == migration.app_label for app, _ in migration.dependencies)
    return bool(migration.initial)


def migrate_command_class() -> type[BaseCommand]:
    """The ``migrate`` command ``manage.py`` runs: Django's, or the project's override."""
    return type(load_command_class(get_commands()["migrate"], "migrate"))


def worker_class(base: type[migrate.Command]) -> type[migrate.Command]:
    """``base`` (a ``migrate`` command) with the fast executor and the progress lines."""

    class Worker(base):  # type: ignore[valid-type, misc]
        def add_arguments(self, parser: CommandParser) -> None:
            super().add_arguments(parser)
            parser.add_argument(
                "--progress",
                action="store_true",
                help=f"Print '{PROGRESS} <applied>/<pending> [<migration>]' lines.",
            )
            parser.add_argument(
                "--database-checks-only",
                action="store_true",
                help="Run only the database system checks (the caller ran the others).",
            )
            # fleet migrate's parent has read this Django's internals (internals.changed()).
            parser.add_argument("--internals-vetted", action="store_true", help=SUPPRESS)

        def get_check_kwargs(self, options: dict[str, Any]) -> dict[str, Any]:
            kwargs: dict[str, Any] = super().get_check_kwargs(options)
            if options["database_checks_only"]:
                # Every other check gives the same answer in every process.
                kwargs["tags"] = [checks.Tags.database]
            return kwargs

        def handle(self, *args: Any, **options: Any) -> None:
            self.progress = options.pop("progress")
            vetted = options.pop("internals_vetted")
            options.pop("database_checks_only")
            self.applied = 0
            self.pending = 0
            self.planned = False
            database = options["database"]

            def on_plan(plan: list[tuple[Migration, bool]], using: str, **kwargs: Any) -> None:
                # Sent once per app, each with the same plan.
                if using == database and not self.planned:
                    self.planned = True
                    self.pending = len(plan)
                    self.report()

            pre_migrate.connect(on_plan, weak=False, dispatch_uid=PROGRESS)
            try:
                changed = () if vetted else internals.changed()
                if changed:
                    if options["verbosity"] >= 1:
                        self.stdout.write(
                            f"Django {django.get_version()}: not vetted for dbfleet's worker "
                            f"({', '.join(changed)} changed); running its migrate unchanged."
                        )
                    super().handle(*args, **options)
                else:
                    with internals.fast_executor(runs_on(database), may_be_faked):
                        super().handle(*args, **options)
            finally:
                pre_migrate.disconnect(dispatch_uid=PROGRESS)

        def migration_progress_callback(
            self, action: str, migration: Migration | None = None, fake: bool = False
        ) -> None:
            if action in ("apply_start", "unapply_start") and migration is not None:
                self.report(f"{migration.app_label}.{migration.name}")
            super().migration_progress_callback(action, migration, fake)
            if action in ("apply_success", "unapply_success"):
                self.applied += 1
                self.report()

        def report(self, current: str = "") -> None:
            if self.progress:
                line = f"{PROGRESS} {self.applied}/{self.pending}"
                self.stdout.write(f"{line} {current}" if current else line)
                self.stdout.flush()

    return Worker


def main(argv: list[str] | None = None) -> None:
    """Run the worker as ``manage.py migrate`` runs: options, setup, checks, exit status."""
    # The objects start-up makes live until the process ends: a full collection
    # would walk them all again each time (a sixth of a worker's CPU time).
    gc.disable()
    argv = sys.argv[1:] if argv is None else argv
    if isinstance(sys.stdout, io.TextIOWrapper):
        # Piped to fleet migrate, which shows lines as they come.
        sys.stdout.reconfigure(line_buffering=True)
    # --settings and --pythonpath count before setup, as with manage.py.
    early = CommandParser(add_help=False, allow_abbrev=False)
    early.add_argument("--settings")
    early.add_argument("--pythonpath")
    handle_default_options(early.parse_known_args(argv)[0])
    django.setup()
    gc.freeze()
    gc.enable()
    base = migrate_command_class()
    if not issubclass(base, migrate.Command):
        # A migrate of the project's own making: run it as it is.
        argv = [arg for arg in argv if arg != "--progress"]
        base().run_from_argv([PROG, "migrate", *argv])
        return
    worker_class(base)().run_from_argv([PROG, "migrate", *argv])


def migrate_up_to_date(
    alias: str,
    *,
    verbosity: int,
    interactive: bool = False,
    states: dict[Any, Any] | None = None,
    executor: MigrationExecutor | None = None,
) -> str:
    """``migrate --database alias`` in this process, checks skipped, for a database with
    nothing to apply; its output. Exceptions propagate.

    There it checks the history, sends ``pre_migrate`` and ``post_migrate`` and
    records squashed migrations whose replaced ones are all recorded. Pass the same
    ``states`` for every database of a run: databases with the same migrations
    recorded then share the rendered project state the signals carry. An
    ``executor`` that just planned ``alias`` saves loading the migrations again.
    """
    out = io.StringIO()
    for app_config in apps.get_app_configs():
        # As migrate does: receivers are often connected in an app's management module.
        if module_has_submodule(app_config.module, "management"):
            import_module(".management", app_config.name)
    done = not internals.changed() and internals.signal_up_to_date(
        alias,
        verbosity=verbosity,
        interactive=interactive,
        stdout=OutputWrapper(out),
        states={} if states is None else states,
        executor=executor,
    )
    if not done:
        call_command(
            "migrate",
            database=alias,
            interactive=interactive,
            verbosity=verbosity,
            skip_checks=True,
            stdout=out,
            stderr=out,
        )
    return out.getvalue()


if __name__ == "__main__":
    main()
