"""Migrate many databases at once, each in a worker process running Django's ``migrate``.

Workers never outlive ``fleet migrate``: each asks the kernel for SIGTERM when
its parent dies (Linux), and everywhere watches a pipe from its parent, which
only the parent's end closes. A SIGINT (Ctrl-C) or SIGTERM to ``fleet migrate``
stops every worker and raises ``Interrupted`` with what each database was doing.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from enum import StrEnum
from types import FrameType
from typing import Any, cast

from django.conf import settings
from django.db import DatabaseError, connections
from django.db.migrations import Migration
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.graph import MigrationGraph
from django.db.migrations.recorder import MigrationRecorder

from dbfleet.migrating import internals, lock
from dbfleet.migrating.plan import first_line, runs_on
from dbfleet.migrating.worker import migrate_up_to_date

#: How often the runner looks at its workers.
POLL_SECONDS = 0.05
#: How long a stopped worker gets to end before it is killed.
STOP_SECONDS = 10.0
#: "django.db.utils.OperationalError: ...", "SystemCheckError: ...".
ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception)\b.*:")
#: A worker's own progress: "dbfleet-progress books.0002_x 2/15" as it starts migration 2 of 15.
PROGRESS_LINE = re.compile(r"^dbfleet-progress (?P<label>\S+) (?P<index>\d+)/(?P<total>\d+)\s*$")
#: Django's, from verbosity 1: "  Applying books.0002_x..." then " OK" (or " FAKED").
APPLYING = re.compile(r"^  Applying (?P<label>\S+)\.\.\.(?P<rest>.*)$")
APPLIED = re.compile(r"\b(OK|FAKED)\b")
#: The worker's pid of its parent: the worker ends when that process does.
PARENT_VARIABLE = "DBFLEET_WORKER_PARENT"
#: prctl(2)'s option: the signal sent when the parent (thread) dies.
PR_SET_PDEATHSIG = 1


class Result(StrEnum):
    """Where one database is in a ``migrate_all`` run; the last six are final."""

    WAITING = "waiting"
    RUNNING = "running"
    UP_TO_DATE = "up to date"
    DONE = "done"
    FAILED = "failed"
    LOCKED = "locked"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


@dataclass
class Outcome:
    """What happened on one database (and, while it runs, where it is)."""

    alias: str
    vendor: str
    result: Result
    pending: int = 0
    applied: int = 0
    seconds: float = 0.0
    output: str = ""
    error: str = ""
    #: The migration being applied (or, once stopped, the one it stopped in), if known.
    current: str = ""
    #: Migrations applied so far in this run, as the worker's output says.
    progress: int = 0
    #: Who holds the database's migration lock while the worker waits for it.
    waiting_for: str = ""
    #: Whether a migration stopped half-way may have left changes (DDL committed at once).
    may_be_half_applied: bool = False


class Watcher:
    """What ``migrate_all`` tells as it goes; these defaults ignore it all."""

    def changed(self, outcome: Outcome, running: list[str]) -> None:
        """``outcome.result`` changed (started, finished, cancelled, interrupted)."""

    def progressed(self, outcome: Outcome) -> None:
        """A migration started or finished, or the worker waits for the lock."""

    def output(self, outcome: Outcome, line: str) -> None:
        """A line of the worker's output, as it comes."""


class Interrupted(Exception):  # noqa: N818  (what happened, as KeyboardInterrupt says it)
    """``fleet migrate`` was stopped by a signal; every worker has ended."""

    def __init__(self, signum: int, outcomes: list[Outcome]) -> None:
        self.signum, self.outcomes = signum, outcomes
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class _Stop(BaseException):
    """Raised by the SIGTERM handler, as KeyboardInterrupt is for SIGINT."""

    def __init__(self, signum: int) -> None:
        self.signum = signum


@dataclass
class _Worker:
    outcome: Outcome
    process: subprocess.Popen[bytes]
    started: float
    applied_before: int
    migrations: dict[str, Migration]
    events: queue.SimpleQueue[tuple[str, bytes | None]]
    reader: threading.Thread
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    lines: list[str] = field(default_factory=list)
    partial: str = ""
    eof: bool = False
    #: Whether the output told which migrations it applied (else the records will).
    followed: bool = False
    #: When the process was first seen ended.
    ended: float = 0.0


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


def worker_environment(lock_timeout: float | None = None) -> dict[str, str]:
    """This process's environment, with its settings module, import path and worker settings."""
    if not settings.SETTINGS_MODULE:
        raise RuntimeError(
            "fleet migrate starts a worker process per database, and workers find the "
            "settings through DJANGO_SETTINGS_MODULE; settings configured in code "
            "(settings.configure()) cannot be passed on. Use a settings module."
        )
    path = [entry or os.getcwd() for entry in sys.path]
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE,
        "PYTHONPATH": os.pathsep.join(path),
        # Progress is read from the output as it comes, not when a buffer fills.
        "PYTHONUNBUFFERED": "1",
        PARENT_VARIABLE: str(os.getpid()),
    }
    if lock_timeout is not None:
        environment[lock.TIMEOUT_VARIABLE] = f"{lock_timeout:g}"
    return environment


def die_with_parent(parent: int) -> None:
    """End this worker as soon as ``parent`` (the ``fleet migrate`` that started it) ends.

    Called by dbfleet's AppConfig in a worker, before anything migrates. Linux
    sends SIGTERM on the parent's death, whatever killed it (SIGKILL included);
    elsewhere, and as well, a thread watches the worker's stdin, a pipe whose
    other end only the parent holds: end of file means the parent is gone.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # It died before prctl could see it.
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=_end_at_eof, name="dbfleet-parent-watch", daemon=True).start()


def _end_at_eof() -> None:
    with suppress(OSError):
        while os.read(0, 1024):
            pass  # The parent never writes; nothing to do with what comes.
    os.kill(os.getpid(), signal.SIGTERM)


def pending_work(alias: str) -> tuple[list[Migration], MigrationExecutor]:
    """(pending migrations, the executor that planned them) on ``alias``; raises DatabaseError."""
    executor = MigrationExecutor(connections[alias])
    plan = [
        migration for migration, _ in executor.migration_plan(executor.loader.graph.leaf_nodes())
    ]
    return plan, executor


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
    lock_timeout: float | None = None,
    watcher: Watcher | None = None,
) -> list[Outcome]:
    """Migrate ``aliases`` with at most ``jobs`` workers at once; never raises for a database.

    Databases with nothing to apply are found here and get no worker; a database
    that cannot be reached fails here. A database whose pending migrations depend
    on migrations pending on another starts after that one is done. With
    ``fail_fast`` no worker starts after a failure; running ones finish, because
    stopping ``migrate`` half-way leaves MySQL's committed DDL unrecorded. Each
    worker waits up to ``lock_timeout`` s (None: the lock's default) for another
    migrator of its database. SIGINT or SIGTERM stops every worker and raises
    ``Interrupted``; ``watcher`` is told of every start, end, step and line.
    """
    watcher = watcher or Watcher()
    environment = worker_environment(lock_timeout)
    outcomes = {
        alias: Outcome(alias, connections[alias].vendor, Result.WAITING) for alias in aliases
    }
    running: dict[str, _Worker] = {}
    main = threading.current_thread() is threading.main_thread()
    # SIGTERM ends the run as Ctrl-C does: workers stopped, a report (the main thread only).
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    if main:
        signal.signal(signal.SIGTERM, _raise_stop)
    try:
        _run(outcomes, running, environment, jobs, fake, fail_fast, skip_checks, verbosity, watcher)
    except (KeyboardInterrupt, _Stop) as stop:
        signum = stop.signum if isinstance(stop, _Stop) else signal.SIGINT
        if main:  # A second Ctrl-C would only cut the report short; stopping is bounded.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop_all(outcomes, running, watcher)
        raise Interrupted(signum, list(outcomes.values())) from None
    finally:
        for worker in running.values():  # Only after an unexpected error: none outlives us.
            _end(worker)
        if main:
            for number, handler in handlers.items():
                # None: set outside Python, which only the default can stand for here.
                signal.signal(number, signal.SIG_DFL if handler is None else handler)
    return list(outcomes.values())


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def _run(
    outcomes: dict[str, Outcome],
    running: dict[str, _Worker],
    environment: dict[str, str],
    jobs: int,
    fake: bool,
    fail_fast: bool,
    skip_checks: bool,
    verbosity: int,
    watcher: Watcher,
) -> None:
    applied_before: dict[str, int] = {}
    work: dict[str, list[Migration]] = {}
    graph: MigrationGraph | None = None
    states: dict[Any, Any] = {}  # The rendered states up-to-date databases share.
    for alias, outcome in outcomes.items():
        try:
            pending, executor = pending_work(alias)
        except DatabaseError as error:
            outcome.result, outcome.error = Result.FAILED, first_line(error)
            watcher.changed(outcome, [])
            continue
        finally:
            # Workers do the work; an idle connection here would only hold locks (SQLite).
            connections[alias].close()
        graph = executor.loader.graph
        applied_before[alias] = len(executor.loader.applied_migrations)
        outcome.pending = len(pending)
        if pending:
            work[alias] = pending
        else:
            outcome.result = Result.UP_TO_DATE
            try:
                # pre_migrate and post_migrate, as `migrate --database` sends them here too.
                # Its executor has read the disk and the records: not again.
                outcome.output = migrate_up_to_date(
                    alias, verbosity=verbosity, states=states, executor=executor
                )
            except Exception as error:  # noqa: BLE001  (a receiver's; fails this database only)
                outcome.result, outcome.error = Result.FAILED, first_line(error)
            finally:
                connections[alias].close()
            watcher.changed(outcome, [])
    waits = cross_database_waits(work, graph) if graph is not None else {}

    queue_ = list(work)
    events: queue.SimpleQueue[tuple[str, bytes | None]] = queue.SimpleQueue()
    stop = fail_fast and any(outcome.result is Result.FAILED for outcome in outcomes.values())
    # Progress lines need a worker that prints them: Django's migrate does from verbosity 1.
    worker_verbosity = max(1, verbosity)
    while queue_ or running:
        ready = [alias for alias in queue_ if not waits[alias] & {*queue_, *running}]
        if not ready and not running:
            ready = queue_[:1]  # A cycle of waits: fall back to the given order.
        for alias in ready[: max(0, jobs - len(running))] if not stop else []:
            queue_.remove(alias)
            command = worker_command(
                alias, fake=fake, verbosity=worker_verbosity, skip_checks=skip_checks
            )
            running[alias] = _start(
                outcomes[alias], command, environment, applied_before[alias], work[alias], events
            )
            watcher.changed(outcomes[alias], list(running))
        if stop:
            for alias in queue_:
                outcomes[alias].result = Result.CANCELLED
                watcher.changed(outcomes[alias], list(running))
            queue_.clear()
        _read(running, events, watcher, POLL_SECONDS)
        for alias, worker in list(running.items()):
            if worker.process.poll() is None:
                continue
            worker.ended = worker.ended or time.monotonic()
            # A process the worker started may hold its output open: wait for it only so long.
            if worker.eof or time.monotonic() - worker.ended > STOP_SECONDS:
                del running[alias]
                _finish(worker)
                watcher.changed(worker.outcome, list(running))
                stop = stop or (fail_fast and worker.outcome.result is not Result.DONE)


def _start(
    outcome: Outcome,
    command: list[str],
    environment: dict[str, str],
    applied: int,
    pending: list[Migration],
    events: queue.SimpleQueue[tuple[str, bytes | None]],
) -> _Worker:
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # Never written to: the worker ends when this pipe does (die_with_parent).
        stdin=subprocess.PIPE,
        env=environment,
        # Ctrl-C reaches this process alone, which stops the workers and reports.
        start_new_session=True,
    )
    assert process.stdout is not None
    reader = threading.Thread(
        target=_pump,
        args=(outcome.alias, process.stdout.fileno(), events),
        name=f"dbfleet-output-{outcome.alias}",
        daemon=True,
    )
    reader.start()
    outcome.result = Result.RUNNING
    migrations = {f"{m.app_label}.{m.name}": m for m in pending}
    return _Worker(outcome, process, time.monotonic(), applied, migrations, events, reader)


def _pump(alias: str, fd: int, events: queue.SimpleQueue[tuple[str, bytes | None]]) -> None:
    """Pass a worker's output on as it comes; None at its end."""
    try:
        while chunk := os.read(fd, 65536):
            events.put((alias, chunk))
    except OSError:
        pass  # Closed under us: the worker has been ended.
    finally:
        events.put((alias, None))


def _read(
    running: dict[str, _Worker],
    events: queue.SimpleQueue[tuple[str, bytes | None]],
    watcher: Watcher,
    timeout: float,
) -> None:
    """Take in the output that came, waiting up to ``timeout`` for the first of it."""
    try:
        event = events.get(timeout=timeout)
    except queue.Empty:
        return
    while True:
        alias, chunk = event
        if alias in running:
            _take(running[alias], chunk, watcher)
        try:
            event = events.get_nowait()
        except queue.Empty:
            return


def _take(worker: _Worker, chunk: bytes | None, watcher: Watcher) -> None:
    """Split a worker's output into lines, and follow its progress in them."""
    outcome = worker.outcome
    if chunk is None:
        worker.eof = True
        text = worker.partial + worker.decoder.decode(b"", final=True)
        lines, worker.partial = ([text] if text else []), ""
    else:
        *lines, worker.partial = (worker.partial + worker.decoder.decode(chunk)).split("\n")
    before = (outcome.current, outcome.progress, outcome.waiting_for)
    for line in lines:
        if progress := PROGRESS_LINE.match(line):
            # Migration i starts: the ones before it are applied.
            outcome.current = progress["label"]
            outcome.progress = int(progress["index"]) - 1
            outcome.waiting_for, worker.followed = "", True
            continue  # For the runner, not for people.
        worker.lines.append(line)
        watcher.output(outcome, line)
        if waiting := lock.WAITING.match(line):
            outcome.waiting_for = waiting["holder"]
        elif line.startswith("Running migrations:"):
            outcome.waiting_for = ""  # Printed once migrate holds the lock.
        elif line.strip() == "No migrations to apply.":
            worker.followed = True  # Another migrator applied them while this one waited.
        elif applying := APPLYING.match(line):
            outcome.waiting_for, worker.followed = "", True
            outcome.current = applying["label"]
            if APPLIED.search(applying["rest"]):
                outcome.current, outcome.progress = "", outcome.progress + 1
        elif outcome.current and APPLIED.match(line.strip()):
            # The migration printed lines of its own before migrate's " OK".
            outcome.current, outcome.progress = "", outcome.progress + 1
    # A migration being applied: "  Applying books.0002_x..." with no end of line yet.
    if applying := APPLYING.match(worker.partial):
        outcome.current, outcome.waiting_for = applying["label"], ""
    if (outcome.current, outcome.progress, outcome.waiting_for) != before:
        watcher.progressed(outcome)


def _applied_since(worker: _Worker) -> None:
    """How many migrations the worker applied: as its output says, else as the records do.

    The records alone would count what another migrator applied meanwhile.
    """
    outcome = worker.outcome
    if worker.followed:
        if worker.process.returncode == 0 and outcome.current:
            outcome.progress += 1  # The last "dbfleet-progress" line's migration is done.
        outcome.applied = outcome.progress
        return
    try:
        applied_now = len(MigrationRecorder(connections[outcome.alias]).applied_migrations())
        outcome.applied = applied_now - worker.applied_before
    except DatabaseError:
        pass  # The worker's output says what went wrong.
    finally:
        with suppress(DatabaseError):
            connections[outcome.alias].close()


def _finish(worker: _Worker) -> None:
    outcome = worker.outcome
    outcome.seconds = time.monotonic() - worker.started
    outcome.output = "\n".join(worker.lines)
    _end(worker)
    _applied_since(worker)
    outcome.waiting_for = ""
    code = worker.process.returncode
    if code == 0:
        outcome.result, outcome.current = Result.DONE, ""
        return
    outcome.result = Result.LOCKED if code == lock.LOCKED_EXIT else Result.FAILED
    lines = [line.strip() for line in worker.lines if line.strip()]
    # The exception line, not a HINT or a traceback frame that may follow it.
    errors = [line for line in lines if ERROR_LINE.match(line)]
    error = (errors or lines or [f"exit code {code}"])[-1]
    outcome.error = re.sub(r"^(CommandError|MigrationLocked): ", "", error)


def _end(worker: _Worker) -> None:
    """Make sure the worker has ended, then close its pipes."""
    process = worker.process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    worker.reader.join(STOP_SECONDS)
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            with suppress(OSError):
                pipe.close()


def _stop_all(outcomes: dict[str, Outcome], running: dict[str, _Worker], watcher: Watcher) -> None:
    """Stop every worker; say where each database was."""
    stopped = dict(running)
    running.clear()
    for worker in stopped.values():
        if worker.process.poll() is None:
            worker.process.terminate()
    for worker in stopped.values():
        _end(worker)
    if stopped:  # What they said before they ended (their readers are done).
        _read(stopped, next(iter(stopped.values())).events, Watcher(), 0)
    for alias, worker in stopped.items():
        outcome = worker.outcome
        outcome.seconds = time.monotonic() - worker.started
        outcome.output = "\n".join(worker.lines + [worker.partial] * bool(worker.partial))
        outcome.waiting_for = ""
        _applied_since(worker)
        if worker.process.returncode == 0:
            outcome.result, outcome.current = Result.DONE, ""
        else:
            outcome.result = Result.INTERRUPTED
            migration = worker.migrations.get(outcome.current)
            rolls_back = connections[alias].features.can_rollback_ddl
            outcome.may_be_half_applied = migration is not None and not (
                rolls_back and migration.atomic
            )
        watcher.changed(outcome, [])
    for outcome in outcomes.values():
        if outcome.result is Result.WAITING:
            outcome.result = Result.CANCELLED
            watcher.changed(outcome, [])
