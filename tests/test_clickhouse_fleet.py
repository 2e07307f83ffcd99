"""``fleet migrate``, ``plan``, ``status`` and ``routes`` with a ClickHouse database, run for real.

The analytics configuration's databases, made afresh for this module: ``default``
on PostgreSQL, ``books`` and ``loans`` on SQLite, ``warehouse`` on chDB, all in a
temporary directory (and ``{prefix}_default`` on the server). ``python -m django
fleet ...`` runs in a subprocess with ``tests.fleet_settings``, so each database,
the chDB one too, is migrated by a worker process of its own. This process has chDB
open on the test run's directory, another; chDB allows one per process.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.fleet_settings import PREFIX
from tests.servers import recreate, server_connection
from tests.settings import POSTGRES_URL

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a `fleet` command gets (each takes a few).
DEADLINE = 300


class Fleet:
    def __init__(self, directory: Path, prefix: str) -> None:
        self.directory, self.prefix = directory, prefix
        self.environment = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.fleet_settings",
            "DBFLEET_FLEET_DIR": str(directory),
            "DBFLEET_FLEET_PREFIX": prefix,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            "PYTHONWARNINGS": "error::DeprecationWarning",
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "django", *args],
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            cwd=ROOT,
        )

    def tables(self) -> set[str]:
        """The tables of the ``warehouse`` database, read in a process of its own."""
        script = (
            "import django; django.setup()\n"
            "from django.db import connections\n"
            "print(*connections['warehouse'].introspection.table_names(), sep='\\n')\n"
        )
        found = subprocess.run(
            [sys.executable, "-c", script],
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            cwd=ROOT,
            check=True,
        )
        return set(found.stdout.split())


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, Any]]:
    """The databases, migrated once by `fleet migrate --jobs 4`."""
    prefix = f"{PREFIX}_ch"
    recreate("postgres", f"{prefix}_default")
    fleet = Fleet(tmp_path_factory.mktemp("fleet"), prefix)
    yield fleet, fleet.run("fleet", "migrate", "--jobs", "4")
    recreate("postgres", f"{prefix}_default", create=False)


def test_fleet_migrate_migrates_the_warehouse_in_a_worker_beside_the_others(
    migrated: tuple[Fleet, subprocess.CompletedProcess[str]],
) -> None:
    fleet, result = migrated
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.split("result\n")[-1].splitlines()[1:]
    rows = {line.split()[0]: line.split() for line in summary if line.strip()}
    assert set(rows) == {"default", "books", "loans", "warehouse"}
    assert rows["warehouse"][1] == "clickhouse"
    assert all(row[-1] == "done" for row in rows.values())
    assert {"warehouse_pageview", "django_migrations"} <= fleet.tables()
    assert not {"auth_user", "library_author"} & fleet.tables()
    with closing(server_connection(POSTGRES_URL, f"{fleet.prefix}_default")) as connection:
        cursor = connection.cursor()
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        default = {name for (name,) in cursor.fetchall()}
    assert "auth_user" in default and "warehouse_pageview" not in default


def test_fleet_plan_status_and_routes_include_the_warehouse(
    migrated: tuple[Fleet, subprocess.CompletedProcess[str]],
) -> None:
    fleet = migrated[0]
    result = fleet.run("fleet", "plan", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warehouse (clickhouse): up to date" in result.stdout
    result = fleet.run("fleet", "status", "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["migrations"]["warehouse.0001_initial"]["warehouse"] == "applied"
    assert "warehouse" in report["audited"] and report["audit"] == []
    assert "warehouse" not in report["participants"]
    result = fleet.run("fleet", "routes")
    assert "warehouse (clickhouse)" in result.stdout
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("warehouse.PageView")]
    assert row.split()[1:4] == ["warehouse"] * 3


HOLD = """
import sys, time
from dbfleet.backends.chdb import dbapi
held = dbapi.connect(sys.argv[1])
print("holding", flush=True)
time.sleep(120)
"""


def first_line(process: subprocess.Popen[str], seconds: float) -> str:
    """The first line ``process`` writes, or "" if none comes within ``seconds``."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], seconds)
    return process.stdout.readline() if ready else ""


def test_a_process_holding_the_data_directory_fails_the_warehouse_alone(tmp_path: Path) -> None:
    prefix = f"{PREFIX}_chheld"
    recreate("postgres", f"{prefix}_default")
    fleet = Fleet(tmp_path, prefix)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "chdb")],
        env=fleet.environment,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert first_line(holder, DEADLINE) == "holding\n"
        result = fleet.run("fleet", "migrate")
    finally:
        holder.kill()
        holder.wait(DEADLINE)
        recreate("postgres", f"{prefix}_default", create=False)
    assert result.returncode == 1
    assert f"is in use by another process (process {holder.pid}, since " in result.stderr
    assert "Migrated: default, books, loans." in result.stderr
