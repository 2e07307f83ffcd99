"""Operation-by-operation decisions, plans and status, in process."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import migrations, models
from django.test import override_settings

from dbfleet.management.fleet.output import jsonable
from dbfleet.migrating.lint import Kind, lint
from dbfleet.migrating.plan import decide, migratable_databases, plan
from dbfleet.migrating.status import State, status
from dbfleet.reports import fleet_status

ALIASES = ("default", "books", "loans")


def where(app_label: str, operation: Any) -> dict[str, tuple[bool, str]]:
    return {alias: decide(alias, app_label, operation) for alias in ALIASES}


def runs_on(app_label: str, operation: Any) -> list[str]:
    return [alias for alias, (runs, _) in where(app_label, operation).items() if runs]


def test_model_operations_follow_their_model() -> None:
    add_to_author = migrations.AddField("author", "nickname", models.CharField(max_length=9))
    assert runs_on("library", add_to_author) == ["default"]
    assert runs_on("library", migrations.DeleteModel("Book")) == ["books"]
    assert runs_on("loans", migrations.RenameModel("Shelf", "Rack")) == ["loans"]
    reason = where("library", migrations.AlterField("book", "content", models.TextField()))
    assert reason["books"] == (True, "library.book lives in 'books' (ROUTES[\"library.Book\"])")
    assert reason["default"][1] == reason["books"][1]


def test_a_renamed_model_is_routed_by_its_new_name_as_django_does() -> None:
    # library.Book lives in 'books'; "Tome" is routed nowhere, so to 'default'.
    assert runs_on("library", migrations.RenameModel("Tome", "Book")) == ["books"]
    assert runs_on("library", migrations.RenameModel("Book", "Tome")) == ["default"]


@pytest.mark.parametrize(
    ("setting", "aliases"),
    [(None, ["default"]), ("library.shelf", ["default"]), ("library.Shelf", ["default"]),
     ("library.Rack", [])],
)  # fmt: skip
def test_a_swappable_model_is_swapped_out_as_django_decides(
    setting: str | None, aliases: list[str]
) -> None:
    operation = migrations.CreateModel(
        "Shelf",
        [("id", models.AutoField(primary_key=True))],
        options={"swappable": "LIBRARY_SHELF_MODEL"},
    )
    with override_settings(LIBRARY_SHELF_MODEL=setting):
        assert runs_on("library", operation) == aliases


def test_hinted_operations_follow_their_hints() -> None:
    operation = migrations.RunSQL("SELECT 1", hints={"target_db": "books"})
    assert runs_on("library", operation) == ["books"]
    assert where("library", operation)["books"][1] == "hint target_db='books'"
    by_model = migrations.RunPython(migrations.RunPython.noop, hints={"model": "loans.Loan"})
    assert runs_on("library", by_model) == ["loans"]


def test_unhinted_operations_follow_the_app_or_default_database() -> None:
    operation = migrations.RunPython(migrations.RunPython.noop)
    assert runs_on("loans", operation) == ["loans"]
    assert runs_on("library", operation) == ["default"]
    assert "split across databases" in where("library", operation)["default"][1]


def test_db_hint_runs_nowhere() -> None:
    operation = migrations.RunPython(migrations.RunPython.noop, hints={"db": "books"})
    assert where("library", operation)["books"] == (
        False,
        "cannot run: a 'db' hint crashes migrate",
    )


def test_tables_without_models_and_custom_operations() -> None:
    proxy = migrations.CreateModel("Alias", [], options={"proxy": True}, bases=("library.book",))
    assert runs_on("library", proxy) == []
    assert where("library", proxy)["books"][1] == "proxy or unmanaged model: no table"
    assert runs_on("library", migrations.SeparateDatabaseAndState()) == list(ALIASES)


@override_settings(DATABASE_ROUTERS=["tests.routers.EverythingToDefault", "dbfleet.Router"])
def test_another_router_deciding_is_named() -> None:
    class Deny:
        def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
            return False

    with override_settings(DATABASE_ROUTERS=[Deny(), "dbfleet.Router"]):
        decision = decide(
            "default", "library", migrations.AddField("author", "x", models.IntegerField())
        )
    assert decision == (False, "decided by a router before dbfleet.Router")


def test_replicas_and_mirrors_are_not_migratable() -> None:
    assert migratable_databases() == list(ALIASES)


def test_lint_is_clean_for_the_test_project() -> None:
    assert lint() == []


@override_settings(MIGRATION_MODULES={"library": "tests.migration_cases.db_hint"})
def test_lint_finds_a_db_hint_with_its_fix() -> None:
    (finding,) = lint()
    assert finding.kind is Kind.DB_HINT
    assert (
        finding.location()
        == "tests/migration_cases/db_hint/0001_initial.py, operation 1 (RunPython noop)"
    )
    assert finding.fix == "hints={'target_db': 'books'}"


@pytest.mark.django_db(databases="__all__")
def test_plan_of_an_up_to_date_fleet_is_empty() -> None:
    plans = plan()
    assert [p.alias for p in plans] == list(ALIASES)
    assert all(p.migrations == () and p.pending == 0 and p.error is None for p in plans)


@pytest.mark.django_db(databases="__all__")
def test_plan_all_shows_each_operation_on_each_database() -> None:
    plans = {p.alias: p for p in plan(include_applied=True)}
    for alias in ALIASES:
        (migration,) = [
            m for m in plans[alias].migrations if m.label == "library.0002_email_and_title"
        ]
        assert migration.applied
        runs = [step.runs for step in migration.operations]
        assert (
            runs
            == {
                "default": [True, False, False, False],
                "books": [False, True, True, True],
                "loans": [False] * 4,
            }[alias]
        )


@pytest.mark.django_db(databases="__all__")
def test_fleet_plan_command_text_and_json() -> None:
    stdout = StringIO()
    call_command("fleet", "plan", stdout=stdout)
    assert stdout.getvalue().count(": up to date") == len(ALIASES)
    stdout = StringIO()
    call_command("fleet", "plan", "--all", "--format", "json", stdout=stdout)
    document = json.loads(stdout.getvalue())
    assert [database["alias"] for database in document] == list(ALIASES)
    assert document[1]["migrations"][-1]["operations"][0]["reason"]
    stdout = StringIO()
    call_command("fleet", "plan", "--all", "--database", "books", stdout=stdout)
    text = stdout.getvalue()
    assert "library.0002_email_and_title (applied)" in text
    assert "RunPython title_books" in text and "hint target_db='books'" in text
    assert "auth.0001_initial (applied): nothing runs here" in text


@override_settings(MIGRATION_MODULES={"library": "tests.migration_cases.db_hint"})
@pytest.mark.django_db(databases="__all__")
def test_fleet_plan_flags_a_db_hint() -> None:
    stdout = StringIO()
    call_command("fleet", "plan", "--all", "--database", "books", stdout=stdout)
    assert "! has hints={'db': 'books'}" in stdout.getvalue()
    assert "fix: hints={'target_db': 'books'}" in stdout.getvalue()
    stdout = StringIO()
    call_command("fleet", "plan", "--all", "--database", "books", format="json", stdout=stdout)
    (migration,) = [
        m for m in json.loads(stdout.getvalue())[0]["migrations"] if m["app_label"] == "library"
    ]
    assert migration["operations"][0]["finding"]["kind"] == "db-hint"  # The enum's value.


@pytest.mark.django_db(databases="__all__")
def test_status_of_the_test_databases() -> None:
    result = status()
    assert result.errors == {} and result.audit == []
    assert result.migrations["library.0002_email_and_title"] == dict.fromkeys(
        ALIASES, State.APPLIED
    )
    stdout = StringIO()
    call_command("fleet", "status", "--all", stdout=stdout)
    assert "Audit: every table is where its migrations and routes say." in stdout.getvalue()
    assert "library.0002_email_and_title" in stdout.getvalue()


@pytest.mark.django_db(databases="__all__")
def test_fleet_status_json_is_the_report() -> None:
    report = fleet_status(list(ALIASES))
    stdout = StringIO()
    call_command("fleet", "status", format="json", stdout=stdout)
    document = json.loads(stdout.getvalue())
    assert document == jsonable(report)
    assert list(document) == [
        "databases",
        "migrations",
        "errors",
        "audit",
        "audited",
        "fixes",
        "configuration",
        "participants",
        "in_doubt",
        "in_doubt_unreachable",
        "replicas",
        "synced",
        "moves",
        "reasons",
        "exit_code",
    ]
    assert document["in_doubt"] == dict.fromkeys(report.participants, 0)
    assert document["audited"] == list(ALIASES) and document["exit_code"] == 0


def test_string_model_hints_resolve_like_classes() -> None:
    by_proxy = migrations.RunPython(migrations.RunPython.noop, hints={"model": "library.BookProxy"})
    assert runs_on("library", by_proxy) == ["books"]


@override_settings(MIGRATION_MODULES={"library": "tests.migration_cases.unknown_target"})
def test_lint_finds_targets_that_run_nowhere() -> None:
    (finding,) = lint()
    assert finding.kind is Kind.UNKNOWN_TARGET
    assert "'bokks'" in finding.problem


def test_migratable_databases_skip_aliases_nothing_is_routed_to() -> None:
    with override_settings(DBFLEET={"ROUTES": {"library.Book": "books"}}):
        assert migratable_databases() == ["default", "books"]


@override_settings(MIGRATION_MODULES={"library": "tests.migration_cases.several"})
@pytest.mark.django_db(databases="__all__")
def test_lint_reports_each_problem_of_an_operation() -> None:
    found = [(finding.position, finding.kind, finding.fix) for finding in lint()]
    model, choices = "'model': 'nowhere.Nothing'", "'default', 'books', 'loans'"
    assert found == [
        (1, Kind.UNKNOWN_TARGET, f"target_db one of {choices}, or model='app_label.Model'"),
        (2, Kind.UNKNOWN_TARGET, f"hints={{'target_db': ['books', 'replica'], {model}}}"),
        (
            2,
            Kind.REPLICA_TARGET,
            f"hints={{'target_db': ['books', 'bokks', 'default'], {model}}} (the primary: its "
            "replicas copy what it does)",
        ),
        (2, Kind.UNKNOWN_MODEL, "model='app_label.Model', naming an installed model"),
    ]
    problems = [finding.problem for finding in lint()]
    assert "target_db 5 is neither a database alias nor a list of aliases" in problems[0]
    # Only part of the list is wrong: the operation still runs on 'books'.
    assert "runs nowhere" not in problems[1] and "runs nowhere" not in problems[2]
    stdout = StringIO()
    call_command("fleet", "plan", "--all", "--database", "books", stdout=stdout)
    # The plan marks each operation with its first finding.
    assert "! has hints={'target_db': 5}" in stdout.getvalue()
    assert "cannot run: a target_db of 5 crashes migrate" in stdout.getvalue()


def test_a_database_nothing_is_routed_to_is_not_migrated_and_says_why() -> None:
    fleet: dict[str, Any] = settings.DBFLEET
    routes = {key: alias for key, alias in fleet["ROUTES"].items() if alias != "loans"}
    with (
        override_settings(DBFLEET={**fleet, "ROUTES": routes}),
        pytest.raises(CommandError, match="Nothing is routed to 'loans', so migrating it"),
    ):
        call_command("fleet", "migrate", "--database", "loans")
    with pytest.raises(CommandError, match="'replica' is never migrated: it is a replica"):
        call_command("fleet", "migrate", "--database", "replica")
