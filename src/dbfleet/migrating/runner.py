"""Migrate many databases at once, each in a worker process running Django's ``migrate``."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO

from django.conf import settings
from django.db import DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.recorder import MigrationRecorder

from dbfleet.migrating.plan import first_line

#: How often the runner looks at its workers.
POLL_SECONDS = 0.05


@dataclass
class Outcome:
    """What happened on one database."""

    alias: str
    vendor: str
    #: "up to date", "done", "failed" or "cancelled".
    result: str
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


def pending_count(alias: str) -> tuple[int, int]:
    """(pending, applied) migrations on ``alias``; raises DatabaseError when unreachable."""
    executor = MigrationExecutor(connections[alias])
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return len(plan), len(executor.loader.applied_migrations)


def worker_command(alias: str, *, fake: bool, verbosity: int) -> list[str]:
    """Django's own migrate for one database, in a fresh interpreter."""
    command = [sys.executable, "-m", "django", "migrate", "--database", alias, "--noinput"]
    command += ["--verbosity", str(verbosity)] + (["--fake"] if fake else [])
    return command


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


def migrate_all(
    aliases: Iterable[str],
    *,
    jobs: int,
    fake: bool = False,
    fail_fast: bool = False,
    verbosity: int = 1,
    report: Callable[[Outcome, list[str]], None] = lambda outcome, running: None,
) -> list[Outcome]:
    """Migrate ``aliases`` with at most ``jobs`` workers at once; never raises for a database.

    Databases with nothing to apply are found here and get no worker; a database
    that cannot be reached fails here. ``report`` is called as each database
    starts and ends, with the aliases still running.
    """
    environment = worker_environment()
    outcomes: dict[str, Outcome] = {}
    queue: list[tuple[Outcome, int]] = []
    for alias in aliases:
        outcome = Outcome(alias, connections[alias].vendor, "waiting")
        outcomes[alias] = outcome
        try:
            outcome.pending, applied = pending_count(alias)
        except DatabaseError as error:
            outcome.result, outcome.error = "failed", first_line(error)
            report(outcome, [])
            continue
        finally:
            # Workers do the work; an idle connection here would only hold locks (SQLite).
            connections[alias].close()
        if outcome.pending:
            queue.append((outcome, applied))
        else:
            outcome.result = "up to date"
            report(outcome, [])

    running: dict[str, _Worker] = {}
    stop = fail_fast and any(outcome.result == "failed" for outcome in outcomes.values())
    while queue or running:
        while queue and len(running) < jobs and not stop:
            outcome, applied = queue.pop(0)
            log = tempfile.TemporaryFile()  # noqa: SIM115  (closed in _finish)
            process = subprocess.Popen(
                worker_command(outcome.alias, fake=fake, verbosity=verbosity),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=environment,
            )
            running[outcome.alias] = _Worker(outcome, process, log, time.monotonic(), applied)
            outcome.result = "running"
            report(outcome, list(running))
        if stop:
            for outcome, _ in queue:
                outcome.result = "cancelled"
                report(outcome, list(running))
            queue.clear()
        time.sleep(POLL_SECONDS)
        for alias, worker in list(running.items()):
            if worker.process.poll() is None:
                if stop:
                    worker.process.terminate()
                continue
            del running[alias]
            _finish(worker, cancelled=stop)
            report(worker.outcome, list(running))
            stop = stop or (fail_fast and worker.outcome.result == "failed")
    return list(outcomes.values())


def _finish(worker: _Worker, *, cancelled: bool) -> None:
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
        outcome.result = "done"
    elif cancelled and worker.process.returncode < 0:
        outcome.result = "cancelled"
    else:
        outcome.result = "failed"
        lines = [line for line in outcome.output.splitlines() if line.strip()]
        outcome.error = lines[-1].strip() if lines else f"exit code {worker.process.returncode}"
