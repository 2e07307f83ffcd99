"""Kill a process in the middle of two-phase commits with SIGKILL; ``fleet recover`` settles it.

A child process (``tests/crash/child.py``) commits two-phase transactions over
two databases: PostgreSQL + MariaDB and PostgreSQL + PostgreSQL, each with and
without ``DEFAULT_DATABASE`` (the decision log) among them. It is killed at
every step of the protocol, then at random moments; each time, after
``fleet recover``, every database must hold the same transactions and no
prepared transaction may be left.

These tests bring their own databases (``dbfleet_crash_*``), so they run in
one configuration only, ``mixed``, which has both servers (see conftest.py).
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.crash.settings import ENGINES, PREFIX
from tests.servers import SERVER_URLS, recreate, server_connection

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.crash.settings"}

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


def start_child(aliases: tuple[str, ...], first: int, pause: bool) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.crash.child", ",".join(aliases), str(first)]
        + (["--pause"] if pause else []),
        cwd=ROOT, env=ENV, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline() == "ready\n"
    if pause:
        child.stdin.write("\n")
        child.stdin.flush()
    return child


def kill(child: subprocess.Popen[str]) -> None:
    """SIGKILL the child, then wait until the servers have ended its sessions.

    A statement the child had sent still runs to its end on the server (a
    PREPARE may complete after the client is gone); only then is the state final.
    """
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while other_sessions():
        assert time.monotonic() < deadline, "the killed child's sessions did not end"
        time.sleep(0.01)


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


def next_step(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    while line.startswith("begin "):
        line = child.stdout.readline().strip()
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
    child = start_child(aliases, first, pause=True)
    assert child.stdin is not None
    for passed in done:
        assert next_step(child) == passed
        child.stdin.write("\n")
        child.stdin.flush()
    assert next_step(child) == step
    kill(child)

    prepares = sum(s.startswith("prepare") for s in done)
    in_doubt = prepares - sum(s.startswith("commit") for s in done)
    assert len(prepared_left()) == in_doubt
    report = fleet_recover()
    committed = "decide" in done
    assert assert_agree(aliases, first) == ({first} if committed else set()), report
    if in_doubt:
        assert f"{in_doubt} {'committed' if committed else 'rolled back'}" in report


@pytest.mark.timeout(600)  # 100 children and 100 `fleet recover` runs: 2-3 s each.
def test_killed_at_random_moments(crash_databases: None) -> None:
    """100 kills, spread over the scenarios, each at a random moment."""
    rng = random.Random(os.environ.get("DBFLEET_CRASH_SEED", "dbfleet"))
    names = list(SCENARIOS)
    settled = committed = 0
    for kill_number in range(100):
        aliases = SCENARIOS[names[kill_number % len(names)]]
        first = 1000 * kill_number
        child = start_child(aliases, first, pause=False)
        time.sleep(rng.uniform(0, 0.3))
        kill(child)
        left = len(prepared_left())
        report = fleet_recover()
        settled += left
        committed += len(assert_agree(aliases, first))
        assert ("No in-doubt transactions." in report) == (left == 0), report
    # The kills did land inside the protocol, and the children did work.
    print(f"100 kills: {settled} prepared transactions settled, {committed} commits kept")
    assert settled > 0 and committed > 0, (settled, committed)
