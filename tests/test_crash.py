"""Kill a process in the middle of two-phase commits with SIGKILL; ``fleet recover`` settles it.

A child process (``tests/crash/child.py``) commits two-phase transactions over
two databases: PostgreSQL + MariaDB and PostgreSQL + PostgreSQL, each with and
without ``DEFAULT_DATABASE`` (the decision log) among them. It is killed at
every step of the protocol, then at random moments; each time, after
``fleet recover``, every database must hold the same transactions and no
prepared transaction may be left.

These tests bring their own databases (``dbfleet_crash_*``, after
``DBFLEET_TEST_PREFIX``), so they run in one configuration only, ``mixed``,
which has both servers (see conftest.py). PostgreSQL must have prepared
transactions turned on.

Every read of the child's output has a deadline: a child that hangs or dies
is killed, and the test fails with what it printed.
"""

from __future__ import annotations

import itertools
import os
import random
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import IO, Any, NoReturn

import pytest

from tests.crash.settings import ENGINES, PREFIX
from tests.servers import SERVER_URLS, recreate, server_connection

pytestmark = pytest.mark.prepared_transactions

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.crash.settings"}
#: Seconds the child may take to start (Django's setup) and to reach each next step.
START_SECONDS = 60
STEP_SECONDS = 30

SCENARIOS = {
    "postgres+mariadb": ("pg2", "maria"),
    "log-postgres+mariadb": ("default", "maria"),
    "postgres+postgres": ("pg2", "pg3"),
    "log-postgres+postgres": ("default", "pg2"),
}


def protocol_steps(aliases: tuple[str, ...]) -> list[str]:
    """The steps the child pauses at, in order, for one transaction over ``aliases``."""
    prepared = [alias for alias in aliases if alias != "default"]
    return [
        "write",
        *(f"prepare {alias}" for alias in prepared),
        "decide",
        *(f"commit {alias}" for alias in prepared),
        "done",
    ]


def connect(alias: str) -> Any:
    return server_connection(SERVER_URLS[ENGINES[alias]], f"{PREFIX}_{alias}")


def keys(alias: str) -> set[int]:
    with closing(connect(alias)) as connection:
        cursor = connection.cursor()
        cursor.execute("SELECT id FROM ledger")
        return {int(key) for (key,) in cursor.fetchall()}


def leftovers() -> tuple[list[tuple[str, str]], list[tuple[str, str, int]]]:
    """Prepared transactions on the crash databases: PostgreSQL (gid, database), MariaDB xids."""
    with closing(server_connection(SERVER_URLS["postgres"])) as connection:
        cursor = connection.cursor()
        cursor.execute(
            "SELECT gid, database FROM pg_prepared_xacts WHERE database LIKE %s", [f"{PREFIX}_%"]
        )
        postgres = list(cursor.fetchall())
    with closing(server_connection(SERVER_URLS["mysql"])) as connection:
        cursor = connection.cursor()
        cursor.execute("XA RECOVER")
        mariadb = []
        for format_id, gtrid_length, _, data in cursor.fetchall():
            data = data.decode() if isinstance(data, bytes) else data
            gtrid, branch = data[:gtrid_length], data[gtrid_length:]
            if branch.startswith(f"{PREFIX}_maria@"):
                mariadb.append((gtrid, branch, format_id))
    return postgres, mariadb


def prepared_left() -> list[str]:
    """Every prepared transaction on the crash databases."""
    postgres, mariadb = leftovers()
    return [gid for gid, _ in postgres] + [gtrid + branch for gtrid, branch, _ in mariadb]


def roll_back_leftovers() -> None:
    """Undo what an interrupted earlier run left prepared (it would block DROP DATABASE)."""
    postgres, mariadb = leftovers()
    for gid, database in postgres:
        with closing(server_connection(SERVER_URLS["postgres"], database)) as owner:
            owner.cursor().execute(f"ROLLBACK PREPARED '{gid}'")
    with closing(server_connection(SERVER_URLS["mysql"])) as connection:
        for xid in mariadb:
            connection.cursor().execute("XA ROLLBACK %s, %s, %s", list(xid))


@pytest.fixture(scope="module")
def crash_databases() -> Iterator[None]:
    roll_back_leftovers()
    for alias, engine in ENGINES.items():
        recreate(engine, f"{PREFIX}_{alias}")
        with closing(connect(alias)) as connection:
            connection.cursor().execute("CREATE TABLE ledger (id integer PRIMARY KEY)")
    migrate = subprocess.run(
        [sys.executable, "-m", "django", "fleet", "migrate", "-v", "0"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    yield
    roll_back_leftovers()
    for alias, engine in ENGINES.items():
        recreate(engine, f"{PREFIX}_{alias}", create=False)


class Child:
    """The child process, its output read line by line, each line within a deadline."""

    def __init__(self, aliases: tuple[str, ...], first: int, pause: bool) -> None:
        # Its errors go to a file: a pipe nobody reads could fill up and block it.
        self.errors: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __exit__)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.crash.child", ",".join(aliases), str(first)]
            + (["--pause"] if pause else []),
            cwd=ROOT, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.errors, bufsize=0,
        )  # fmt: skip
        assert self.process.stdout is not None and self.process.stdin is not None
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        # Unbuffered bytes, split here: a buffered reader could hold lines that
        # the selector, which watches the pipe, never hears about.
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.stdout, selectors.EVENT_READ)
        self.printed = b""  # Everything read, for the message of a failure.
        self.unread = b""  # Read from the pipe, not yet returned as a line.

    def line(self, seconds: float = STEP_SECONDS) -> str:
        """The child's next line, without its newline; fail if none comes in ``seconds``."""
        deadline = time.monotonic() + seconds
        while b"\n" not in self.unread:
            left = deadline - time.monotonic()
            if left <= 0 or not self.selector.select(left):
                self.fail(f"printed no line in {seconds:.0f} s")
            chunk = os.read(self.stdout.fileno(), 65536)
            if not chunk:
                self.fail("ended")
            self.printed += chunk
            self.unread += chunk
        line, self.unread = self.unread.split(b"\n", 1)
        return line.decode()

    def go_on(self) -> None:
        """Let the paused child take its next step."""
        try:
            self.stdin.write(b"\n")
            self.stdin.flush()
        except BrokenPipeError:
            self.fail("ended")

    def fail(self, what: str) -> NoReturn:
        if self.process.poll() is None:
            self.process.kill()
        code = self.process.wait(timeout=30)
        self.errors.seek(0)
        pytest.fail(
            f"The child {what} (exit code {code}). It printed:\n{self.printed.decode()}\n"
            f"and on stderr:\n{self.errors.read().decode()}",
            pytrace=False,
        )

    def kill(self) -> None:
        """SIGKILL the child, then wait until the servers have ended its sessions.

        A statement the child had sent still runs to its end on the server (a
        PREPARE may complete after the client is gone); only then is the state final.
        """
        self.process.kill()
        if self.process.wait(timeout=30) != -signal.SIGKILL:
            self.fail("had ended before it was killed")
        deadline = time.monotonic() + 30
        while other_sessions():
            assert time.monotonic() < deadline, "the killed child's sessions did not end"
            time.sleep(0.01)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:  # A test that failed before it killed the child.
            self.process.kill()
            self.process.wait(timeout=30)
        self.selector.close()
        self.errors.close()
        self.stdin.close()
        self.stdout.close()


def start_child(aliases: tuple[str, ...], first: int, pause: bool) -> Child:
    """A new child, once it said it is ready (and, paused, told to go on)."""
    child = Child(aliases, first, pause)
    try:
        if child.line(START_SECONDS) != "ready":
            child.fail("did not say it was ready")
        if pause:
            child.go_on()
    except BaseException:
        child.__exit__(None, None, None)
        raise
    return child


def other_sessions() -> int:
    """Sessions on the crash databases other than the one asking."""
    with closing(server_connection(SERVER_URLS["postgres"])) as connection:
        cursor = connection.cursor()
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE %s "
            "AND pid <> pg_backend_pid()",
            [f"{PREFIX}_%"],
        )
        (found,) = cursor.fetchone()
    with closing(server_connection(SERVER_URLS["mysql"])) as connection:
        cursor = connection.cursor()
        cursor.execute(
            "SELECT count(*) FROM information_schema.processlist "
            "WHERE db = %s AND id <> CONNECTION_ID()",
            [f"{PREFIX}_maria"],
        )
        found += cursor.fetchone()[0]
    return int(found)


def fleet_recover() -> str:
    result = subprocess.run(
        [sys.executable, "-m", "django", "fleet", "recover", "--grace", "0"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def assert_agree(aliases: tuple[str, ...], first: int) -> set[int]:
    """Every database of the scenario holds the same transactions; return them."""
    held = [{key for key in keys(alias) if first <= key < first + 1000} for alias in aliases]
    assert all(found == held[0] for found in held), dict(zip(aliases, held, strict=True))
    assert not prepared_left()
    return held[0]


def next_step(child: Child) -> str:
    """The next protocol step the paused child is at."""
    deadline = time.monotonic() + STEP_SECONDS
    line = child.line()
    while line.startswith("begin "):
        line = child.line(max(0.0, deadline - time.monotonic()))
    return line


FRESH_KEYS = itertools.count(1_000_000, 1000)
STEP_CASES = [
    pytest.param(aliases, step, id=f"{name}-{step.replace(' ', '-')}")
    for name, aliases in SCENARIOS.items()
    for step in protocol_steps(aliases)
]


@pytest.mark.parametrize(("aliases", "step"), STEP_CASES)
def test_killed_at_every_step(crash_databases: None, aliases: tuple[str, ...], step: str) -> None:
    steps = protocol_steps(aliases)
    done = steps[: steps.index(step)]
    first = next(FRESH_KEYS)
    with start_child(aliases, first, pause=True) as child:
        for passed in done:
            assert next_step(child) == passed
            child.go_on()
        assert next_step(child) == step
        child.kill()

    prepares = sum(s.startswith("prepare") for s in done)
    in_doubt = prepares - sum(s.startswith("commit") for s in done)
    assert len(prepared_left()) == in_doubt
    report = fleet_recover()
    committed = "decide" in done
    assert assert_agree(aliases, first) == ({first} if committed else set()), report
    if in_doubt:
        assert f"{in_doubt} {'committed' if committed else 'rolled back'}" in report


#: How many random kills: each costs a child and a `fleet recover` run, 1-2 s.
#: The deterministic test above covers every step; more kills search wider.
KILLS = int(os.environ.get("DBFLEET_CRASH_KILLS", "40"))


@pytest.mark.timeout(60 + 6 * KILLS)
def test_killed_at_random_moments(crash_databases: None) -> None:
    """``DBFLEET_CRASH_KILLS`` kills (40), spread over the scenarios, each at a random moment."""
    rng = random.Random(os.environ.get("DBFLEET_CRASH_SEED", "dbfleet"))
    names = list(SCENARIOS)
    settled = committed = 0
    for kill_number in range(KILLS):
        aliases = SCENARIOS[names[kill_number % len(names)]]
        first = 1000 * kill_number
        with start_child(aliases, first, pause=False) as child:
            time.sleep(rng.uniform(0, 0.3))
            child.kill()
        left = len(prepared_left())
        report = fleet_recover()
        settled += left
        committed += len(assert_agree(aliases, first))
        assert ("No in-doubt transactions." in report) == (left == 0), report
    # The kills did land inside the protocol, and the children did work.
    print(f"{KILLS} kills: {settled} prepared transactions settled, {committed} commits kept")
    assert settled > 0 and committed > 0, (settled, committed)
