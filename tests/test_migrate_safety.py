"""``fleet migrate`` on day two: one migrator per database, workers that die with their parent,
progress as it runs, Django's options anywhere, and errors that keep the summary readable.

Real processes and real signals: ``fleet migrate`` runs in a subprocess (its own
session, as a shell would run it), its workers are found through the files the
``tests.slow`` migration leaves, and they are looked for in ``/proc`` after the
parent is gone. The lock is held for real on the configuration's engines
(SQLite lock files, PostgreSQL advisory locks, MariaDB ``GET_LOCK``).
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.utils import ConnectionHandler

from dbfleet.migrating import lock
from tests.settings import ENGINES, database
from tests.test_fleet_migrate import ROOT, Project, fresh_project

#: The slow app lives on loans: default and books finish while it waits.
SLOW = "tests.slow=loans"
#: How long a test waits for a process to do what it must; far more than it needs.
DEADLINE = 60.0
#: How soon a worker must be gone once its parent is.
GONE_WITHIN = 10.0
ANSI = re.compile(r"\x1b\[")
#: Colours and cursor moves, to read a terminal's text.
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def project(tmp_path: Path, django_db_blocker: Any) -> Iterator[Project]:
    directory = tmp_path / "databases"
    directory.mkdir()
    prefix = os.environ.get("DBFLEET_TEST_PREFIX", "dbfleet") + "_safety"
    yield from fresh_project(directory, django_db_blocker, prefix)


@pytest.fixture
def slow(tmp_path: Path) -> Path:
    """Where the slow migration says it started (``loans.<pid>.started``) and waits for ``go``."""
    directory = tmp_path / "slow"
    directory.mkdir()
    return directory


class Running:
    """A ``python -m django`` process, its stdout read as it comes (stderr to a file)."""

    def __init__(self, project: Project, args: tuple[str, ...], env: dict[str, str]) -> None:
        self.stderr_path = project.directory / f"stderr-{time.monotonic_ns()}"
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "django", *args],
                env=project.environment(**env),
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=ROOT,
                # As a shell runs a command: a process group of its own, which Ctrl-C signals.
                start_new_session=True,
            )
        assert self.process.stdout is not None
        self.fd = self.process.stdout.fileno()
        self.text = ""
        self.eof = False

    def read(self, seconds: float) -> None:
        """Take in what the process wrote, waiting up to ``seconds`` for something."""
        if self.eof:
            return
        ready, _, _ = select.select([self.fd], [], [], seconds)
        if ready:
            chunk = os.read(self.fd, 65536)
            self.eof = not chunk
            self.text += chunk.decode(errors="replace")

    def wait_for(self, pattern: str, seconds: float = DEADLINE) -> re.Match[str]:
        """The first match of ``pattern`` in stdout, once it is there."""
        deadline = time.monotonic() + seconds
        while not (found := re.search(pattern, self.text)):
            if self.eof or time.monotonic() > deadline:
                raise AssertionError(
                    f"{pattern!r} not in the output after {seconds:g} s:\n{self.text}"
                    f"\nstderr:\n{self.stderr_path.read_text()}"
                )
            self.read(0.2)
        return found

    def finish(self, seconds: float = DEADLINE) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) once the process has ended."""
        deadline = time.monotonic() + seconds
        while not self.eof:
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"still running after {seconds:g} s:\n{self.text}")
            self.read(0.2)
        code = self.process.wait(max(0.1, deadline - time.monotonic()))
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code, self.text, self.stderr_path.read_text()


@contextmanager
def running(project: Project, *args: str, **env: str) -> Iterator[Running]:
    """``python -m django *args`` while the block runs; killed (group and all) if left running."""
    process = Running(project, args, env)
    try:
        yield process
    finally:
        if process.process.poll() is None:
            os.killpg(process.process.pid, signal.SIGKILL)
            process.process.wait()


def started_worker(slow: Path, alias: str = "loans", seconds: float = DEADLINE) -> int:
    """The pid of the worker that has reached the slow migration on ``alias``."""
    deadline = time.monotonic() + seconds
    while not (markers := sorted(slow.glob(f"{alias}.*.started"))):
        assert time.monotonic() < deadline, f"no worker reached the slow migration on {alias}"
        time.sleep(0.05)
    return int(markers[0].name.split(".")[1])


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie has ended: only its exit status is left)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def gone(pid: int, seconds: float = GONE_WITHIN) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def django(
    project: Project, *args: str, extra: dict[str, str], **env: str
) -> subprocess.CompletedProcess[str]:
    """``project.django``, with ``extra`` variables in the environment."""
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        env={**project.environment(**env), **extra},
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=ROOT,
    )


def connections_of(project: Project) -> ConnectionHandler:
    return ConnectionHandler(
        {alias: database(alias, project.prefix, str(project.directory)) for alias in ENGINES}
    )


def recorded(project: Project, alias: str, app: str) -> list[str]:
    """The migrations of ``app`` recorded on ``alias``, one entry per row (duplicates kept)."""
    handler = connections_of(project)
    with project.blocker.unblock():
        try:
            with handler[alias].cursor() as cursor:
                if "django_migrations" not in handler[alias].introspection.table_names(cursor):
                    return []
                cursor.execute("SELECT name FROM django_migrations WHERE app = %s", [app])
                return sorted(name for (name,) in cursor.fetchall())
        finally:
            handler.close_all()


def session_id(connection: BaseDatabaseWrapper) -> str:
    """How the engine names this session to others: what the lock's holder message shows."""
    engine = ENGINES[connection.alias]
    if engine == "sqlite":
        return f"process {os.getpid()} on "
    with connection.cursor() as cursor:
        if engine == "postgres":
            cursor.execute("SELECT pg_backend_pid()")
            return f"PostgreSQL session pid {cursor.fetchone()[0]} "
        cursor.execute("SELECT CONNECTION_ID()")
        return f"connection id {cursor.fetchone()[0]} "


def end_hint(alias: str) -> str:
    """The statement (or command) the holder message offers to end a stuck holder."""
    return {"sqlite": "kill ", "postgres": "pg_terminate_backend(", "mysql": "KILL "}[
        ENGINES[alias]
    ]


# --- Safety 2: workers die with their parent; Ctrl-C and SIGTERM report -------------------


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_workers_end_when_fleet_migrate_is_killed(
    project: Project, slow: Path, signum: signal.Signals
) -> None:
    with running(project, "fleet", "migrate", apps=SLOW, slow_dir=str(slow)) as fleet:
        worker = started_worker(slow)
        assert alive(worker)
        os.kill(fleet.process.pid, signum)
        code, stdout, stderr = fleet.finish()
        assert gone(worker), f"worker {worker} still runs after its parent got {signum.name}"
    assert code == -signal.SIGKILL if signum == signal.SIGKILL else code == 128 + signum
    if signum == signal.SIGTERM:
        assert "Interrupted by SIGTERM: every worker is stopped." in stderr
        assert "loans: interrupted while applying slow.0002_nap" in stderr
        assert "Traceback" not in stderr + stdout
    assert "0002_nap" not in recorded(project, "loans", "slow")


def test_ctrl_c_says_where_each_database_stopped(project: Project, slow: Path) -> None:
    with running(
        project, "fleet", "migrate", "--jobs", "3", apps=SLOW, slow_dir=str(slow)
    ) as fleet:
        worker = started_worker(slow)
        fleet.wait_for(r"done +books")
        fleet.wait_for(r"done +default")
        os.killpg(fleet.process.pid, signal.SIGINT)  # What a terminal does on Ctrl-C.
        code, stdout, stderr = fleet.finish()
        assert gone(worker)
    assert code == 128 + signal.SIGINT, stdout + stderr
    assert "Traceback" not in stdout + stderr and "KeyboardInterrupt" not in stdout + stderr
    assert "Interrupted by SIGINT (Ctrl-C): every worker is stopped." in stderr
    assert re.search(r"default: done \(\d+ applied\)", stderr)
    assert re.search(r"books: done \(\d+ applied\)", stderr)
    line = next(line for line in stderr.splitlines() if line.startswith("  loans:"))
    where = re.match(
        r"  loans: interrupted while applying slow\.0002_nap \((\d+) of (\d+) applied before it\)",
        line,
    )
    assert where and int(where[1]) == int(where[2]) - 2, line
    if ENGINES["loans"] == "mysql":  # DDL commits at once.
        assert "slow.0002_nap may be half-applied" in line
        assert "`manage.py fleet status` shows" in stderr
    else:
        assert "slow.0002_nap was rolled back: nothing of it stays." in line
    assert "Run `manage.py fleet migrate` again to finish" in stderr
    table = stdout.split("result\n")[-1]
    assert re.search(r"^loans .* interrupted$", table, re.MULTILINE), table
    assert "0001_initial" in recorded(project, "loans", "slow")
    assert "0002_nap" not in recorded(project, "loans", "slow")


# --- Safety 1: one migrator per database -----------------------------------------------------


def test_a_second_run_waits_for_the_first_then_finds_nothing_to_do(
    project: Project, slow: Path
) -> None:
    with running(project, "fleet", "migrate", apps=SLOW, slow_dir=str(slow)) as first:
        started_worker(slow)
        with running(
            project, "fleet", "migrate", "--database", "loans", apps=SLOW, slow_dir=str(slow)
        ) as second:
            waiting = second.wait_for(r"waiting +loans +for the migration lock, held by (.*)")
            assert end_hint("loans") in waiting[1]
            (slow / "go").touch()
            code, stdout, stderr = first.finish()
            assert code == 0, stdout + stderr
            code, stdout, stderr = second.finish()
    assert code == 0, stdout + stderr
    assert re.search(r"^loans .* 0 .* done$", stdout.split("result\n")[-1], re.MULTILINE), stdout
    # Each migration applied once: the second run neither napped nor added the column again.
    assert len(list(slow.glob("loans.*.started"))) == 1
    assert recorded(project, "loans", "slow") == ["0001_initial", "0002_nap", "0003_size"]


def test_the_holder_is_named_when_the_wait_ends(project: Project, slow: Path) -> None:
    with running(project, "fleet", "migrate", apps=SLOW, slow_dir=str(slow)) as first:
        worker = started_worker(slow)
        second = project.fleet("migrate", "--database", "loans", "--lock-timeout", "0", apps=SLOW)
        third = django(
            project, "migrate", "--database", "loans", "--noinput",
            extra={lock.TIMEOUT_VARIABLE: "0"}, apps=SLOW,
        )  # fmt: skip
        (slow / "go").touch()
        assert first.finish()[0] == 0
    assert second.returncode == lock.LOCKED_EXIT, second.stdout + second.stderr
    message = second.stderr
    assert (
        "Migrating failed on loans (Nothing was migrated on 'loans': another migrator " in message
    )
    assert "holds its migration lock" in message and end_hint("loans") in message
    if ENGINES["loans"] == "sqlite":
        assert f"process {worker} on " in message  # The worker itself holds the lock file.
    assert "Waited 0 s" in message and "Traceback" not in message
    assert re.search(r"^loans .* locked: Nothing was migrated", second.stdout, re.MULTILINE)
    # A plain migrate (default wait shortened through the environment) is stopped the same way.
    assert third.returncode == lock.LOCKED_EXIT, third.stdout + third.stderr
    assert "Nothing was migrated on 'loans'" in third.stderr and "Traceback" not in third.stderr


def test_plain_migrate_and_fleet_migrate_both_wait_for_the_lock(project: Project) -> None:
    """The test holds the lock as another migrator would; both commands name it and stop."""
    handler = connections_of(project)
    with project.blocker.unblock():
        holder = handler["books"]
        try:
            lock.acquire(holder, timeout=0)
            me = session_id(holder)
            fleet = project.fleet("migrate", "--database", "books", "--lock-timeout", "0.5")
            plain = django(
                project, "migrate", "--database", "books", "--noinput",
                extra={lock.TIMEOUT_VARIABLE: "0.5"},
            )  # fmt: skip
        finally:
            lock.release(holder)
            handler.close_all()
    for result in (fleet, plain):
        assert result.returncode == lock.LOCKED_EXIT, result.stdout + result.stderr
        assert me in result.stderr, (me, result.stderr)
        assert "Traceback" not in result.stderr
    waiting = "Waiting up to 0.5 s for the migration lock on 'books', held by .*" + re.escape(me)
    assert re.search(waiting, plain.stdout), plain.stdout
    assert "MigrationLocked: Nothing was migrated on 'books'" in plain.stderr
    assert recorded(project, "books", "library") == []
    # Released: the same command goes through.
    assert project.fleet("migrate", "--database", "books").returncode == 0
    assert "0002_email_and_title" in recorded(project, "books", "library")


@pytest.mark.parametrize("part", ["all", "part"])
def test_a_plan_made_while_waiting_is_checked_again(project: Project, part: str) -> None:
    """What another migrator applied while this one waited is not applied again."""
    assert project.fleet("migrate", "--database", "loans").returncode == 0
    handler = connections_of(project)
    with project.blocker.unblock():
        holder = handler["loans"]
        lock.acquire(holder, timeout=0)
        names = ["0001_initial", "0002_nap", "0003_size"][: 3 if part == "all" else 1]
        with running(project, "migrate", "--database", "loans", "--noinput", apps=SLOW) as migrate:
            try:
                migrate.wait_for("Waiting up to 30 s for the migration lock on 'loans'")
                # As the other migrator would: slow's migrations recorded, under the lock.
                with holder.cursor() as cursor:
                    for name in names:
                        cursor.execute(
                            "INSERT INTO django_migrations (app, name, applied) "
                            "VALUES ('slow', %s, CURRENT_TIMESTAMP)",
                            [name],
                        )
            finally:
                lock.release(holder)
                handler.close_all()
            code, stdout, stderr = migrate.finish()
    if part == "all":
        assert code == 0, stdout + stderr
        assert "No migrations to apply." in stdout
    else:
        assert code == 1, stdout + stderr
        assert "another one applied part of its plan (slow.0001_initial)" in stderr
        assert "Run migrate again" in stderr and "Traceback" not in stderr
    assert recorded(project, "loans", "slow") == sorted(names)  # Nothing twice.


# --- Live progress ---------------------------------------------------------------------------


def test_v2_streams_each_workers_output_as_it_comes(project: Project, slow: Path) -> None:
    with running(project, "fleet", "migrate", "-v", "2", apps=SLOW, slow_dir=str(slow)) as fleet:
        worker = started_worker(slow)
        fleet.wait_for(r"\n  loans +\|   Applying slow\.0001_initial\.\.\. OK")
        assert alive(worker)  # Shown while the worker still runs, not when it is done.
        (slow / "go").touch()
        code, stdout, stderr = fleet.finish()
    assert code == 0, stdout + stderr
    assert re.search(r"\n  default +\|   Applying contenttypes\.0001_initial\.\.\. OK", stdout)
    assert "Output of" not in stdout  # Not a second time at the end.
    assert not ANSI.search(stdout)  # Not a terminal: plain lines.
    assert "dbfleet-progress" not in stdout


def test_a_terminal_shows_each_database_s_progress_live(project: Project, slow: Path) -> None:
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "django", "fleet", "migrate", "--jobs", "3"],
        env={**project.environment(apps=SLOW, slow_dir=str(slow)), "COLUMNS": "160"},
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        cwd=ROOT,
        start_new_session=True,
    )
    os.close(secondary)
    screen = ""

    def wait_for(pattern: str) -> re.Match[str]:
        nonlocal screen
        deadline = time.monotonic() + DEADLINE
        while not (found := re.search(pattern, ESCAPES.sub("", screen))):
            assert time.monotonic() < deadline, f"{pattern!r} never shown:\n{screen}"
            if select.select([primary], [], [], 0.2)[0]:
                try:
                    screen += os.read(primary, 65536).decode(errors="replace")
                except OSError:  # EIO: the process has closed the terminal.
                    raise AssertionError(f"{pattern!r} never shown:\n{screen}") from None
        return found

    try:
        started_worker(slow)
        # While loans waits in slow.0002_nap: its bar, its count and the migration it applies.
        applying = wait_for(r"loans +\S* +(\d+)/(\d+) .*applying slow\.0002_nap")
        done, pending = int(applying[1]), int(applying[2])
        assert done == pending - 2, applying[0]
        assert process.poll() is None
        (slow / "go").touch()
        wait_for(rf"loans +\S* +{pending}/{pending}")
        wait_for(r"database +engine +applied +seconds +result")
        assert process.wait(DEADLINE) == 0, screen
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.close(primary)
    assert ANSI.search(screen)  # Drawn, as rich draws on a terminal.


# --- Django's options after the subcommand; --jobs; --help and the README --------------------


def test_djangos_options_work_after_the_subcommand(project: Project, tmp_path: Path) -> None:
    environment = {**project.environment()}
    del environment["DJANGO_SETTINGS_MODULE"]
    environment["PYTHONPATH"] = str(ROOT / "src")  # tests/ only through --pythonpath

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "django", *args],
            env=environment,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            cwd=tmp_path,
        )

    common = ("--settings", "tests.fleet_settings", "--pythonpath", str(ROOT))
    for args in (
        ("fleet", *common, "migrate", "--check"),
        ("fleet", "migrate", "--check", *common),
    ):
        result = run(*args)
        assert result.returncode == 1, result.stderr  # Pending: the check's own exit code.
        assert "default: " in result.stdout and "pending" in result.stdout, result.stderr
    assert run("fleet", "migrate", "--check", "-v", "0", *common).returncode == 1
    colored = run("fleet", "migrate", "--plan", "--force-color", *common)
    assert colored.returncode == 0 and ANSI.search(colored.stdout), colored.stderr
    plain = run("fleet", "migrate", "--plan", "--no-color", *common)
    assert plain.returncode == 0 and not ANSI.search(plain.stdout), plain.stderr
    failed = run("fleet", "migrate", "--jobs", "0", "--traceback", *common)
    assert "Traceback" in failed.stderr and "CommandError: --jobs 0" in failed.stderr
    assert "Traceback" not in run("fleet", "migrate", "--jobs", "0", *common).stderr


@pytest.mark.parametrize("jobs", ["0", "-2"])
def test_jobs_must_be_one_or_more(project: Project, jobs: str) -> None:
    result = project.fleet("migrate", "--jobs", jobs)
    assert result.returncode == 2
    assert f"CommandError: --jobs {jobs}: it is how many databases are migrated at once" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    with pytest.raises(CommandError, match=f"--jobs {jobs}"):
        call_command("fleet", "migrate", "--jobs", jobs)


def test_lock_timeout_must_not_be_negative(project: Project) -> None:
    result = project.fleet("migrate", "--lock-timeout", "-1")
    assert result.returncode == 2
    assert "CommandError: --lock-timeout -1: give 0" in result.stderr


def help_options(text: str) -> dict[str, str]:
    """``{"--jobs N": "Databases migrated at once ..."}`` from argparse's option list."""
    options: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        if found := re.match(r"^  (-\S.*?)(?:  +(\S.*))?$", line):
            current = found[1]
            options[current] = found[2] or ""
        elif current and line.startswith(" " * 6) and line.strip():
            options[current] = f"{options[current]} {line.strip()}".strip()
        else:
            current = ""
    return options


def test_help_and_the_readme_say_the_same(project: Project) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "django", "fleet", "migrate", "--help"],
        env={**project.environment(), "COLUMNS": "1000"},
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    everyone = {"-h, --help", "--settings SETTINGS", "--pythonpath PYTHONPATH", "--traceback"}
    everyone |= {"--no-color", "--force-color", "-v {0,1,2,3}, --verbosity {0,1,2,3}"}
    ours = {
        option: text
        for option, text in help_options(result.stdout).items()
        if option not in everyone
    }
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### `manage.py fleet migrate`")[1].split("\n### ")[0]
    block = section.split("$ python manage.py fleet migrate --help")[1].split("```")[0]
    shown = {option: text for option, text in help_options(block).items() if option not in everyone}
    assert shown == ours
    for option in ("--settings", "--pythonpath", "--traceback", "--no-color", "--force-color"):
        assert f"`{option}`" in section


# --- The summary table -----------------------------------------------------------------------


def test_a_long_error_is_cut_in_the_table_and_shown_in_full_below(project: Project) -> None:
    message = "the nap went wrong: " + " ".join(f"reason{index}" for index in range(60))
    result = project.fleet("migrate", apps=SLOW, slow_fail=message)
    assert result.returncode == 1
    table, _, below = result.stdout.split("result\n")[-1].partition("\nErrors in full:\n")
    assert all(len(line) <= 120 for line in table.splitlines()), table
    assert re.search(
        r"^loans .* failed: RuntimeError: the nap went wrong: reason0 .*…$", table, re.M
    )
    assert f"  loans: RuntimeError: {message}" in below.splitlines()
