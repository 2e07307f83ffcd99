"""Every check id fires on a configuration that provokes it and stays silent otherwise."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.checks import CheckMessage, run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from tests.servers import scratch_postgres
from tests.settings import CONFIGURATION

ROOT = Path(__file__).resolve().parent.parent
ROUTES = {"library.Book": "books", "library.Review": "books", "loans": "loans"}
REPLICAS = {"default": ["replica"]}


def problems(**dbfleet: Any) -> list[CheckMessage]:
    with override_settings(DBFLEET={"ROUTES": ROUTES, "REPLICAS": REPLICAS, **dbfleet}):
        return run_checks(tags=["dbfleet"])


def only(messages: list[CheckMessage], check_id: str) -> CheckMessage:
    assert [message.id for message in messages] == [check_id], messages
    return messages[0]


def test_correct_configuration_is_silent() -> None:
    assert problems() == []
    assert run_checks() == []


def test_e001_not_a_dict() -> None:
    with override_settings(DBFLEET=["books"]):
        only(run_checks(tags=["dbfleet"]), "dbfleet.E001")


def test_e002_unknown_key() -> None:
    message = only(problems(REPLICA={}), "dbfleet.E002")
    assert "REPLICA" in message.msg


def test_e003_malformed_route() -> None:
    only(problems(ROUTES={"library.Book.content": "books"}), "dbfleet.E003")


def test_e004_route_to_unknown_database() -> None:
    message = only(problems(ROUTES={**ROUTES, "loans": "loan"}), "dbfleet.E004")
    assert "'loan'" in message.msg
    assert message.hint is not None and "'loans'" in message.hint


def test_e005_unknown_app() -> None:
    message = only(problems(ROUTES={**ROUTES, "lons": "loans"}), "dbfleet.E005")
    assert message.hint is not None and "Did you mean 'loans'?" in message.hint


def test_e006_unknown_model() -> None:
    message = only(problems(ROUTES={**ROUTES, "library.Bok": "books"}), "dbfleet.E006")
    assert message.hint is not None and "Did you mean 'Book'?" in message.hint


def test_e007_unknown_default_database() -> None:
    only(problems(DEFAULT_DATABASE="main"), "dbfleet.E007")


def test_e008_malformed_replicas() -> None:
    only(problems(REPLICAS={"default": [{"alias": "replica", "weight": -1}]}), "dbfleet.E008")


def test_e009_unknown_replica() -> None:
    only(problems(REPLICAS={"default": ["replica9"]}), "dbfleet.E009")


def test_e010_replica_under_two_primaries() -> None:
    message = only(
        problems(REPLICAS={"default": ["replica"], "books": ["replica"]}), "dbfleet.E010"
    )
    assert "'default'" in message.msg and "'books'" in message.msg


def test_e011_routed_to_a_replica() -> None:
    only(problems(ROUTES={**ROUTES, "loans": "replica"}), "dbfleet.E011")


@override_settings(DATABASE_ROUTERS=[])
def test_e012_router_not_installed() -> None:
    message = only(problems(), "dbfleet.E012")
    assert message.hint is not None and '"dbfleet.Router"' in message.hint


@override_settings(DATABASE_ROUTERS=[])
def test_e012_silent_without_dbfleet_setting() -> None:
    with override_settings(DBFLEET=None):
        assert run_checks(tags=["dbfleet"]) == []


@override_settings(DATABASE_ROUTERS=["tests.routers.EverythingToDefault", "dbfleet.Router"])
def test_e013_earlier_router_overrides_routes() -> None:
    messages = problems()
    assert {message.id for message in messages} == {"dbfleet.E013"}
    assert sorted(message.obj._meta.label for message in messages) == [
        "library.Book",
        "library.BookProxy",
        "library.Review",
        "loans.Favourite",
        "loans.Loan",
        "loans.Member",
        "loans.Shelf",
    ]
    assert "EverythingToDefault" in messages[0].msg


@override_settings(DATABASE_ROUTERS=["tests.routers.Silent", "dbfleet.Router"])
def test_e013_silent_for_an_earlier_router_without_opinion() -> None:
    assert problems() == []


def test_e014_foreign_key_across_groups() -> None:
    message = only(problems(ROUTES={**ROUTES, "library.Review": "loans"}), "dbfleet.E014")
    assert "library.Review.book" in message.msg
    assert message.hint is not None and "Route library.Review and library.Book" in message.hint


def test_e014_many_to_many_across_groups() -> None:
    messages = problems(ROUTES={**ROUTES, "loans.Shelf": "default"})
    assert {message.id for message in messages} == {"dbfleet.E014"}
    # The auto-created table is reported on its field, an explicit one on its foreign key.
    fields = sorted(message.msg.split()[0] for message in messages)
    assert fields == ["loans.Favourite.shelf", "loans.Loan.books_read"]


def test_e015_auth_and_contenttypes_apart() -> None:
    messages = problems(ROUTES={**ROUTES, "contenttypes": "books"})
    # The admin's log entries refer to content types too: a plain E014, on its own field.
    admin = [message for message in messages if message.msg.startswith("admin.LogEntry.")]
    assert [(m.id, m.msg.split()[0]) for m in admin] == [
        ("dbfleet.E014", "admin.LogEntry.content_type")
    ]
    message = only([m for m in messages if m not in admin], "dbfleet.E015")
    assert message.hint is not None and "\"contenttypes\": 'default'" in message.hint


def test_e016_route_to_a_proxy() -> None:
    message = only(problems(ROUTES={**ROUTES, "library.BookProxy": "books"}), "dbfleet.E016")
    assert message.hint is not None and '"library.Book"' in message.hint


def test_w001_replica_does_not_mirror_its_primary() -> None:
    message = only(problems(REPLICAS={"books": ["replica"]}), "dbfleet.W001")
    assert message.hint is not None and '{"MIRROR": "books"}' in message.hint


def test_w002_soft_foreign_key_across_groups() -> None:
    messages = problems(ROUTES={**ROUTES, "loans.Member": "default"})
    found = sorted((message.id, message.msg.split()[0]) for message in messages)
    # Loan.member has db_constraint=False: a warning. Favourite.member has a constraint.
    assert found == [
        ("dbfleet.E014", "loans.Favourite.member"),
        ("dbfleet.W002", "loans.Loan.member"),
    ]


def test_check_command_reports_errors_with_hints() -> None:
    with (
        override_settings(DBFLEET={"ROUTES": {**ROUTES, "library.Book": "bokks"}}),
        pytest.raises(SystemCheckError) as raised,
    ):
        call_command("check", stdout=StringIO(), stderr=StringIO())
    assert "dbfleet.E004" in str(raised.value)
    assert "HINT: Use one of" in str(raised.value)


def test_check_command_passes_a_correct_configuration() -> None:
    stdout = StringIO()
    call_command("check", stdout=stdout)
    assert "no issues" in stdout.getvalue()


def ids_in(text: str) -> set[str]:
    return set(re.findall(r"dbfleet\.[EW]\d{3}", text))


def test_check_ids_are_listed_once_in_the_readme_and_each_has_a_test() -> None:
    source = "".join(path.read_text() for path in (ROOT / "src" / "dbfleet").rglob("*.py"))
    readme_rows = re.findall(
        r"^\| `(dbfleet\.[EW]\d{3})` \|", (ROOT / "README.md").read_text(), re.M
    )
    assert len(readme_rows) == len(set(readme_rows)), "an id is listed twice"
    assert set(readme_rows) == ids_in(source)
    tests = Path(__file__).read_text()
    for check_id in ids_in(source):
        assert f"def test_{check_id.split('.')[1].lower()}_" in tests


def migration_problems(module: str, app: str = "library") -> list[CheckMessage]:
    with override_settings(MIGRATION_MODULES={app: f"tests.migration_cases.{module}"}):
        return run_checks(tags=["dbfleet"])


def test_e017_db_hint_crashes_migrate() -> None:
    message = only(migration_problems("db_hint"), "dbfleet.E017")
    assert (
        "tests/migration_cases/db_hint/0001_initial.py, operation 1 (RunPython noop)" in message.msg
    )
    assert "got multiple values for argument 'db'" in message.msg
    assert message.hint == "Use hints={'target_db': 'books'}."


def test_e018_target_db_not_in_databases() -> None:
    message = only(migration_problems("unknown_target"), "dbfleet.E018")
    assert "'bokks'" in message.msg


def test_w003_unhinted_operation_in_a_split_app() -> None:
    message = only(migration_problems("unhinted"), "dbfleet.W003")
    assert "app 'library' is split across databases" in message.msg
    assert message.hint is not None and "target_db" in message.hint


def test_w003_silent_for_an_app_routed_as_a_whole() -> None:
    assert migration_problems("unhinted", app="loans") == []


def test_e016_route_to_an_auto_created_model() -> None:
    message = only(problems(ROUTES={**ROUTES, "loans.Loan_books_read": "default"}), "dbfleet.E016")
    assert "auto-created model 'loans.Loan_books_read'" in message.msg


def test_e019_unknown_write_guard_mode() -> None:
    message = only(problems(WRITE_GUARD="rasie"), "dbfleet.E019")
    assert message.hint is not None and "Did you mean 'raise'?" in message.hint


@pytest.mark.parametrize("grace", [-1, "60", float("inf"), True])
def test_e020_recovery_grace_not_a_number_of_seconds(grace: object) -> None:
    only(problems(RECOVERY_GRACE=grace), "dbfleet.E020")


def test_e021_unknown_read_your_writes_mode() -> None:
    message = only(problems(READ_YOUR_WRITES="positoin"), "dbfleet.E021")
    assert message.hint is not None and "Did you mean 'position'?" in message.hint


@pytest.mark.parametrize(
    "key", ["MAX_LAG", "REPLICA_COOLDOWN", "REPLICA_CHECK_INTERVAL", "READ_YOUR_WRITES_WINDOW"]
)
@pytest.mark.parametrize("seconds", [-1, "2", float("nan"), None])
def test_e022_replica_timing_not_a_number_of_seconds(key: str, seconds: object) -> None:
    message = only(problems(**{key: seconds}), "dbfleet.E022")
    assert key in message.msg and message.hint is not None and "default" in message.hint


@pytest.mark.parametrize("cookie", ["", "two words", "semi;colon", 7])
def test_e023_read_your_writes_cookie_not_a_cookie_name(cookie: object) -> None:
    only(problems(READ_YOUR_WRITES_COOKIE=cookie), "dbfleet.E023")


@pytest.mark.skipif(
    CONFIGURATION != "postgres" or shutil.which("pg_config") is None,
    reason="starts its own PostgreSQL cluster; runs in the postgres configuration",
)
def test_w004_postgres_without_prepared_transactions() -> None:
    """A new cluster has PostgreSQL's default, max_prepared_transactions = 0."""
    with scratch_postgres() as url:
        result = subprocess.run(
            [sys.executable, "-m", "django", "check", "--database", "scratch"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.scratch_settings",
                 "DBFLEET_SCRATCH_URL": url},
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "System check identified 1 issue" in result.stderr
    assert "Database 'scratch' (PostgreSQL) has max_prepared_transactions = 0" in result.stderr
    assert "ALTER SYSTEM SET max_prepared_transactions = 64" in result.stderr
