"""``fleet migrate``, ``plan`` and ``status`` run as a user runs them, on real databases.

Each test gets dedicated databases (SQLite files in a temporary directory, or
``dbfleet_fleet_*`` on the servers) and runs ``python -m django fleet ...`` in a
subprocess with ``tests.fleet_settings``, so every database is migrated by a
worker process, for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.db.utils import ConnectionHandler

from tests.fleet_settings import PREFIX
from tests.servers import recreate
from tests.settings import CONFIGURATION, ENGINES, database

ROOT = Path(__file__).resolve().parent.parent
ALIASES = ("default", "books", "loans")
SERVERS = {alias: engine for alias, engine in ENGINES.items() if engine != "sqlite"}


@dataclass
class Project:
    directory: Path
    blocker: Any
    prefix: str

    def environment(self, **env: str) -> dict[str, str]:
        """The environment of a ``python -m django`` run; ``env`` sets DBFLEET_FLEET_* variables."""
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.fleet_settings",
            "DBFLEET_FLEET_DIR": str(self.directory),
            "DBFLEET_FLEET_PREFIX": self.prefix,
            # This tree's dbfleet, whichever one the interpreter has installed.
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            "PYTHONWARNINGS": "error::DeprecationWarning",
            **{f"DBFLEET_FLEET_{key.upper()}": value for key, value in env.items()},
        }

    def fleet(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run ``fleet *args`` in a subprocess; ``env`` sets DBFLEET_FLEET_* variables."""
        return self.django("fleet", *args, **env)

    def django(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run ``python -m django *args`` (``migrate``, ``fleet ...``) in a subprocess."""
        return subprocess.run(
            [sys.executable, "-m", "django", *args],
            env=self.environment(**env),
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
        )

    def inspect(self) -> dict[str, dict[str, Any]]:
        """For each database, its tables and the migrations recorded there."""
        handler = ConnectionHandler(
            {alias: database(alias, self.prefix, str(self.directory)) for alias in ALIASES}
        )
        found: dict[str, dict[str, Any]] = {}
        with self.blocker.unblock():
            for alias in ALIASES:
                connection = handler[alias]
                with connection.cursor() as cursor:
                    tables = set(connection.introspection.table_names(cursor))
                    indexes = set()
                    if "library_book" in tables:
                        indexes = set(
                            connection.introspection.get_constraints(cursor, "library_book")
                        )
                    recorded = set()
                    if "django_migrations" in tables:
                        # Raw SQL: MigrationRecorder would query the test run's own database.
                        cursor.execute("SELECT app, name FROM django_migrations")
                        recorded = set(cursor.fetchall())
                found[alias] = {"tables": tables, "recorded": recorded, "indexes": indexes}
                connection.close()
        return found


def fresh_project(directory: Path, blocker: Any, prefix: str) -> Iterator[Project]:
    for alias, engine in SERVERS.items():
        recreate(engine, f"{prefix}_{alias}")
    yield Project(directory, blocker, prefix)
    for alias, engine in SERVERS.items():
        recreate(engine, f"{prefix}_{alias}", create=False)


@pytest.fixture
def project(tmp_path: Path, django_db_blocker: Any) -> Iterator[Project]:
    """Empty databases, for a test of its own."""
    yield from fresh_project(tmp_path, django_db_blocker, PREFIX)


@pytest.fixture(scope="module")
def migrated(
    tmp_path_factory: pytest.TempPathFactory, django_db_blocker: Any
) -> Iterator[tuple[Project, subprocess.CompletedProcess[str]]]:
    """Databases migrated once by `fleet migrate --jobs 3`, for tests that only look."""
    for project in fresh_project(
        tmp_path_factory.mktemp("migrated"), django_db_blocker, f"{PREFIX}_shared"
    ):
        yield project, project.fleet("migrate", "--jobs", "3")


def test_migrates_every_database_each_where_routed(
    migrated: tuple[Project, subprocess.CompletedProcess[str]],
) -> None:
    project, result = migrated
    assert result.returncode == 0, result.stdout + result.stderr
    for alias in ALIASES:
        assert f"running    {alias}" in result.stdout
    table = result.stdout.split("result\n")[-1].split("\n\n")[0]  # Errors in full follow.
    assert [line.split()[0] for line in table.splitlines()[1:]] == list(ALIASES)
    assert all(line.split()[-1] == "done" for line in table.splitlines()[1:])

    found = project.inspect()
    assert {"library_author", "auth_user", "django_session", "django_admin_log"} <= found[
        "default"
    ]["tables"]
    assert {"library_book", "library_review"} <= found["books"]["tables"]
    assert {"loans_loan", "loans_member", "loans_favourite"} <= found["loans"]["tables"]
    assert not {"library_book", "loans_loan"} & found["default"]["tables"]
    # The article's RunSQL (hint target_db="books") made its index on books only.
    assert "library_book_title_idx" in found["books"]["indexes"]
    # Django records every migration on every database it migrates, even when skipped.
    for alias in ALIASES:
        assert ("library", "0002_email_and_title") in found[alias]["recorded"]


def test_contrib_apps_only_where_routed(
    migrated: tuple[Project, subprocess.CompletedProcess[str]],
) -> None:
    found = migrated[0].inspect()
    contrib = {
        "django_content_type",
        "auth_permission",
        "auth_user",
        "django_session",
        "django_admin_log",
    }
    assert contrib <= found["default"]["tables"]
    for alias in ("books", "loans"):
        assert not contrib & found[alias]["tables"], f"contrib tables leaked into {alias}"


def test_second_run_starts_no_worker(
    migrated: tuple[Project, subprocess.CompletedProcess[str]],
) -> None:
    project = migrated[0]
    result = project.fleet("migrate")
    assert result.returncode == 0
    assert "running" not in result.stdout
    assert result.stdout.count("up to date") >= 2 * len(ALIASES)
    result = project.fleet("migrate", "--check")
    assert result.returncode == 0
    assert "No pending migrations on default, books, loans." in result.stdout


def test_check_exits_1_while_anything_is_pending(project: Project) -> None:
    result = project.fleet("migrate", "--check")
    assert result.returncode == 1
    assert "default: " in result.stdout and "pending" in result.stdout
    assert project.fleet("migrate", "--database", "books").returncode == 0
    result = project.fleet("migrate", "--check", "--database", "books")
    assert result.returncode == 0, result.stdout
    assert project.fleet("migrate", "--check").returncode == 1


def test_plan_shows_what_would_run_where_without_running(project: Project) -> None:
    result = project.fleet("migrate", "--plan")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Would run")
    books = result.stdout.split("books (")[1].split("loans (")[0]
    assert "RunSQL" in books and "runs here" in books.split("RunSQL")[1].splitlines()[0]
    assert project.inspect()["books"]["recorded"] == set()


def test_db_hint_is_refused_before_anything_runs(project: Project) -> None:
    cases = "library=tests.migration_cases.db_hint"
    where = "tests/migration_cases/db_hint/0001_initial.py, operation 1 (RunPython noop)"
    # The system check stops it first ...
    result = project.fleet("migrate", migration_modules=cases)
    assert result.returncode == 1
    assert "dbfleet.E017" in result.stderr and where in result.stderr
    assert "HINT: Use hints={'target_db': 'books'}." in result.stderr
    # ... and with the checks skipped, fleet migrate itself refuses.
    result = project.fleet("migrate", "--skip-checks", migration_modules=cases)
    assert result.returncode == 2
    assert "Nothing was migrated" in result.stderr and where in result.stderr
    assert "Fix: hints={'target_db': 'books'}" in result.stderr
    assert all(not found["recorded"] for found in project.inspect().values())


def test_failing_migration_leaves_the_others_done(project: Project) -> None:
    result = project.fleet("migrate", apps="tests.broken=loans")
    assert result.returncode == 1
    assert "Migrating failed on loans (" in result.stderr
    assert "no_such_table" in result.stdout  # The worker's own output, shown for loans.
    assert "Migrated: default, books." in result.stderr
    found = project.inspect()
    assert ("library", "0002_email_and_title") in found["default"]["recorded"]
    assert ("library", "0002_email_and_title") in found["books"]["recorded"]
    assert ("broken", "0001_initial") not in found["loans"]["recorded"]


def test_fail_fast_cancels_the_rest(project: Project) -> None:
    result = project.fleet("migrate", "--fail-fast", "--jobs", "1", apps="tests.broken=default")
    assert result.returncode == 1
    table = result.stdout.split("result\n")[-1].split("\n\n")[0]  # Errors in full follow.
    results = {line.split()[0]: line.split()[-1] for line in table.splitlines()[1:]}
    assert results["books"] == results["loans"] == "cancelled"
    assert not project.inspect()["books"]["recorded"]


@pytest.mark.skipif(not SERVERS, reason=f"no server in configuration {CONFIGURATION!r}")
def test_server_down_fails_alone_and_a_rerun_completes(project: Project) -> None:
    down = next(iter(SERVERS))
    result = project.fleet("migrate", down=down)
    assert result.returncode == 1
    assert f"Migrating failed on {down} (OperationalError" in result.stderr
    others = [alias for alias in ALIASES if alias != down]
    assert all(project.inspect()[alias]["recorded"] for alias in others)
    for subcommand in ("plan", "status"):
        result = project.fleet(subcommand, down=down)
        assert result.returncode == {"plan": 0, "status": 6}[subcommand], result.stderr
        assert f"{down}" in result.stdout and "unreachable: OperationalError" in result.stdout
    result = project.fleet("recover", down=down)
    assert result.returncode == 1
    assert f"{down}: unreachable:" in result.stdout
    assert "could not be settled" in result.stderr and "run `fleet recover` again" in result.stderr

    result = project.fleet("migrate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert project.inspect()[down]["recorded"]


def test_status_before_migrating(project: Project) -> None:
    document = json.loads(project.fleet("status", "--format", "json").stdout)
    assert document["migrations"]["library.0002_email_and_title"] == {
        "default": "pending",
        "books": "pending",
        "loans": "not routed",
    }
    assert document["audit"] == []


def test_status_audit_finds_tables_that_disagree(
    migrated: tuple[Project, subprocess.CompletedProcess[str]],
) -> None:
    project = migrated[0]
    result = project.fleet("status")
    assert "Audit: every table is where its migrations and routes say." in result.stdout
    # Make the records lie: drop a routed table, and add a stray one where it doesn't live.
    handler = ConnectionHandler(
        {alias: database(alias, project.prefix, str(project.directory)) for alias in ALIASES}
    )
    with project.blocker.unblock():
        with handler["books"].cursor() as cursor:
            cursor.execute("DROP TABLE library_review")
        with handler["loans"].cursor() as cursor:
            cursor.execute("CREATE TABLE library_author (id integer)")
        handler.close_all()
    try:
        result = project.fleet("status")
        assert result.returncode == 3, result.stderr  # Drift.
        assert "0 pending" in result.stdout
        assert "2 table(s) or column(s) disagree" in result.stdout
        document = json.loads(project.fleet("status", "--format", "json").stdout)
        audit = {(item["database"], item["table"]): item["problem"] for item in document["audit"]}
        assert set(audit) == {("books", "library_review"), ("loans", "library_author")}
        assert audit["books", "library_review"].startswith(
            "table `library_review` is missing, but `library.0001_initial`, which creates it, "
            "is recorded"
        )
        # Unrecording library.0001 would have migrate create library_book again: never advised.
        assert "migrate library zero --fake" not in result.stdout
        assert [fix["commands"] for fix in document["fixes"]] == [
            ["manage.py sqlmigrate library 0001_initial --database books"]
        ]
        assert "stray copy (0 rows)" in audit["loans", "library_author"]
    finally:
        with project.blocker.unblock():
            with handler["books"].cursor() as cursor:
                cursor.execute("CREATE TABLE library_review (id integer)")
            with handler["loans"].cursor() as cursor:
                cursor.execute("DROP TABLE library_author")
            handler.close_all()


def test_replica_is_never_migrated(project: Project) -> None:
    result = project.fleet("migrate", "--database", "replica")
    assert result.returncode == 1
    assert "'replica' is never migrated" in result.stderr


def test_a_database_waits_for_the_databases_its_migrations_depend_on(project: Project) -> None:
    result = project.fleet("migrate", "--jobs", "3", apps="tests.dependent=loans")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    started = next(i for i, line in enumerate(lines) if line.split()[:2] == ["running", "loans"])
    for alias in ("default", "books"):
        done = next(i for i, line in enumerate(lines) if line.split()[:2] == ["done", alias])
        assert done < started, result.stdout
