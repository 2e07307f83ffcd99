"""Migrate many databases at once, each in a worker process running Django's ``migrate``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import IO, Any, cast

from django.conf import settings
from django.db import DatabaseError, connections
from django.db.migrations import Migration
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.graph import MigrationGraph
from django.db.migrations.recorder import MigrationRecorder

from dbfleet.migrating import internals
from dbfleet.migrating.plan import first_line, runs_on
from dbfleet.migrating.worker import migrate_up_to_date

#: How often the runner looks at its workers.
POLL_SECONDS = 0.05
#: "django.db.utils.OperationalError: ...", "SystemCheckError: ...".
ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception)\b.*:")


class Result(StrEnum):
    """Where one database is in a ``migrate_all`` run; the last four are final."""

    WAITING = "waiting"
    RUNNING = "running"
    UP_TO_DATE = "up to date"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class Outcome:
    """What happened on one database."""

    alias: str
    vendor: str
    result: Result
    pending: int = 0
    applied: int = 0
    seconds: float = 0.0
    output: str = ""
    error: str = ""


@dataclass
class _Worker:
    outcome: Outcome
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    started: float
    applied_before: int


def worker_command(
    alias: str,
    *,
    fake: bool,
    verbosity: int,
    skip_checks: bool,
    fake_initial: bool = False,
    progress: bool = False,
    checked: bool = False,
) -> list[str]:
    """``migrate --database alias`` in a fresh interpreter, by dbfleet's worker.

    The worker is Django's migrate without the rendering it wastes on migrations
    routed elsewhere; ``progress`` adds its ``dbfleet-progress`` lines (see
    ``dbfleet.migrating.worker``); ``checked`` (this process ran the system checks
    and they passed) leaves it only the database checks.
    """
    command = [sys.executable, "-m", "dbfleet.migrating.worker", "--database", alias, "--noinput"]
    command += ["--verbosity", str(verbosity)]
    command += ["--fake"] * fake + ["--fake-initial"] * fake_initial
    command += ["--skip-checks"] * skip_checks + ["--database-checks-only"] * checked
    # Read once here rather than in every worker (the same Django runs both).
    command += ["--internals-vetted"] * (not internals.changed())
    return command + ["--progress"] * progress


def worker_environment() -> dict[str, str]:
    """This process's environment, with its settings module and import path."""
    if not settings.SETTINGS_MODULE:
        raise RuntimeError(
            "fleet migrate starts a worker process per database, and workers find the "
            "settings through DJANGO_SETTINGS_MODULE; settings configured in code "
            "(settings.configure()) cannot be passed on. Use a settings module."
        )
    path = [entry or os.getcwd() for entry in sys.path]
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE,
        "PYTHONPATH": os.pathsep.join(path),
    }


def pending_work(alias: str) -> tuple[list[Migration], MigrationGraph, int]:
    """(pending migrations, graph, applied count) on ``alias``; raises DatabaseError."""
    executor = MigrationExecutor(connections[alias])
    plan = [
        migration for migration, _ in executor.migration_plan(executor.loader.graph.leaf_nodes())
    ]
    return plan, executor.loader.graph, len(executor.loader.applied_migrations)


def cross_database_waits(
    work: dict[str, list[Migration]], graph: MigrationGraph
) -> dict[str, set[str]]:
    """Which databases each must wait for, because its migrations need their work done.

    A migration that depends on one running only on another database (a data
    migration reading users from ``default``, say) needs that database migrated
    first; Django's ``migrate`` loop honours that only when run in the right order.
    Dependencies on a migration that also runs here (one app on two databases)
    need nothing from the other database and do not make it wait.
    """
    runs = {
        alias: {(m.app_label, m.name) for m in pending if runs_on(alias, m)}
        for alias, pending in work.items()
    }
    waits: dict[str, set[str]] = {}
    for alias, keys in runs.items():
        ancestors: set[tuple[str, str]] = set()
        stack = list(keys)
        while stack:
            for parent in graph.node_map[stack.pop()].parents:
                if parent.key not in ancestors:
                    ancestors.add(parent.key)
                    stack.append(parent.key)
        needed = {key for key in ancestors if not runs_on(alias, cast(Migration, graph.nodes[key]))}
        waits[alias] = {
            other for other, theirs in runs.items() if other != alias and needed & theirs
        }
    return waits


def migrate_all(
    aliases: Iterable[str],
    *,
    jobs: int,
    fake: bool = False,
    fail_fast: bool = False,
    skip_checks: bool = False,
    verbosity: int = 1,
    report: Callable[[Outcome, list[str]], None] = lambda outcome, running: None,
) -> list[Outcome]:
    """Migrate ``aliases`` with at most ``jobs`` workers at once; never raises for a database.

    Databases with nothing to apply are found here and get no worker; a database
    that cannot be reached fails here. A database whose pending migrations depend
    on migrations pending on another starts after that one is done. With
    ``fail_fast`` no worker starts after a failure; running ones finish, because
    stopping ``migrate`` half-way leaves MySQL's committed DDL unrecorded.
    ``report`` is called as each database starts and ends, with those still running.
    """
    environment = worker_environment()
    outcomes: dict[str, Outcome] = {}
    applied_before: dict[str, int] = {}
    work: dict[str, list[Migration]] = {}
    graph: MigrationGraph | None = None
    states: dict[Any, Any] = {}  # The rendered states up-to-date databases share.
    for alias in aliases:
        outcome = outcomes[alias] = Outcome(alias, connections[alias].vendor, Result.WAITING)
        try:
            pending, graph, applied_before[alias] = pending_work(alias)
        except DatabaseError as error:
            outcome.result, outcome.error = Result.FAILED, first_line(error)
            report(outcome, [])
            continue
        finally:
            # Workers do the work; an idle connection here would only hold locks (SQLite).
            connections[alias].close()
        outcome.pending = len(pending)
        if pending:
            work[alias] = pending
        else:
            outcome.result = Result.UP_TO_DATE
            try:
                # pre_migrate and post_migrate, as `migrate --database` sends them here too.
                outcome.output = migrate_up_to_date(alias, verbosity=verbosity, states=states)
            except Exception as error:  # noqa: BLE001  (a receiver's; fails this database only)
                outcome.result, outcome.error = Result.FAILED, first_line(error)
            finally:
                connections[alias].close()
            report(outcome, [])
    waits = cross_database_waits(work, graph) if graph is not None else {}

    queue = list(work)
    running: dict[str, _Worker] = {}
    stop = fail_fast and any(outcome.result is Result.FAILED for outcome in outcomes.values())
    try:
        while queue or running:
            ready = [alias for alias in queue if not waits[alias] & {*queue, *running}]
            if not ready and not running:
                ready = queue[:1]  # A cycle of waits: fall back to the given order.
            for alias in ready[: max(0, jobs - len(running))] if not stop else []:
                queue.remove(alias)
                running[alias] = _start(
                    outcomes[alias],
                    worker_command(alias, fake=fake, verbosity=verbosity, skip_checks=skip_checks),
                    environment,
                    applied_before[alias],
                )
                report(outcomes[alias], list(running))
            if stop:
                for alias in queue:
                    outcomes[alias].result = Result.CANCELLED
                    report(outcomes[alias], list(running))
                queue.clear()
            time.sleep(POLL_SECONDS)
            for alias, worker in list(running.items()):
                if worker.process.poll() is not None:
                    del running[alias]
                    _finish(worker)
                    report(worker.outcome, list(running))
                    stop = stop or (fail_fast and worker.outcome.result is Result.FAILED)
    finally:
        # Interrupted (Ctrl-C): no worker outlives the command.
        for worker in running.values():
            worker.process.terminate()
            worker.process.wait()
            worker.log.close()
    return list(outcomes.values())


def _start(
    outcome: Outcome, command: list[str], environment: dict[str, str], applied: int
) -> _Worker:
    log = tempfile.TemporaryFile()  # noqa: SIM115  (closed in _finish)
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment
    )
    outcome.result = Result.RUNNING
    return _Worker(outcome, process, log, time.monotonic(), applied)


def _finish(worker: _Worker) -> None:
    outcome = worker.outcome
    outcome.seconds = time.monotonic() - worker.started
    worker.log.seek(0)
    outcome.output = worker.log.read().decode(errors="replace")
    worker.log.close()
    try:
        applied_now = len(MigrationRecorder(connections[outcome.alias]).applied_migrations())
        outcome.applied = applied_now - worker.applied_before
    except DatabaseError:
        pass  # The worker's output says what went wrong.
    finally:
        connections[outcome.alias].close()
    if worker.process.returncode == 0:
        outcome.result = Result.DONE
        return
    outcome.result = Result.FAILED
    lines = [line.strip() for line in outcome.output.splitlines() if line.strip()]
    # The exception line, not a HINT or a traceback frame that may follow it.
    errors = [line for line in lines if ERROR_LINE.match(line)]
    outcome.error = (errors or lines or [f"exit code {worker.process.returncode}"])[-1]
