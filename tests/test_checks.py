"""Every check id fires on a configuration that provokes it and stays silent otherwise."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.checks import ERROR, CheckMessage, run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connections
from django.test import override_settings

from dbfleet.check_ids import CheckId
from dbfleet.checks import MIGRATION_CHECKS
from dbfleet.conf import parse
from dbfleet.migrating.lint import Kind
from dbfleet.topology import Replica
from tests.servers import scratch_postgres
from tests.settings import CONFIGURATION, DATABASES, ENGINES

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


@pytest.mark.parametrize(
    ("replicas", "message"),
    [
        (["replica"], 'DBFLEET["REPLICAS"] must be a dict, not list.'),
        ({"default": "replica"}, "DBFLEET[\"REPLICAS\"]['default'] must be a list, not str."),
        (
            {"default": [3]},
            "DBFLEET[\"REPLICAS\"]['default'][0] is 3, which is neither a database alias nor "
            'a dict with "alias".',
        ),
        (
            {"default": [{"weight": 2}]},
            "DBFLEET[\"REPLICAS\"]['default'][0] = {'weight': 2}: it has no \"alias\".",
        ),
    ],
)
def test_e008_malformed_replicas(replicas: object, message: str) -> None:
    found = only(problems(REPLICAS=replicas), "dbfleet.E008")
    assert found.msg == message
    assert found.hint is not None and "replica2" in found.hint and "weight" in found.hint


def test_e009_unknown_replica() -> None:
    only(problems(REPLICAS={"default": ["replica9"]}), "dbfleet.E009")


def test_e010_replica_under_two_primaries() -> None:
    message = only(
        problems(REPLICAS={"default": ["replica"], "books": ["replica"]}), "dbfleet.E010"
    )
    assert "'default'" in message.msg and "'books'" in message.msg


def test_e011_routed_to_a_replica() -> None:
    message = only(problems(ROUTES={**ROUTES, "loans": "replica"}), "dbfleet.E011")
    assert message.msg == (
        "DBFLEET[\"ROUTES\"]['loans'] routes to 'replica', which is a replica of 'default'."
    )
    assert message.hint is not None and "'loans': 'default'" in message.hint


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


#: On SQLite a replica of 'books' that mirrors 'default' is also another file than its primary.
ANOTHER_FILE: set[CheckId] = (
    {CheckId.REPLICA_ON_ANOTHER_SQLITE_FILE} if ENGINES["books"] == "sqlite" else set()
)


def test_w001_replica_does_not_mirror_its_primary() -> None:
    messages = problems(REPLICAS={"books": ["replica"]})
    messages = [message for message in messages if message.id not in ANOTHER_FILE]
    message = only(messages, "dbfleet.W001")
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
        r"^\| `(dbfleet\.[EW]\d{3})` \| (.+?) \|", (ROOT / "README.md").read_text(), re.M
    )
    ids = [check_id for check_id, _ in readme_rows]
    assert len(ids) == len(set(ids)), "an id is listed twice"
    assert ids_in(source) == {check.value for check in CheckId}
    # The README describes each id's problem in the registry's words.
    assert dict(readme_rows) == {check.value: check.problem for check in CheckId}
    tests = Path(__file__).read_text()
    for check in CheckId:
        assert f"def test_{check.value.split('.')[1].lower()}_" in tests


def test_check_ids_are_numbered_in_the_order_they_were_added() -> None:
    """Append-only: a new problem takes the next number; none is skipped or reused."""
    for letter in "EW":
        numbers = [int(check.value[-3:]) for check in CheckId if check.value[8] == letter]
        assert numbers == list(range(1, len(numbers) + 1))


def fleet(**dbfleet: Any) -> dict[str, Any]:
    """Settings with the test project's DBFLEET, changed by ``dbfleet``."""
    return {"DBFLEET": {"ROUTES": ROUTES, "REPLICAS": REPLICAS, **dbfleet}}


def cases(module: str) -> dict[str, Any]:
    return {**fleet(), "MIGRATION_MODULES": {"library": f"tests.migration_cases.{module}"}}


EARLIER_ROUTER = ["tests.routers.EverythingToDefault", "dbfleet.Router"]
#: (the problem, settings that have exactly that problem, ids that necessarily come along).
#: Several settings per problem where the problem can be spelt several ways: each must
#: be reported with the problem's one id, and no other problem with that id.
PROBLEMS: list[tuple[CheckId, dict[str, Any], set[CheckId]]] = [
    (CheckId.DBFLEET_NOT_A_DICT, {"DBFLEET": ["books"]}, set()),
    (CheckId.UNKNOWN_KEY, fleet(REPLICA={}), set()),
    (CheckId.MALFORMED_ROUTES, fleet(ROUTES="books"), set()),
    (CheckId.MALFORMED_ROUTES, fleet(ROUTES={"library.Book.content": "books"}), set()),
    (CheckId.MALFORMED_ROUTES, fleet(ROUTES={**ROUTES, "loans": 1}), set()),
    (CheckId.ROUTE_TO_UNKNOWN_DATABASE, fleet(ROUTES={**ROUTES, "loans": "loan"}), set()),
    (CheckId.ROUTE_TO_UNKNOWN_APP, fleet(ROUTES={**ROUTES, "lons": "loans"}), set()),
    (CheckId.ROUTE_TO_UNKNOWN_MODEL, fleet(ROUTES={**ROUTES, "library.Bok": "books"}), set()),
    (CheckId.UNKNOWN_DEFAULT_DATABASE, fleet(DEFAULT_DATABASE="main"), set()),
    (CheckId.UNKNOWN_DEFAULT_DATABASE, fleet(DEFAULT_DATABASE=7), set()),
    (CheckId.MALFORMED_REPLICAS, fleet(REPLICAS=["replica"]), set()),
    (CheckId.MALFORMED_REPLICAS, fleet(REPLICAS={"default": "replica"}), set()),
    (CheckId.MALFORMED_REPLICAS, fleet(REPLICAS={"default": [3]}), set()),
    (CheckId.MALFORMED_REPLICAS, fleet(REPLICAS={"default": [{"weight": 2}]}), set()),
    (CheckId.MALFORMED_REPLICAS, fleet(REPLICAS={"default": [{"alias": 1}]}), set()),
    (CheckId.REPLICAS_UNKNOWN_DATABASE, fleet(REPLICAS={"default": ["replica9"]}), set()),
    (CheckId.REPLICAS_UNKNOWN_DATABASE, fleet(REPLICAS={"main": ["replica"]}), set()),
    (
        CheckId.REPLICA_UNDER_TWO_PRIMARIES,
        fleet(REPLICAS={"default": ["replica"], "books": ["replica"]}),
        set(),
    ),
    (CheckId.ROUTE_TO_REPLICA, fleet(ROUTES={**ROUTES, "loans": "replica"}), set()),
    (CheckId.ROUTER_NOT_INSTALLED, {**fleet(), "DATABASE_ROUTERS": []}, set()),
    (CheckId.EARLIER_ROUTER_OVERRIDES, {**fleet(), "DATABASE_ROUTERS": EARLIER_ROUTER}, set()),
    (CheckId.RELATION_ACROSS_GROUPS, fleet(ROUTES={**ROUTES, "library.Review": "loans"}), set()),
    (CheckId.RELATION_ACROSS_GROUPS, fleet(ROUTES={**ROUTES, "loans.Shelf": "default"}), set()),
    (
        CheckId.AUTH_APART_FROM_CONTENTTYPES,
        fleet(ROUTES={**ROUTES, "contenttypes": "books"}),
        {CheckId.RELATION_ACROSS_GROUPS},  # The admin's LogEntry.content_type, too.
    ),
    (
        CheckId.ROUTE_TO_DEPENDENT_MODEL,
        fleet(ROUTES={**ROUTES, "library.BookProxy": "books"}),
        set(),
    ),
    (
        CheckId.ROUTE_TO_DEPENDENT_MODEL,
        fleet(ROUTES={**ROUTES, "loans.Loan_books_read": "default"}),
        set(),
    ),
    (CheckId.DB_HINT, cases("db_hint"), set()),
    (CheckId.HINT_TO_UNKNOWN_DATABASE, cases("unknown_target"), set()),
    (CheckId.UNKNOWN_WRITE_GUARD, fleet(WRITE_GUARD="rasie"), set()),
    (CheckId.BAD_RECOVERY_GRACE, fleet(RECOVERY_GRACE=-1), set()),
    (CheckId.BAD_RECOVERY_GRACE, fleet(RECOVERY_GRACE="60"), set()),
    (CheckId.UNKNOWN_READ_YOUR_WRITES, fleet(READ_YOUR_WRITES="positoin"), set()),
    (CheckId.BAD_MAX_LAG, fleet(MAX_LAG=-1), set()),
    (CheckId.BAD_MAX_LAG, fleet(MAX_LAG="2"), set()),
    (CheckId.BAD_COOKIE_NAME, fleet(READ_YOUR_WRITES_COOKIE="two words"), set()),
    (CheckId.DEFAULT_DATABASE_IS_A_REPLICA, fleet(DEFAULT_DATABASE="replica"), set()),
    (
        CheckId.CHAINED_REPLICA,
        fleet(REPLICAS={"default": ["replica"], "replica": ["books"]}),
        set(),
    ),
    *(
        (
            CheckId.BAD_REPLICA_WEIGHT,
            fleet(REPLICAS={"default": [{"alias": "replica", "weight": w}]}),
            set(),
        )
        for w in (0, -3, "2", True, 1.5, None)
    ),
    (
        CheckId.UNKNOWN_REPLICA_KEY,
        fleet(REPLICAS={"default": [{"alias": "replica", "wieght": 2}]}),
        set(),
    ),
    (CheckId.BAD_REPLICA_COOLDOWN, fleet(REPLICA_COOLDOWN=-1), set()),
    (CheckId.BAD_REPLICA_CHECK_INTERVAL, fleet(REPLICA_CHECK_INTERVAL=-1), set()),
    (CheckId.BAD_READ_YOUR_WRITES_WINDOW, fleet(READ_YOUR_WRITES_WINDOW=-1), set()),
    (CheckId.HINT_TO_REPLICA, cases("replica_target"), set()),
    (CheckId.HINT_TO_UNKNOWN_MODEL, cases("unknown_model"), set()),
    (
        CheckId.REPLICA_MIRRORS_ANOTHER_DATABASE,
        fleet(REPLICAS={"books": ["replica"]}),
        ANOTHER_FILE,
    ),
    (CheckId.BAD_PROBE_TIMEOUT, fleet(PROBE_TIMEOUT=-1), set()),
    # A soft relation across groups comes with a hard one: Member, Favourite and Shelf are
    # tied by constraints, and Loan by its many-to-many to Shelf.
    (
        CheckId.SOFT_RELATION_ACROSS_GROUPS,
        fleet(ROUTES={**ROUTES, "loans.Member": "default"}),
        {CheckId.RELATION_ACROSS_GROUPS},
    ),
    (CheckId.UNHINTED_OPERATION_IN_SPLIT_APP, cases("unhinted"), set()),
    (CheckId.MALFORMED_SHARDS, fleet(SHARDS=["default"]), set()),
    (CheckId.SHARD_UNKNOWN_DATABASE, fleet(SHARDS={"g": {"databases": ["nope"]}}), set()),
    (CheckId.BAD_SHARD_SLOTS, fleet(SHARDS={"g": {"databases": ["default"], "slots": 0}}), set()),
    (CheckId.SHARD_DATABASE_SHARED, fleet(SHARDS={"g": {"databases": ["books"]}}), set()),
    (
        CheckId.MODEL_PLACED_TWICE,
        fleet(SHARDS={"g": {"databases": ["default"], "keys": {"library.Book": "id"}}}),
        set(),
    ),
    (
        CheckId.SHARD_UNKNOWN_MODEL_OR_KEY,
        fleet(SHARDS={"g": {"databases": ["default"], "keys": {"shop.Customer": "nope"}}}),
        set(),
    ),
    (
        CheckId.SHARDED_WITHOUT_MANAGER,
        fleet(SHARDS={"g": {"databases": ["default"], "reference": ["shop.TwinOrder"]}}),
        set(),
    ),
    (
        CheckId.SHARDED_AUTO_PRIMARY_KEY,
        fleet(SHARDS={"g": {"databases": ["default"], "keys": {"library.Author": "id"}}}),
        {CheckId.SHARDED_WITHOUT_MANAGER},  # Author has a plain manager.
    ),
    (
        CheckId.SHARD_RELATION,
        fleet(
            SHARDS={
                "g": {
                    "databases": ["default"],
                    "keys": {"shop.Customer": "id"},
                    "reference": ["shop.Order", "shop.Product"],
                }
            }
        ),
        set(),
    ),
    (
        CheckId.UNIQUE_WITHOUT_SHARD_KEY,
        fleet(
            SHARDS={
                "g": {
                    "databases": ["default"],
                    "keys": {"shop.Customer": "id", "shop.Order": "customer"},
                    "reference": ["shop.Product"],
                }
            }
        ),
        set(),
    ),
]
#: Checks that need a server or an engine set up for them: tested on their own.
DATABASE_CHECKS = {
    CheckId.SHARD_ENGINES_DIFFER,  # Two engines: the mixed configuration only.
    CheckId.NO_PREPARED_TRANSACTIONS,
    CheckId.REPLICA_ON_ANOTHER_SQLITE_FILE,
    CheckId.REPLICA_WITHOUT_CONNECT_TIMEOUT,
    CheckId.REPLICA_DOES_NOT_REPLICATE,
    CheckId.UNAPPLIED_MIGRATIONS,
    CheckId.MIGRATIONS_UNKNOWN,
    # ClickHouse databases: in a process of their own (tests/warehouse/check_settings.py).
    CheckId.CLICKHOUSE_IN_REPLICAS,
    CheckId.CLICKHOUSE_IN_SHARD_GROUP,
    CheckId.CLICKHOUSE_DEFAULT_DATABASE,
    CheckId.CHDB_WITHOUT_PATH,
    CheckId.CHDB_PATHS_DIFFER,
    # Synced models: in a process of their own (tests/synced_broken/check_settings.py).
    CheckId.SYNCED_SOURCE_NOT_FOUND,
    CheckId.SYNCED_FIELD_UNMAPPED,
    CheckId.SYNCED_FIELD_UNKNOWN,
    CheckId.SYNCED_COPY_NOT_ON_CLICKHOUSE,
    CheckId.SYNCED_SOURCE_NOT_CAPTURED,
}
#: Ids no longer reported (their problem got another id); kept, never reused.
RETIRED = {CheckId.UNHINTED_OPERATION}


@pytest.mark.parametrize(
    ("problem", "changed", "along"),
    PROBLEMS,
    ids=[f"{problem.value}-{i}" for i, (problem, _, _) in enumerate(PROBLEMS)],
)
def test_each_problem_is_reported_with_its_one_id(
    problem: CheckId, changed: dict[str, Any], along: set[CheckId]
) -> None:
    with override_settings(**changed):
        found = {message.id for message in run_checks(tags=["dbfleet"])}
    assert found == {problem.value} | along


def test_every_problem_has_its_case() -> None:
    assert {problem for problem, _, _ in PROBLEMS} | DATABASE_CHECKS | RETIRED == set(CheckId)
    assert set(MIGRATION_CHECKS) == set(Kind)


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
    assert message.hint == "Use hints={'target_db': 'books'}."


def test_e034_unhinted_operation_in_a_split_app() -> None:
    message = only(migration_problems("unhinted"), "dbfleet.E034")
    assert message.level == ERROR
    assert message.msg.startswith(
        "tests/migration_cases/unhinted/0001_initial.py, operation 1 (RunPython noop) has no "
        "hints, and app 'library' is split across databases, so it would run on "
        "DEFAULT_DATABASE ('default') only and be recorded as applied on the others"
    )
    assert message.hint is not None
    assert message.hint.startswith("Use hints={'target_db': 'default'} (or the database it is")
    # What to do where it is already recorded, and what not to do.
    assert "Where this migration is already recorded, the hint alone changes nothing" in (
        message.hint
    )
    assert "`manage.py sqlmigrate library 0001_initial --database ALIAS`" in message.hint
    assert "Do not unrecord it with `migrate --fake`" in message.hint


def test_e034_silent_for_an_app_routed_as_a_whole() -> None:
    assert migration_problems("unhinted", app="loans") == []


def test_w003_is_retired_for_e034() -> None:
    """W003 was a warning for what E034 now refuses: it is never reported, and not reused."""
    assert "retired" in CheckId.UNHINTED_OPERATION.problem
    found = {message.id for message in migration_problems("unhinted")}
    assert found == {"dbfleet.E034"}


@override_settings(MIGRATION_MODULES={"library": "tests.migration_cases.pending"})
@pytest.mark.django_db(databases="__all__")
def test_w008_database_with_unapplied_migrations() -> None:
    # library.0003_note adds a column to Book, which lives in 'books'.
    messages = run_checks(databases=["default", "books", "loans", "replica"], tags=["database"])
    message = only(messages, "dbfleet.W008")
    assert message.msg == (
        "Database 'books' has 1 unapplied migration(s) (apps: library). `manage.py migrate` "
        "migrates only 'default' unless told --database."
    )
    assert message.hint == "Run `manage.py fleet migrate`: it migrates every database."
    stderr = StringIO()
    call_command("check", "--database", "books", stdout=StringIO(), stderr=stderr)
    assert "dbfleet.W008" in stderr.getvalue() and "manage.py fleet migrate" in stderr.getvalue()


@override_settings(MIGRATION_MODULES={"library": "tests.migration_cases.pending"})
@pytest.mark.django_db(databases="__all__")
def test_w008_silent_inside_migrate() -> None:
    """``migrate --database books`` checks the database it is about to migrate: no W008 there."""
    stdout, stderr = StringIO(), StringIO()
    call_command(
        "migrate", "--database", "books", "--plan", skip_checks=False, stdout=stdout, stderr=stderr
    )
    assert "library.0003_note" in stdout.getvalue()
    assert "dbfleet.W008" not in stderr.getvalue()


@pytest.mark.django_db(databases="__all__")
def test_w008_silent_when_every_database_is_migrated() -> None:
    found = run_checks(databases=list(DATABASES), tags=["database"])
    assert not {"dbfleet.W008", "dbfleet.W009"} & {message.id for message in found}
    # Without databases (plain `check` on Django 5.2), nothing is asked.
    assert run_checks(tags=["database"]) == []


@pytest.mark.django_db(databases="__all__")
def test_w009_database_that_cannot_be_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    # The probe connection is made from these settings: it cannot connect.
    settings_dict = connections["loans"].settings_dict
    if ENGINES["loans"] == "sqlite":
        monkeypatch.setitem(settings_dict, "NAME", "/nonexistent/directory/loans.sqlite3")
    else:
        monkeypatch.setitem(settings_dict, "HOST", "127.0.0.1")
        monkeypatch.setitem(settings_dict, "PORT", 1)  # Nothing listens: refused at once.
    message = only(run_checks(databases=["loans"], tags=["database"]), "dbfleet.W009")
    assert message.msg.startswith("Database 'loans' could not be asked which migrations it has")
    assert "OperationalError" in message.msg


def test_e016_route_to_an_auto_created_model() -> None:
    message = only(problems(ROUTES={**ROUTES, "loans.Loan_books_read": "default"}), "dbfleet.E016")
    assert "auto-created model 'loans.Loan_books_read'" in message.msg


def test_e019_unknown_write_guard_mode() -> None:
    message = only(problems(WRITE_GUARD="rasie"), "dbfleet.E019")
    assert message.hint is not None and "Did you mean 'raise'?" in message.hint


@pytest.mark.parametrize("grace", [-1, "60", float("inf"), True])
def test_e020_recovery_grace_not_a_number_of_seconds(grace: object) -> None:
    message = only(problems(RECOVERY_GRACE=grace), "dbfleet.E020")
    assert message.msg.startswith(f'DBFLEET["RECOVERY_GRACE"] is {grace!r}')


def test_e021_unknown_read_your_writes_mode() -> None:
    message = only(problems(READ_YOUR_WRITES="positoin"), "dbfleet.E021")
    assert message.hint is not None and "Did you mean 'position'?" in message.hint


BAD_SECONDS = [-1, "2", "soon", float("nan"), None]


def bad_seconds(key: str, seconds: object, check_id: str) -> None:
    """``key`` set to ``seconds`` is reported as ``check_id``, naming the key and the value."""
    message = only(problems(**{key: seconds}), check_id)
    assert message.msg.startswith(f'DBFLEET["{key}"] is {seconds!r}, which is not a number')
    assert message.hint is not None and "default" in message.hint
    if seconds == "2":
        assert message.hint.endswith("Write it without quotes: 2.")


@pytest.mark.parametrize("seconds", BAD_SECONDS)
def test_e022_max_lag_not_a_number_of_seconds(seconds: object) -> None:
    bad_seconds("MAX_LAG", seconds, "dbfleet.E022")


@pytest.mark.parametrize("cookie", ["", "two words", "semi;colon", 7])
def test_e023_read_your_writes_cookie_not_a_cookie_name(cookie: object) -> None:
    only(problems(READ_YOUR_WRITES_COOKIE=cookie), "dbfleet.E023")


def test_e024_default_database_is_a_replica() -> None:
    message = only(problems(DEFAULT_DATABASE="replica"), "dbfleet.E024")
    assert message.msg == (
        "DBFLEET[\"DEFAULT_DATABASE\"] is 'replica', which is a replica of 'default'."
    )
    assert message.hint is not None and "\"DEFAULT_DATABASE\": 'default'" in message.hint


def test_e025_chained_replica() -> None:
    message = only(
        problems(REPLICAS={"default": ["replica"], "replica": ["books"]}), "dbfleet.E025"
    )
    assert message.msg.startswith("'replica' is a replica of 'default' and also has replicas")
    assert message.hint is not None and message.hint.startswith("Move 'books' under 'default'")


@pytest.mark.parametrize(
    ("weight", "fix"),
    [
        (0, "Use a weight >= 1, such as {'alias': 'replica', 'weight': 1}. To send no reads to "
         "'replica', remove it from the list."),
        (-3, "Use a weight >= 1, such as {'alias': 'replica', 'weight': 1}. To send no reads to "
         "'replica', remove it from the list."),
        ("2", "Write the number without quotes: {'alias': 'replica', 'weight': 2}."),
        (True, "Use a number, not True: {'alias': 'replica', 'weight': 1}."),
        (1.5, "Weights are whole numbers: use {'alias': 'replica', 'weight': 2}, or scale "
         "every weight of the group to whole numbers."),
        (None, "Use a whole number, such as {'alias': 'replica', 'weight': 1}."),
        ("two", "Use a whole number, such as {'alias': 'replica', 'weight': 1}."),
    ],
)  # fmt: skip
def test_e026_replica_weight_not_a_whole_number(weight: object, fix: str) -> None:
    message = only(
        problems(REPLICAS={"default": [{"alias": "replica", "weight": weight}]}), "dbfleet.E026"
    )
    assert message.msg.startswith(
        f'DBFLEET["REPLICAS"][\'default\'][0]["weight"] is {weight!r}, which is not a '
        "whole number >= 1"
    )
    assert message.hint == fix


def test_e026_reported_for_the_entry_it_is_in() -> None:
    replicas = {"default": ["replica", {"alias": "replica2", "weight": 0}]}
    config = parse({"REPLICAS": replicas}, ("default", "replica", "replica2"))
    message = only(list(config.problems), "dbfleet.E026")
    assert "['default'][1][\"weight\"] is 0" in message.msg
    assert config.replicas == {"default": (Replica("replica"),)}  # The bad entry left out.


@pytest.mark.parametrize(
    ("entry", "fix"),
    [
        ({"alias": "replica", "wieght": 2}, "Use {'alias': 'replica', 'weight': 2}."),
        ({"alias": "replica", "lag": 1}, "Use {'alias': 'replica'}."),
    ],
)
def test_e027_replica_entry_with_an_unknown_key(entry: dict[str, Any], fix: str) -> None:
    message = only(problems(REPLICAS={"default": [entry]}), "dbfleet.E027")
    key = next(key for key in entry if key != "alias")
    assert message.msg.startswith(
        f"DBFLEET[\"REPLICAS\"]['default'][0] = {entry!r} has the key {key!r}"
    )
    assert ("Did you mean 'weight'?" in message.msg) == (key == "wieght")
    assert message.hint == fix


@pytest.mark.parametrize("seconds", BAD_SECONDS)
def test_e028_replica_cooldown_not_a_number_of_seconds(seconds: object) -> None:
    bad_seconds("REPLICA_COOLDOWN", seconds, "dbfleet.E028")


@pytest.mark.parametrize("seconds", BAD_SECONDS)
def test_e029_replica_check_interval_not_a_number_of_seconds(seconds: object) -> None:
    bad_seconds("REPLICA_CHECK_INTERVAL", seconds, "dbfleet.E029")


@pytest.mark.parametrize("seconds", BAD_SECONDS)
def test_e030_read_your_writes_window_not_a_number_of_seconds(seconds: object) -> None:
    bad_seconds("READ_YOUR_WRITES_WINDOW", seconds, "dbfleet.E030")


def test_e031_target_db_names_a_replica() -> None:
    message = only(migration_problems("replica_target"), "dbfleet.E031")
    assert "target_db names 'replica' (a replica of 'default')" in message.msg
    assert message.hint is not None
    assert message.hint.startswith("Use hints={'target_db': 'default'}")


def test_e032_model_hint_names_no_installed_model() -> None:
    message = only(migration_problems("unknown_model"), "dbfleet.E032")
    assert "model 'library.Bok' is not an installed model" in message.msg
    assert message.hint == "Use hints={'model': 'library.Book'}."


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


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
@pytest.mark.skipif(ENGINES["books"] != "sqlite", reason="'books' is on a server here")
def test_w005_sqlite_replica_is_another_file(tmp_path: Path) -> None:
    copy = {**DATABASES["books"], "NAME": str(tmp_path / "copy.sqlite3")}
    copy["TEST"] = {"MIRROR": "default"}
    with override_settings(DATABASES={**DATABASES, "copy": copy}):
        message = only(problems(REPLICAS={"default": ["copy"]}), "dbfleet.W005")
    assert "SQLite does not replicate" in message.msg
    assert message.hint is not None and "remove it from DBFLEET['REPLICAS']['default']" in (
        message.hint
    )


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
@pytest.mark.skipif(ENGINES["default"] == "sqlite", reason="SQLite has no connect timeout")
def test_w006_replica_without_connect_timeout() -> None:
    replica = {**DATABASES["replica"], "OPTIONS": {}}
    with override_settings(DATABASES={**DATABASES, "replica": replica}):
        message = only(problems(), "dbfleet.W006")
    assert message.hint == "Set DATABASES['replica'][\"OPTIONS\"]['connect_timeout'] = 5 (seconds)."


@pytest.mark.django_db(databases="__all__")
def test_w007_replica_that_replicates_from_nothing() -> None:
    with override_settings(DBFLEET={"ROUTES": ROUTES, "REPLICAS": {"default": ["books"]}}):
        messages = run_checks(databases=["default"], tags=["database"])
    message = only(messages, "dbfleet.W007")
    assert "replicates from nothing" in message.msg
    assert message.hint is not None and "Point DATABASES['books'] at a replica of" in message.hint


@pytest.mark.django_db(databases="__all__")
def test_w007_is_silent_for_a_test_mirror() -> None:
    found = run_checks(databases=list(DATABASES), tags=["database"])
    assert "dbfleet.W007" not in {message.id for message in found}


def test_e033_probe_timeout_not_seconds() -> None:
    message = only(problems(PROBE_TIMEOUT="5"), "dbfleet.E033")
    assert "PROBE_TIMEOUT" in message.msg and "'5'" in message.msg


def shards(**group: Any) -> list[CheckMessage]:
    """The checks with one shard group on ``default``, changed by ``group``."""
    return problems(SHARDS={"g": {"databases": ["default"], **group}})


@pytest.mark.parametrize(
    "dbfleet",
    [
        {"SHARDS": ["default"]},
        {"SHARDS": {"g": ["default"]}},
        {"SHARDS": {"g": {"databases": []}}},
        {"SHARDS": {"g": {"databases": ["default", "default"]}}},
        {"SHARDS": {"g": {"databases": ["default"], "slot": 4}}},
        {"SHARDS": {"g": {"databases": ["default"], "two_phase": "yes"}}},
        {"SHARDS": {"g": {"databases": ["default"], "keys": ["library.Author"]}}},
        {"SHARDS": {"g": {"databases": ["default"], "reference": "library.Author"}}},
        {"SHARDS": {"g": {"databases": ["default"], "keys": {"library": "id"}}}},
    ],
)
def test_e035_malformed_shards(dbfleet: dict[str, Any]) -> None:
    message = only(problems(**dbfleet), "dbfleet.E035")
    assert message.hint


def test_e035_names_the_key_meant() -> None:
    message = only(shards(slot=4), "dbfleet.E035")
    assert message.hint is not None and "Did you mean 'slots'?" in message.hint


def test_e036_shard_group_names_an_unknown_database_or_a_replica() -> None:
    message = only(shards(databases=["defualt"]), "dbfleet.E036")
    assert message.hint is not None and "Did you mean 'default'?" in message.hint
    message = only(shards(databases=["replica"]), "dbfleet.E036")
    assert "a replica of 'default'" in message.msg


@pytest.mark.parametrize("slots", [0, 1025, "64", 2.5])
def test_e037_bad_shard_slots(slots: object) -> None:
    message = only(shards(slots=slots), "dbfleet.E037")
    assert message.msg == f'DBFLEET["SHARDS"][\'g\']["slots"] is {slots!r}.'


def test_e038_shard_database_shared() -> None:
    message = only(shards(databases=["books"]), "dbfleet.E038")
    assert 'DBFLEET["ROUTES"] uses too' in message.msg
    group = {"databases": ["default"]}
    message = only(problems(SHARDS={"a": group, "b": group}), "dbfleet.E038")
    assert "shard group 'a' uses too" in message.msg


def test_e039_model_placed_twice() -> None:
    message = only(shards(keys={"library.Book": "id"}), "dbfleet.E039")
    assert 'DBFLEET["ROUTES"] places too' in message.msg
    message = only(
        shards(keys={"library.Author": "id"}, reference=["library.Author"]), "dbfleet.E039"
    )
    assert "this group places too" in message.msg


def test_a_valid_shard_group_is_silent() -> None:
    keys = {"shop.Customer": "id"}
    assert shards(keys=keys, reference=["shop.Product"], slots=8, two_phase=True) == []


def test_e040_shard_group_names_an_unknown_model_or_key() -> None:
    message = only(shards(keys={"shop.Customer": "idd"}), "dbfleet.E040")
    assert message.hint is not None and "Did you mean 'id'?" in message.hint
    message = only(shards(keys={"shop.Nope": "id"}), "dbfleet.E040")
    assert "'shop.nope', which is not installed" in message.msg
    message = only(shards(reference=["shop.Nope"]), "dbfleet.E040")


def test_e041_sharded_without_manager() -> None:
    message = only(shards(reference=["shop.TwinOrder"]), "dbfleet.E041")
    assert "'objects' is a Manager" in message.msg
    assert message.hint == "Give it objects = dbfleet.ShardedManager() (first, if it has several)."


@pytest.mark.skipif(
    ENGINES["default"] == ENGINES["books"], reason="needs two engines (the mixed configuration)"
)
def test_e042_shard_engines_differ() -> None:
    with override_settings(DBFLEET={"SHARDS": {"g": {"databases": ["default", "books"]}}}):
        message = only(run_checks(tags=["dbfleet"]), "dbfleet.E042")
    assert f"default ({connections['default'].vendor})" in message.msg


def test_e043_sharded_auto_primary_key() -> None:
    messages = shards(keys={"library.Author": "id"})
    message = next(m for m in messages if m.id == "dbfleet.E043")
    assert "library.Author is sharded" in message.msg
    assert message.hint is not None and "FleetIdField(primary_key=True)" in message.hint


def test_e044_shard_relation() -> None:
    reference = ["shop.Order", "shop.Product"]
    message = only(shards(keys={"shop.Customer": "id"}, reference=reference), "dbfleet.E044")
    assert "shop.Order.customer: a reference model" in message.msg
    messages = shards(keys={"shop.Order": "customer"})
    message = next(m for m in messages if m.id == "dbfleet.E044")
    assert "its target shop.Customer lives in 'default'" in message.msg
    assert message.hint is not None and "db_constraint=False" in message.hint


def test_w010_unique_without_shard_key() -> None:
    keys = {"shop.Customer": "id", "shop.Order": "customer"}
    message = only(shards(keys=keys, reference=["shop.Product"]), "dbfleet.W010")
    assert "shop.Order: id is unique on each shard only" in message.msg


@pytest.fixture(scope="module")
def clickhouse_problems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Check id -> the messages (with their hints) of ``check`` on every ClickHouse problem.

    In a process of its own: loading django-clickhouse-backend patches Django, which
    this process must not be. Nothing connects to the databases.
    """
    if importlib.util.find_spec("clickhouse_backend") is None:
        pytest.skip("needs django-clickhouse-backend: pip install 'django-dbfleet[clickhouse]'")
    result = subprocess.run(
        [sys.executable, "-m", "django", "check", "--tag", "dbfleet"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.warehouse.check_settings",
            "DBFLEET_CHECK_DIR": str(tmp_path_factory.mktemp("chdb")),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        },
    )
    assert result.returncode == 1, result.stdout + result.stderr
    found: dict[str, list[str]] = {}
    for entry in re.split(r"\n(?=\S+: \(dbfleet\.)", result.stderr.split("ERRORS:\n")[1]):
        check_id = re.search(r"\((dbfleet\.[EW]\d{3})\)", entry)
        assert check_id is not None, entry
        found.setdefault(check_id[1], []).append(entry.split("\n\nSystem check")[0])
    # Each problem with its one id, and nothing else (W005 and W006 keep to their engines).
    assert set(found) == {f"dbfleet.E04{n}" for n in range(5, 10)}, result.stderr
    return found


def test_e045_clickhouse_in_replicas(clickhouse_problems: dict[str, list[str]]) -> None:
    replica, primary = sorted(clickhouse_problems["dbfleet.E045"], key=lambda m: "gives" in m)
    assert "lists 'mirror', a ClickHouse database, as a replica of 'warehouse'" in replica
    assert "gives 'warehouse', a ClickHouse database, replicas" in primary
    assert "HINT: Remove 'mirror' from DBFLEET['REPLICAS']" in replica


def test_e046_clickhouse_in_a_shard_group(clickhouse_problems: dict[str, list[str]]) -> None:
    (message,) = clickhouse_problems["dbfleet.E046"]
    assert "DBFLEET['SHARDS']['logs'] names 'archive', a ClickHouse database" in message
    assert "HINT: Take 'archive' out of the shard group" in message


def test_e047_clickhouse_default_database(clickhouse_problems: dict[str, list[str]]) -> None:
    (message,) = clickhouse_problems["dbfleet.E047"]
    assert "DEFAULT_DATABASE is 'events', a ClickHouse database" in message
    assert "route the ClickHouse models to 'events' with DBFLEET['ROUTES']" in message


def test_e048_chdb_without_path(clickhouse_problems: dict[str, list[str]]) -> None:
    (message,) = clickhouse_problems["dbfleet.E048"]
    assert "DATABASES['nopath'] is on chDB and has no OPTIONS['path']" in message
    assert "HINT: Set DATABASES['nopath']['OPTIONS'] = {'path': " in message


def test_e049_chdb_paths_differ(clickhouse_problems: dict[str, list[str]]) -> None:
    (message,) = clickhouse_problems["dbfleet.E049"]
    assert "different data directories: 'warehouse' (" in message
    assert "chDB opens one data directory per process" in message
    assert "HINT: Give them all OPTIONS['path'] = " in message


@pytest.fixture(scope="module")
def synced_problems() -> dict[str, list[str]]:
    """Check id -> the messages (with their hints) of ``check`` on synced models' problems.

    In a process of its own, as ``clickhouse_problems``: synced models load
    django-clickhouse-backend. Nothing connects.
    """
    if importlib.util.find_spec("clickhouse_backend") is None:
        pytest.skip("needs django-clickhouse-backend: pip install 'django-dbfleet[clickhouse]'")
    result = subprocess.run(
        [sys.executable, "-m", "django", "check", "--tag", "dbfleet"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.synced_broken.check_settings",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        },
    )
    assert result.returncode == 1, result.stdout + result.stderr
    found: dict[str, list[str]] = {}
    for entry in re.split(r"\n(?=\S+: \(dbfleet\.)", result.stderr.split("ERRORS:\n")[1]):
        check_id = re.search(r"\((dbfleet\.[EW]\d{3})\)", entry)
        assert check_id is not None, entry
        found.setdefault(check_id[1], []).append(entry.split("\n\nSystem check")[0])
    # Each problem with its one id, and nothing else: DeclaredThing declares what it cannot map.
    assert set(found) == {f"dbfleet.E05{n}" for n in range(5)}, result.stderr
    assert "DeclaredThing" not in result.stderr
    return found


def test_e050_synced_source_not_found(synced_problems: dict[str, list[str]]) -> None:
    missing, none = sorted(synced_problems["dbfleet.E050"])
    assert (
        "synced_broken.NoSource is a synced model, and its source 'synced_broken.Thin' "
        "cannot be found: app 'synced_broken' has no model 'Thin'." in missing
    )
    assert "Did you mean 'synced_broken.Thing'?" in missing
    assert (
        "synced_broken.NoSync is a synced model without a source: it has no `class Sync` "
        "with a `source`." in none
    )
    assert 'HINT: Name an installed model: class Sync: source = "app_label.ModelName"' in none


def test_e051_synced_field_unmapped(synced_problems: dict[str, list[str]]) -> None:
    data, spent = sorted(synced_problems["dbfleet.E051"])
    assert (
        "synced_broken.AllOfThing copies synced_broken.Thing.data, a JSONField, which "
        "has no ClickHouse type dbfleet maps it to." in data
    )
    assert "HINT: Declare 'data' on AllOfThing with a field of clickhouse_backend.models" in data
    assert "Thing.spent, a DurationField" in spent


def test_e052_synced_field_unknown(synced_problems: dict[str, list[str]]) -> None:
    (message,) = synced_problems["dbfleet.E052"]
    assert (
        "synced_broken.SomeOfThing's `class Sync: fields` names 'nmae', which is not a "
        "field of synced_broken.Thing" in message
    )
    assert (
        "HINT: Name fields of synced_broken.Thing: id, name, data, spent. Did you mean "
        "'name'?" in message
    )


def test_e053_synced_copy_not_on_clickhouse(synced_problems: dict[str, list[str]]) -> None:
    (message,) = synced_problems["dbfleet.E053"]
    assert (
        "synced_broken.Misplaced is a ClickHouse copy of synced_broken.Thing, and it is "
        "routed to 'default' (django.db.backends.sqlite3)" in message
    )
    assert "DBFLEET['ROUTES']['synced_broken'] = 'warehouse'" in message


def test_e054_synced_source_not_captured(synced_problems: dict[str, list[str]]) -> None:
    (message,) = synced_problems["dbfleet.E054"]
    assert (
        "synced_broken.FromClickHouse copies synced_broken.Event, which lives in "
        "'warehouse' (dbfleet.backends.chdb)" in message
    )
    assert "HINT: Keep synced_broken.Event on a PostgreSQL, MariaDB/MySQL or SQLite" in message
