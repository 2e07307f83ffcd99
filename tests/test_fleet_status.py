"""``fleet status`` on a fleet that is not in order, and every command it suggests, run for real.

The subprocess tests get their own databases (SQLite files in a temporary
directory, or ``{prefix}_status_*`` on the servers) and run ``python -m django``
with ``tests.fleet_status_settings``, whose routes the test changes through the
environment, as a user edits ``ROUTES`` once data exists. Each command the audit
suggests is run as given; the test then asks ``fleet status`` again.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.db.utils import ConnectionHandler
from django.test import override_settings

from dbfleet.migrating.drift import Drift
from dbfleet.migrating.resume import NotResumable, resume
from dbfleet.migrating.status import status
from dbfleet.reports import ExitCode, FleetStatus, Reason, ReplicaStatus, status_reasons
from tests.fleet_settings import PREFIX
from tests.servers import recreate
from tests.settings import ENGINES, ROUTES, database

ROOT = Path(__file__).resolve().parent.parent
ALIASES = ("default", "books", "loans")
SERVERS = {alias: engine for alias, engine in ENGINES.items() if engine != "sqlite"}
HALF_APPLIED = "library=tests.migration_cases.half_applied"


@dataclass
class Project:
    directory: Path
    blocker: Any
    prefix: str
    #: DBFLEET_FLEET_* variables of every command run (the routes, say).
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``python -m django *args``, as ``manage.py *args`` runs in this project."""
        environment = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.fleet_status_settings",
            "DBFLEET_FLEET_DIR": str(self.directory),
            "DBFLEET_FLEET_PREFIX": self.prefix,
            # This checkout's dbfleet, not the one the venv has installed.
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            "PYTHONWARNINGS": "error::DeprecationWarning",
            **{f"DBFLEET_FLEET_{key.upper()}": value for key, value in self.env.items()},
        }
        return subprocess.run(
            [sys.executable, "-m", "django", *args],
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=self.directory,
        )

    def status(self) -> tuple[int, dict[str, Any], str]:
        """(exit code, the JSON report, the text report) of ``fleet status``."""
        document = self.run("fleet", "status", "--format", "json")
        text = self.run("fleet", "status")
        assert text.returncode == document.returncode, text.stderr
        return document.returncode, json.loads(document.stdout), text.stdout

    def run_fixes(self, report: dict[str, Any]) -> list[subprocess.CompletedProcess[str]]:
        """Run every command the report suggests, in its order; each must succeed."""
        results = []
        for fix in report["fixes"]:
            for command in fix["commands"]:
                words = shlex.split(command)
                assert words[0] == "manage.py", command
                result = self.run(*words[1:])
                assert result.returncode == 0, f"{command}:\n{result.stdout}{result.stderr}"
                results.append(result)
        return results

    def tables(self, alias: str) -> set[str]:
        handler = ConnectionHandler(
            {alias: database(alias, self.prefix, str(self.directory)) for alias in ALIASES}
        )
        with self.blocker.unblock():
            with handler[alias].cursor() as cursor:
                found = set(handler[alias].introspection.table_names(cursor))
            handler.close_all()
        return found

    def sql(self, alias: str, *statements: str) -> list[tuple[Any, ...]]:
        """Run ``statements`` on ``alias`` past Django's routing; the last one's rows."""
        handler = ConnectionHandler(
            {alias: database(alias, self.prefix, str(self.directory)) for alias in ALIASES}
        )
        rows: list[tuple[Any, ...]] = []
        with self.blocker.unblock():
            with handler[alias].cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
                    rows = list(cursor.fetchall()) if cursor.description else []
            handler.close_all()
        return rows


@pytest.fixture
def project(tmp_path: Path, django_db_blocker: Any) -> Iterator[Project]:
    """Empty databases of its own, migrated by ``fleet migrate`` as the routes were."""
    prefix = f"{PREFIX}_status"
    for alias, engine in SERVERS.items():
        recreate(engine, f"{prefix}_{alias}")
    yield Project(tmp_path, django_db_blocker, prefix)
    for alias, engine in SERVERS.items():
        recreate(engine, f"{prefix}_{alias}", create=False)


#: Tests that change the schema by hand inside the test's transaction, which rolls it back.
ddl_rolls_back = pytest.mark.skipif(
    ENGINES["books"] == "mysql",
    reason="MariaDB commits the ALTER TABLE: not in a test's transaction",
)


def findings(report: dict[str, Any], **wanted: str) -> list[dict[str, Any]]:
    return [item for item in report["audit"] if all(item[k] == v for k, v in wanted.items())]


@pytest.mark.skipif(
    ENGINES["books"] != "mysql",
    reason="MariaDB/MySQL commit DDL at once: 'books' must be on MariaDB (mysql or mixed)",
)
def test_a_migration_that_stopped_half_way_is_named_and_resumed(project: Project) -> None:
    project.env["migration_modules"] = HALF_APPLIED
    result = project.run("fleet", "migrate")
    assert result.returncode == 1
    assert "Migrating failed on books" in result.stderr
    # The AddField committed, the RunSQL failed: a rerun trips over the column.
    again = project.run("fleet", "migrate")
    assert again.returncode == 1 and "Duplicate column name 'weight'" in again.stdout

    code, report, text = project.status()
    assert code == ExitCode.DRIFT
    (item,) = findings(report, database="books")
    assert item["kind"] == Drift.HALF_APPLIED and item["migration"] == "library.0003_weight"
    assert item["problem"].startswith(
        "column `library_book.weight` exists, but `library.0003_weight` is not recorded: it "
        "stopped after operation 1 of 2 (Add field weight to book); operation 2 (RunSQL) failed."
    )
    assert report["fixes"] == [
        {
            "database": "books",
            "commands": ["manage.py fleet migrate --resume --database books"],
            "note": "first fix what made operation 2 of library.0003_weight fail; the command "
            "then runs operation 2 of it, records it, and migrates the rest.",
        }
    ]
    assert "books: library.Book: column `library_book.weight` exists" in text

    # Fix the cause (the table the RunSQL writes to), then run what status suggests.
    project.sql("books", "CREATE TABLE library_scale (grams integer)")
    (resumed,) = project.run_fixes(report)
    assert "Resumed library.0003_weight on books: ran operation 2 of 2; recorded it." in (
        resumed.stdout
    )
    assert project.sql("books", "SELECT grams FROM library_scale") == [(1,)]
    code, report, text = project.status()
    assert code == ExitCode.OK, text
    assert report["audit"] == [] and report["migrations"]["library.0003_weight"] == {
        "default": "applied",
        "books": "applied",
        "loans": "applied",
    }


def test_resume_without_a_half_applied_migration_migrates_as_usual(project: Project) -> None:
    result = project.run("fleet", "migrate", "--resume")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Resumed" not in result.stdout
    assert project.status()[0] == ExitCode.OK


def test_a_model_moved_to_another_database_keeps_its_rows(project: Project) -> None:
    assert project.run("fleet", "migrate").returncode == 0
    project.sql(
        "books", "INSERT INTO bank_vault (name, balance) VALUES ('north', 10), ('south', 20)"
    )
    project.env["routes"] = "bank.Vault=loans"
    code, report, text = project.status()
    assert code == ExitCode.DRIFT
    (rows,) = findings(report, database="books")
    assert (rows["kind"], rows["table"], rows["rows"]) == (Drift.ROWS_ELSEWHERE, "bank_vault", 2)
    start = "manage.py fleet move bank.Vault --from books --to loans"
    finish = "manage.py fleet move bank.Vault --finish"
    advice = (
        f"`{start}` (it copies them, applies what is written to 'books' meanwhile and "
        f"compares), then `{finish}`"
    )
    assert rows["problem"] == (
        "table `bank_vault` holds 2 rows of bank.Vault, but bank.Vault now lives in 'loans' "
        '(ROUTES["bank.Vault"]), where its table is missing. These rows must be moved to '
        f"'loans' (once its table is made there, with {advice}; stop writes first), or "
        "ROUTES changed to send bank.Vault to 'books'; until then bank.Vault does not see "
        "them. Keep this table until they are moved."
    )
    (missing,) = findings(report, database="loans")
    assert missing["kind"] == Drift.MISSING_TABLE
    assert "Its rows are in 'books' (2 rows)" in missing["problem"]
    for item in report["audit"]:
        assert "stray" not in item["problem"] and "drop it" not in item["problem"].lower()
    assert "DROP" not in text
    assert [fix["commands"] for fix in report["fixes"]] == [
        [
            "manage.py migrate bank zero --fake --database loans",
            "manage.py fleet migrate --database loans",
        ]
    ]

    project.run_fixes(report)
    code, report, text = project.status()
    assert code == ExitCode.DRIFT and report["fixes"] == []
    (rows,) = report["audit"]
    assert "where its table holds 0 rows" in rows["problem"]
    assert f"holds 0 rows. These rows must be moved to 'loans' (with {advice};" in rows["problem"]
    # Moved as the report says: then all is in order, the old table kept as a backup.
    for command in (start, finish):
        result = project.run(*shlex.split(command)[1:])
        assert result.returncode == 0, f"{command}:\n{result.stdout}{result.stderr}"
    assert "Moved bank.Vault from books to loans" in result.stdout
    assert project.sql("loans", "SELECT name, balance FROM bank_vault ORDER BY name") == [
        ("north", 10),
        ("south", 20),
    ]
    assert "bank_vault" not in project.tables("books")
    code, report, text = project.status()
    assert code == ExitCode.OK, text
    assert "Audit: every table is where its migrations and routes say." in text


def test_a_changed_default_database_keeps_the_rows_where_they_are(project: Project) -> None:
    assert project.run("fleet", "migrate").returncode == 0
    project.env["default_database"] = "loans"
    code, report, text = project.status()
    assert code == ExitCode.DRIFT
    # 'default' is migrated no more, but it holds the rows: audited, and nothing there is
    # called droppable.
    assert "default" in report["audited"] and "default" not in report["databases"]
    kept = findings(report, database="default", kind=Drift.ROWS_ELSEWHERE)
    assert {"django_content_type", "auth_permission"} <= {item["table"] for item in kept}
    assert all("must be moved to 'loans'" in item["problem"] for item in kept)
    assert all(item["rows"] == 0 for item in findings(report, kind=Drift.STRAY))
    made = findings(report, database="loans", kind=Drift.MISSING_TABLE)
    assert {"auth_user", "django_content_type", "library_author", "bank_account"} <= {
        item["table"] for item in made
    }
    (fix,) = report["fixes"]
    assert fix["commands"][-1] == "manage.py fleet migrate --database loans"
    assert all("--fake --database loans" in command for command in fix["commands"][:-1])

    project.run_fixes(report)
    code, report, text = project.status()
    assert code == ExitCode.DRIFT and report["fixes"] == []
    assert {item["database"] for item in report["audit"]} == {"default"}
    assert {item["kind"] for item in report["audit"]} <= {Drift.ROWS_ELSEWHERE, Drift.STRAY}


def test_an_unhinted_operation_in_a_split_app_is_refused_before_anything_runs(
    project: Project,
) -> None:
    project.env["migration_modules"] = "library=tests.migration_cases.unhinted"
    where = "tests/migration_cases/unhinted/0001_initial.py, operation 1 (RunPython noop)"
    result = project.run("fleet", "migrate")
    assert result.returncode == 1
    assert "dbfleet.E034" in result.stderr and where in result.stderr
    # With the checks skipped, fleet migrate itself refuses, and says what to do where the
    # migration is already recorded.
    result = project.run("fleet", "migrate", "--skip-checks")
    assert result.returncode == 2
    assert "Nothing was migrated" in result.stderr and where in result.stderr
    assert "Fix: hints={'target_db': 'default'}" in result.stderr
    assert "Where this migration is already recorded, the hint alone changes nothing" in (
        result.stderr
    )
    assert all(not project.tables(alias) for alias in ALIASES)


# --- In process, on the test databases ----------------------------------------------


@ddl_rolls_back
@override_settings(MIGRATION_MODULES={"library": HALF_APPLIED.partition("=")[2]})
@pytest.mark.django_db(databases="__all__")
def test_a_column_without_its_migration_is_found_as_a_half_applied_migration() -> None:
    # What MariaDB leaves after 0003's AddField, made by hand here, where DDL rolls back.
    with connections["books"].cursor() as cursor:
        cursor.execute("ALTER TABLE library_book ADD COLUMN weight integer DEFAULT 0 NOT NULL")
    result = status()
    (item,) = result.audit
    assert (item.database, item.kind, item.column) == ("books", Drift.HALF_APPLIED, "weight")
    assert "it stopped after operation 1 of 2" in item.problem
    assert [fix.commands for fix in result.fixes] == [
        ("manage.py fleet migrate --resume --database books",)
    ]


@ddl_rolls_back
@override_settings(MIGRATION_MODULES={"library": "tests.migration_cases.out_of_order"})
@pytest.mark.django_db(databases="__all__")
def test_effects_out_of_order_are_not_resumed() -> None:
    with connections["books"].cursor() as cursor:
        cursor.execute("ALTER TABLE library_book ADD COLUMN depth integer DEFAULT 0 NOT NULL")
    result = status()
    item, extra = result.audit
    assert item.kind == Drift.HALF_APPLIED and extra.kind == Drift.EXTRA_COLUMN
    assert item.problem.startswith(
        "column `library_book.depth` exists, but `library.0003_two_columns` is not recorded, and "
        "its operations' effects are there out of order (done: 2; not done: 1): it cannot be "
        "resumed."
    )
    assert [fix.commands for fix in result.fixes] == [
        ("manage.py sqlmigrate library 0003_two_columns --database books",)
    ]
    with pytest.raises(NotResumable, match="cannot be resumed"):
        resume("books")
    # fleet migrate --resume stops there, before any worker starts.
    with pytest.raises(CommandError, match="cannot be resumed.*Nothing was migrated after it"):
        call_command("fleet", "migrate", "--resume", "--database", "books", stdout=StringIO())


@ddl_rolls_back
@pytest.mark.django_db(databases="__all__")
def test_columns_that_disagree_with_the_records() -> None:
    with connections["books"].cursor() as cursor:
        cursor.execute("ALTER TABLE library_book ADD COLUMN shelf integer")
    result = status()
    (item,) = result.audit
    assert (item.kind, item.table, item.column) == (Drift.EXTRA_COLUMN, "library_book", "shelf")
    assert result.fixes == []


@ddl_rolls_back
@pytest.mark.django_db(databases="__all__")
def test_a_column_dropped_by_hand_is_missing_and_its_migration_named() -> None:
    with connections["books"].cursor() as cursor:
        cursor.execute("ALTER TABLE library_book DROP COLUMN content")
    result = status()
    (item,) = result.audit
    assert (item.kind, item.table, item.column) == (
        Drift.MISSING_COLUMN, "library_book", "content"
    )  # fmt: skip
    assert item.problem == (
        "column `library_book.content` is missing, but `library.0001_initial`, which adds it, "
        "is recorded: it was dropped by hand, or by a RunSQL without state_operations."
    )
    assert [fix.commands for fix in result.fixes] == [
        ("manage.py sqlmigrate library 0001_initial --database books",)
    ]
    assert "library_book.content" in result.fixes[0].note


@pytest.mark.django_db(databases="__all__")
def test_a_routes_typo_is_shown_first_and_nothing_is_audited() -> None:
    # "library.Bok" is left out (E006), so Book would be unrouted: its real table in
    # 'books', full of rows, would look like a copy left behind.
    typo = {key: alias for key, alias in ROUTES.items() if key != "library.Book"}
    with override_settings(DBFLEET={"ROUTES": {**typo, "library.Bok": "books"}}):
        stdout = StringIO()
        with pytest.raises(CommandError) as raised:
            call_command("fleet", "status", stdout=stdout)
    assert raised.value.returncode == ExitCode.CONFIGURATION
    text = stdout.getvalue()
    assert text.startswith("Configuration errors: fix these first.")
    assert "dbfleet.E006" in text.split("\n\n")[0]
    assert "Audit: not done until the configuration errors above are fixed." in text
    assert "library_book" not in text
    with override_settings(DBFLEET={"ROUTES": {**typo, "library.Bok": "books"}}):
        stdout = StringIO()
        with pytest.raises(CommandError):
            call_command("fleet", "status", "--format", "json", stdout=stdout)
    document = json.loads(stdout.getvalue())
    assert document["audit"] == [] and document["fixes"] == [] and document["configuration"]


@pytest.mark.django_db(databases="__all__")
def test_an_unreachable_database_is_never_in_the_all_clear(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # fleet status reads every database on a probe connection made from these settings.
    settings_dict = connections["loans"].settings_dict
    if ENGINES["loans"] == "sqlite":
        monkeypatch.setitem(settings_dict, "NAME", "/nonexistent/directory/loans.sqlite3")
    else:
        monkeypatch.setitem(settings_dict, "HOST", "127.0.0.1")
        monkeypatch.setitem(settings_dict, "PORT", 1)
    stdout = StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("fleet", "status", stdout=stdout)
    assert raised.value.returncode == ExitCode.UNREACHABLE
    assert "unreachable: loans" in str(raised.value)
    text = stdout.getvalue()
    assert "loans: unreachable: OperationalError" in text
    assert "Audit: every table is where" not in text
    assert "Audit of default, books: every table is where its migrations and routes say." in text
    assert "Not audited (unreachable): loans." in text


@override_settings(MIGRATION_MODULES={"library": "tests.migration_cases.pending"})
@pytest.mark.django_db(databases="__all__")
def test_pending_migrations_exit_1_from_status_and_plan_check() -> None:
    with pytest.raises(CommandError) as raised:
        call_command("fleet", "status", stdout=StringIO())
    assert raised.value.returncode == ExitCode.PENDING
    assert "pending: 1 on books" in str(raised.value)
    stdout = StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("fleet", "plan", "--check", stdout=stdout)
    assert raised.value.returncode == ExitCode.PENDING
    assert "library.0003_note (pending)" in stdout.getvalue()
    # Without --check, the plan is only shown.
    call_command("fleet", "plan", stdout=StringIO())


@pytest.mark.django_db(databases="__all__")
def test_plan_check_exits_0_when_nothing_is_pending_and_7_on_configuration_errors() -> None:
    call_command("fleet", "plan", "--check", stdout=StringIO())
    call_command("fleet", "status", stdout=StringIO())
    with (
        override_settings(MIGRATION_MODULES={"library": "tests.migration_cases.db_hint"}),
        pytest.raises(CommandError) as raised,
    ):
        call_command("fleet", "plan", "--check", stdout=StringIO())
    assert raised.value.returncode == ExitCode.CONFIGURATION


def test_the_most_serious_reason_gives_the_exit_code() -> None:
    """In doubt and replica states, which need a crashed coordinator or a broken replica."""
    report = FleetStatus(
        databases=["default"],
        in_doubt={"default": 2},
        replicas=[
            ReplicaStatus("replica", "default", True, None, "not a replica", "not a replica")
        ],
    )
    reasons = status_reasons(report)
    assert reasons == [
        Reason(ExitCode.REPLICA, "replica not serving reads: replica"),
        Reason(ExitCode.IN_DOUBT, "in doubt: 2 on default"),
    ]
    assert max(reason.code for reason in reasons) == 5
    report.replicas = [
        ReplicaStatus("replica", "default", False, None, "unreachable: x", "unreachable")
    ]
    assert [reason.code for reason in status_reasons(report)] == [
        ExitCode.UNREACHABLE,
        ExitCode.IN_DOUBT,
    ]
