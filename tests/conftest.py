"""Skip a database configuration whose servers are down, or fail when they must be up.

Servers are required when ``CI`` is set or ``DBFLEET_TEST_SERVERS=require``; then
a server that cannot be reached fails the run instead of skipping it. The same
holds for tests marked ``prepared_transactions`` on a PostgreSQL server that
has them turned off (``max_prepared_transactions = 0``, its stock setting).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connections

DRIVERS = {"postgresql": "psycopg", "mysql": "MySQLdb"}
#: What a database on chDB needs installed (the [chdb] extra), found without importing it:
#: chDB is loaded by the first connection, never by a check that it is there.
CHDB_PACKAGES = ("chdb", "clickhouse_backend")
#: (primary, replica) clusters of the replication configuration.
CLUSTERS = pytest.StashKey[Any]()


def servers_required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("DBFLEET_TEST_SERVERS") == "require"


def _required_because() -> str:
    why = "CI is set" if os.environ.get("CI") else "DBFLEET_TEST_SERVERS=require"
    return f"servers are required because {why}"


def unavailable() -> str | None:
    """Why this configuration's servers cannot be used, or None when they can."""
    for alias, config in settings.DATABASES.items():
        vendor = config["ENGINE"].rsplit(".", 1)[-1]
        if vendor == "chdb":
            missing = [name for name in CHDB_PACKAGES if importlib.util.find_spec(name) is None]
            if missing:
                return (
                    f"{alias!r} is on chDB, which needs {', '.join(missing)}: "
                    "pip install 'django-dbfleet[chdb]' (python3 dev.py installs it)"
                )
            continue
        if vendor not in DRIVERS:
            continue
        try:
            importlib.import_module(DRIVERS[vendor])
        except ImportError as error:
            return f"{alias!r} needs the {vendor} driver: {error}"
        address = (config["HOST"], int(config["PORT"]))
        try:
            socket.create_connection(address, timeout=3).close()
        except OSError as error:
            return f"{alias!r} needs {vendor} at {address[0]}:{address[1]}: {error}"
    return None


@functools.cache
def prepared_transactions_missing() -> str | None:
    """Why the PostgreSQL server cannot prepare transactions, or None when it can.

    Asked once per run, and only when a selected test needs them.
    """
    import dj_database_url
    import psycopg

    from tests.servers import server_connection
    from tests.settings import POSTGRES_URL

    server = dj_database_url.parse(POSTGRES_URL)
    host, port = server.get("HOST") or "localhost", server.get("PORT") or 5432
    address = f"{host}:{port}"
    try:
        with closing(server_connection(POSTGRES_URL)) as connection:
            cursor = connection.cursor()
            cursor.execute("SHOW max_prepared_transactions")
            (prepared,) = cursor.fetchone()
            cursor.execute("SHOW server_version_num")
            (version,) = cursor.fetchone()
    except (OSError, psycopg.Error) as error:
        return f"could not ask PostgreSQL at {address} about prepared transactions: {error}"
    if int(prepared) > 0:
        return None
    return (
        f"PostgreSQL at {address} has max_prepared_transactions = 0 (the stock setting), so "
        "it cannot prepare transactions, which two-phase commit needs. Turn them on: "
        f"psql -h {host} -p {port} -U {server.get('USER') or 'postgres'} -c "
        "'ALTER SYSTEM SET max_prepared_transactions = 64', then restart the server "
        f"(Debian/Ubuntu: pg_ctlcluster {int(version) // 10000} main restart; elsewhere: "
        "pg_ctl -D <data directory> restart)"
    )


#: Tests that bring their own databases run once, in this configuration (it has both servers).
OWN_DATABASES = {
    "tests/test_crash.py": "mixed",
    "tests/replication/test_streaming.py": "replication",
    "tests/test_clickhouse.py": "analytics",
    "tests/test_clickhouse_fleet.py": "analytics",
    "tests/test_analytics_sync.py": "analytics",
}
#: Configurations that run only their own tests. The analytics one loads chDB, and a
#: process that loaded it must not fork (the crash tests do); its own tests are the
#: ClickHouse ones, and the rest run in every other configuration.
ONLY_OWN = {"replication", "analytics"}


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Not even collected elsewhere: the analytics modules import apps only it installs."""
    module = collection_path.relative_to(config.rootpath).as_posix()
    own = OWN_DATABASES.get(module)
    if own == "analytics" and own != os.environ.get("DBFLEET_TEST_DATABASES", "sqlite"):
        return True
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "prepared_transactions: the test prepares transactions on the PostgreSQL server "
        "(skipped, or failed when servers are required, if the server has them off)",
    )
    # An exception in a thread the test did not join through tests.threads (a
    # raw threading.Thread) fails the test instead of passing with a warning.
    config.addinivalue_line("filterwarnings", "error::pytest.PytestUnhandledThreadExceptionWarning")
    if os.environ.get("DBFLEET_TEST_DATABASES") == "replication":
        from tests.servers import streaming_replica
        from tests.settings import STREAMING_PORTS

        clusters = ExitStack()
        try:
            config.stash[CLUSTERS] = clusters.enter_context(streaming_replica(*STREAMING_PORTS))
        except (OSError, subprocess.CalledProcessError) as error:
            # The tests are then skipped (or fail, when servers are required) as
            # for any server that cannot be reached; say why here.
            print(f"Could not create the streaming replica: {error}", file=sys.stderr)
            return
        config.add_cleanup(clusters.close)


def pytest_report_header(config: pytest.Config) -> str:
    return "own-database tests: " + ", ".join(
        f"{module} (runs with DBFLEET_TEST_DATABASES={configuration})"
        for module, configuration in OWN_DATABASES.items()
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    configuration = os.environ.get("DBFLEET_TEST_DATABASES", "sqlite")
    default = None if configuration in ONLY_OWN else configuration
    elsewhere = [
        item
        for item in items
        if OWN_DATABASES.get(item.nodeid.partition("::")[0], default) != configuration
    ]
    if elsewhere:
        config.hook.pytest_deselected(items=elsewhere)
        items[:] = [item for item in items if item not in elsewhere]
    reason = unavailable()
    if reason is None:
        preparing = [item for item in items if item.get_closest_marker("prepared_transactions")]
        reason = prepared_transactions_missing() if preparing else None
        items = preparing
    if reason is None:
        return
    if servers_required():
        raise pytest.UsageError(f"{reason} ({_required_because()})")
    skip = pytest.mark.skip(reason=f"{reason}; set DBFLEET_TEST_SERVERS=require to fail instead")
    for item in items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Close every connection before the test databases are dropped.

    A replica mirrors its primary in tests, so its connection is a second
    session on the primary's test database; PostgreSQL refuses to drop a
    database that still has sessions.
    """
    yield
    with django_db_blocker.unblock():
        connections.close_all()


@pytest.fixture
def money() -> None:
    """An account (in 'default') and a vault (in 'books') holding 100 each."""
    from tests.bank.models import Account, Vault

    Account.objects.create(name="alice", balance=100)
    Vault.objects.create(name="vault", balance=100)


@pytest.fixture(autouse=True)
def own_scope() -> Iterator[None]:
    """Each test is a read-your-writes scope: writes of earlier tests pin none of its reads."""
    from dbfleet.testing import fresh_scope

    with fresh_scope():
        yield


class Clock:
    """``time.time()`` standing still, until the test moves it on."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Wall-clock time that passes only when the test says so, in every thread.

    Read-your-writes windows are measured in wall-clock time (a pin must hold
    across processes, in a cookie); with this clock, a test of a window is the
    same on a loaded machine as on an idle one.
    """
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    return clock
