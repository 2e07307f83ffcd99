"""The topology as plain data."""

from __future__ import annotations

from django.apps import apps

from dbfleet.topology import Group, Replica, Topology
from tests.library.models import Author, Book, BookProxy, Review
from tests.loans.models import Loan


def build(**overrides: object) -> Topology:
    options: dict[str, object] = {
        "databases": ("default", "books", "loans", "replica"),
        "default_database": "default",
        "routes": {"library.Book": "books", "library.review": "books", "loans": "loans"},
        "replicas": {"default": [Replica("replica")]},
        "models": apps.get_models(include_auto_created=True),
    }
    options.update(overrides)
    return Topology.build(**options)  # type: ignore[arg-type]


def test_groups_and_membership() -> None:
    topology = build()
    assert topology.groups["default"] == Group("default", (Replica("replica"),))
    assert topology.groups["default"].members == ("default", "replica")
    assert topology.groups["books"] == Group("books")
    assert "replica" not in topology.groups
    assert topology.is_replica("replica") and not topology.is_replica("default")
    assert topology.same_group("default", "replica")
    assert not topology.same_group("default", "books")


def test_model_route_beats_app_route() -> None:
    topology = build(routes={"library": "loans", "library.Book": "books"})
    assert topology.database_for_model(Book) == "books"
    assert topology.database_for_model(Author) == "loans"


def test_model_route_keys_ignore_model_name_case() -> None:
    topology = build()
    assert topology.database_for_model(Review) == "books"
    assert topology.database_for_label("library.REVIEW") == "books"


def test_proxy_and_auto_created_models_follow_their_owner() -> None:
    topology = build()
    assert topology.database_for_model(BookProxy) == "books"
    through = Loan.books_read.through
    assert topology.database_for_model(through) == "loans"


def test_unrouted_models_have_no_opinion_while_default_is_default() -> None:
    topology = build()
    assert topology.models[Author] is None
    assert topology.database_for_model(Author) == "default"


def test_unrouted_models_go_to_another_default_database() -> None:
    topology = build(default_database="loans", routes={"library.Book": "books"})
    assert topology.models[Author] == "loans"
    assert topology.labels["unknown.model"] == "loans"


def test_models_unknown_at_build_are_looked_up_by_label() -> None:
    topology = build(models=())
    assert topology.database_for_model(Book) == "books"
    assert Book not in topology.models
    assert "library.book" in topology.labels


def test_unhinted_operations_follow_an_app_routed_as_a_whole() -> None:
    topology = build()
    assert topology.database_for_app_operations("loans") == "loans"
    assert topology.database_for_app_operations("auth") == "default"
    assert "loans" not in topology.split_apps


def test_unhinted_operations_of_a_split_app_run_on_default_database() -> None:
    topology = build(default_database="loans")
    assert "library" in topology.split_apps
    assert topology.database_for_app_operations("library") == "loans"


def test_app_routes_for_apps_without_models() -> None:
    topology = build(routes={"datafix": "books"}, models=())
    assert topology.database_for_app_operations("datafix") == "books"
    assert build(models=()).database_for_app_operations("datafix") == "default"
