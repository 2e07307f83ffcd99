"""``manage.py fleet routes``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from dbfleet.management.fleet.output import jsonable, to_json
from dbfleet.migrating.runner import Result
from dbfleet.migrating.status import State
from dbfleet.reports import routes_report


def fleet(*args: str, **options: Any) -> tuple[str, str]:
    stdout, stderr = StringIO(), StringIO()
    call_command("fleet", *args, stdout=stdout, stderr=stderr, **options)
    return stdout.getvalue(), stderr.getvalue()


def row(output: str, model: str) -> list[str]:
    (line,) = [line for line in output.splitlines() if line.startswith(model + " ")]
    return line.split(maxsplit=4)


def test_text_table_shows_read_write_migrate_and_reason() -> None:
    output, errors = fleet("routes")
    assert errors == ""
    assert row(output, "library.Book") == [
        "library.Book",
        "books",
        "books",
        "books",
        'ROUTES["library.Book"]',
    ]
    assert row(output, "library.Author")[1:] == [
        "replica",
        "default",
        "default",
        "DEFAULT_DATABASE",
    ]
    assert row(output, "loans.Loan_books_read")[1:] == [
        "loans",
        "loans",
        "loans",
        'ROUTES["loans"]',
    ]
    assert "default (" in output and "replicas: replica" in output


def test_json_lists_databases_and_every_model() -> None:
    output, _ = fleet("routes", format="json")
    document = json.loads(output)
    assert {
        "alias": "default",
        "vendor": document["databases"][0]["vendor"],
        "replicas": ["replica"],
    } in document["databases"]
    models = {entry["model"]: entry for entry in document["models"]}
    assert models["library.Review"] == {
        "model": "library.Review",
        "table": "library_review",
        "read": "books",
        "read_replicas": [],
        "write": "books",
        "migrate": ["books"],
        "decided_by": 'ROUTES["library.Review"]',
        "crossings": [],
        "shard": None,
    }


@override_settings(DBFLEET={"ROUTES": {"library.Book": "books", "library.Review": "loans"}})
def test_relations_crossing_groups_are_marked_and_errors_announced() -> None:
    output, errors = fleet("routes")
    assert "library.Review" in output
    assert "book -> library.Book (books)" in row(output, "library.Review")[4]
    assert "configuration error(s)" in errors and "check --tag dbfleet" in errors
    document = json.loads(fleet("routes", format="json")[0])
    (review,) = [entry for entry in document["models"] if entry["model"] == "library.Review"]
    assert review["crossings"] == [{"field": "book", "to": "library.Book", "database": "books"}]


SHARDED = {
    "ROUTES": {"library.Book": "default"},
    "SHARDS": {
        "customers": {
            "databases": ["books", "loans"],
            "keys": {"shop.Customer": "id", "shop.Order": "customer"},
            "reference": ["shop.Product"],
            "slots": 64,
        }
    },
}


@override_settings(DBFLEET=SHARDED)
def test_sharded_and_reference_models_show_their_group_key_and_databases() -> None:
    output, _ = fleet("routes")
    (order,) = [line for line in output.splitlines() if line.startswith("shop.Order ")]
    assert order.split() == [
        "shop.Order",
        *("books,", "loans") * 3,  # Read, written and migrated where its key lives.
        'SHARDS["customers"],',
        "by",
        "key",
        "customer",
    ]
    (product,) = [line for line in output.splitlines() if line.startswith("shop.Product ")]
    assert product.split() == [
        "shop.Product",
        "books",  # The first copy.
        *("books,", "loans") * 2,  # Written to every copy.
        'SHARDS["customers"],',
        "reference",
        "(a",
        "copy",
        "on",
        "each)",
    ]
    assert row(output, "library.Book")[1:] == [
        "default",
        "default",
        "default",
        'ROUTES["library.Book"]',
    ]
    models = {
        entry["model"]: entry for entry in json.loads(fleet("routes", format="json")[0])["models"]
    }
    assert models["shop.Order"]["shard"] == {
        "group": "customers",
        "key": "customer",
        "databases": ["books", "loans"],
    }
    assert models["shop.Customer"]["shard"]["key"] == "id"
    assert models["shop.Product"]["shard"] == {
        "group": "customers",
        "key": None,
        "databases": ["books", "loans"],
    }
    assert models["library.Book"]["shard"] is None
    assert models["shop.Order"]["decided_by"] == 'SHARDS["customers"]'


@override_settings(DATABASE_ROUTERS=["tests.routers.EverythingToDefault", "dbfleet.Router"])
def test_another_router_deciding_is_shown() -> None:
    output, _ = fleet("routes")
    assert row(output, "library.Book")[1:4] == ["default", "default", "books"]
    assert row(output, "library.Book")[4].startswith("another router")


def test_verbosity_zero_prints_only_the_table() -> None:
    output, _ = fleet("routes", verbosity=0)
    assert output.splitlines()[0].split() == [
        "model",
        "read",
        "write",
        "migrate",
        "decided",
        "by",
        "crosses",
        "groups",
    ]


def test_subcommand_is_required() -> None:
    with pytest.raises(CommandError, match="routes"):
        fleet()


def test_verbosity_after_the_subcommand() -> None:
    assert fleet("routes", "-v", "0")[0] == fleet("routes", verbosity=0)[0]


def test_json_is_the_report_the_table_shows() -> None:
    report = routes_report()
    assert json.loads(fleet("routes", format="json")[0]) == jsonable(report)
    output, _ = fleet("routes")
    for route in report.models:
        assert row(output, route.model)[2] == route.write
    for database in report.databases:
        assert f"{database.alias} ({database.vendor})" in output


def test_one_json_renderer_for_every_report() -> None:
    @dataclass(frozen=True)
    class Step:
        state: State
        names: tuple[str, ...]

    @dataclass(frozen=True)
    class Report:
        steps: list[Step]
        results: dict[str, Result]
        lag: float | None = None

    report = Report([Step(State.NOT_ROUTED, ("a", "b"))], {"books": Result.UP_TO_DATE})
    assert json.loads(to_json(report)) == {
        "steps": [{"state": "not routed", "names": ["a", "b"]}],
        "results": {"books": "up to date"},
        "lag": None,
    }
