"""dbfleet.Router through Django's own router, and on real databases."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.db import connections, router
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations import RunPython
from django.test import override_settings

from dbfleet import Router, database_for, use_primary
from tests.library.models import Author, Book, BookProxy, Review
from tests.loans.models import Loan, Member

ALIASES = ("default", "books", "loans", "replica")


def migrates_on(app_label: str, model_name: str | None = None, **hints: object) -> list[str]:
    return [
        alias
        for alias in ALIASES
        if router.allow_migrate(alias, app_label, model_name=model_name, **hints)
    ]


def test_reads_and_writes_follow_routes() -> None:
    assert router.db_for_read(Book) == router.db_for_write(Book) == "books"
    assert router.db_for_read(Loan) == router.db_for_write(Member) == "loans"
    assert router.db_for_read(BookProxy) == "books"


@override_settings(DBFLEET={"ROUTES": {"library.Book": "books"}})
def test_unrouted_models_are_left_to_django() -> None:
    assert Router().db_for_read(Author) is None
    assert Router().db_for_write(Author) is None
    assert router.db_for_read(Author) == "default"


@pytest.mark.django_db(transaction=True, databases=["default", "replica"])
def test_unrouted_models_are_read_from_the_replicas_of_default() -> None:
    assert Router().db_for_read(Author) == "replica"
    assert Router().db_for_write(Author) is None
    with use_primary():
        assert Router().db_for_read(Author) == "default"


@override_settings(DBFLEET={"DEFAULT_DATABASE": "loans", "ROUTES": {"library.Book": "books"}})
def test_unrouted_models_go_to_another_default_database() -> None:
    assert router.db_for_write(Author) == "loans"
    assert migrates_on("library", "author") == ["loans"]


@override_settings(
    DATABASE_ROUTERS=["dbfleet.Router", "tests.routers.EverythingToDefault"],
    DBFLEET={"ROUTES": {"library.Book": "books"}},
)
def test_later_routers_decide_unrouted_models() -> None:
    assert Router().db_for_read(Author) is None
    assert router.db_for_read(Author) == "default"
    assert router.db_for_read(Book) == "books"


@pytest.mark.django_db(transaction=True, databases=["default", "replica"])
def test_database_for_model_and_instance() -> None:
    assert database_for(Book) == "books"
    assert database_for(Book, write=True) == "books"
    assert database_for(Author()) == "replica"
    assert database_for(Author(), write=True) == "default"
    assert database_for(Member(), write=True) == "loans"


def test_migrate_models_only_on_their_database() -> None:
    assert migrates_on("library", "book") == ["books"]
    assert migrates_on("library", "author") == ["default"]
    assert migrates_on("auth", "user") == ["default"]
    assert migrates_on("loans", "loan") == ["loans"]


def test_migrate_nothing_on_replicas() -> None:
    assert not router.allow_migrate("replica", "auth", model_name="user")
    assert not router.allow_migrate("replica", "library", target_db="replica")


def test_migrate_hint_target_db() -> None:
    assert migrates_on("library", target_db="books") == ["books"]
    assert migrates_on("auth", target_db="loans") == ["loans"]
    assert migrates_on("library", target_db=["books", "loans"]) == ["books", "loans"]


def test_migrate_hint_model_as_class_or_label() -> None:
    assert migrates_on("library", model=Book) == ["books"]
    assert migrates_on("library", model="library.Book") == ["books"]
    assert migrates_on("library", model="library.Author") == ["default"]
    assert migrates_on("library", model="loans.Loan") == ["loans"]


def test_unhinted_operations_follow_whole_app_else_default_database() -> None:
    assert migrates_on("loans") == ["loans"]
    assert migrates_on("library") == ["default"]  # Split between default and books.


def test_historical_models_route_like_installed_ones() -> None:
    loader = MigrationLoader(None, ignore_no_migrations=True)
    state = loader.project_state(("library", "0001_initial"))
    historical = state.apps.get_model("library", "Book")
    assert historical is not Book
    assert router.db_for_write(historical) == "books"
    assert router.allow_migrate_model("books", historical)
    assert not router.allow_migrate_model("default", historical)


def test_run_python_hints_reach_the_router() -> None:
    operation = RunPython(RunPython.noop, hints={"target_db": "books"})
    assert migrates_on("library", **operation.hints) == ["books"]


def test_relations_allowed_only_inside_a_group() -> None:
    book, author = Book(), Author()
    on_replica = Author()
    on_replica._state.db = "replica"
    assert router.allow_relation(Review(), book)
    assert router.allow_relation(Author(), on_replica)
    assert not router.allow_relation(author, book)
    assert router.allow_relation(Member(), Loan())


def test_answers_for_every_installed_model_are_precomputed() -> None:
    from dbfleet.conf import get_topology

    topology = get_topology()
    for model in apps.get_models(include_auto_created=True):
        assert model in topology.models


@override_settings(DBFLEET={"ROUTES": "books", "REPLICAS": 5, "DEFAULT_DATABASE": 3})
@pytest.mark.django_db(databases=["default", "books"])
def test_bad_configuration_does_not_break_queries() -> None:
    Author.objects.create(first_name="Ada", last_name="Lovelace")
    assert Author.objects.count() == 1
    assert router.db_for_write(Book) == "default"


def tables(alias: str) -> set[str]:
    with connections[alias].cursor() as cursor:
        return set(connections[alias].introspection.table_names(cursor))


def count(alias: str, table: str) -> int:
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {connection.ops.quote_name(table)}")
        (rows,) = cursor.fetchone()
    return int(rows)


@pytest.mark.django_db(databases="__all__")
def test_migrate_created_each_table_only_where_routed() -> None:
    assert {"library_book", "library_review"} <= tables("books")
    assert {"library_author", "auth_user", "django_content_type"} <= tables("default")
    assert {"loans_loan", "loans_member", "loans_loan_books_read"} <= tables("loans")
    assert not {"library_book", "loans_loan"} & tables("default")
    assert not {"library_author", "auth_user", "django_content_type"} & tables("books")
    assert not {"library_book", "library_author", "auth_user"} & tables("loans")


@pytest.mark.django_db(databases="__all__")
def test_rows_land_in_the_routed_database() -> None:
    Author.objects.create(first_name="Jane", last_name="Austen")
    book = Book.objects.create(content="It is a truth universally acknowledged")
    book.reviews.create(stars=5)
    Loan.objects.create(member=Member.objects.create(name="Lizzy"), book_id=book.pk)

    assert count("default", "library_author") == 1
    assert count("books", "library_book") == 1
    assert count("books", "library_review") == 1
    assert count("loans", "loans_loan") == 1
    assert book._state.db == "books"
    assert Review.objects.get().book == book


def test_related_reads_stay_on_the_instance_database_inside_its_group() -> None:
    author = Author()
    author._state.db = "replica"
    assert router.db_for_read(Author, instance=author) == "replica"
    book = Book()
    book._state.db = "replica"  # Another group: the route wins.
    assert router.db_for_read(Review, instance=book) == "books"
    loan = Loan()
    loan._state.db = "loans"
    assert router.db_for_read(Member, instance=loan) == "loans"


@override_settings(DBFLEET={"ROUTES": {"library": "books"}, "REPLICAS": {"books": ["replica"]}})
def test_related_reads_follow_an_instance_read_from_a_replica() -> None:
    book = Book()
    book._state.db = "replica"
    assert router.db_for_read(Review, instance=book) == "replica"
    book._state.db = "books"
    assert router.db_for_read(Review, instance=book) == "books"
    with use_primary():
        assert router.db_for_read(Review) == "books"


def test_relation_across_groups_is_refused() -> None:
    member = Member(name="Lizzy")
    member._state.db = "default"  # As if read with Member.objects.using("default").
    with pytest.raises(ValueError, match="router prevents this relation"):
        Loan(book_id=1).member = member


@override_settings(DBFLEET={"ROUTES": {"library": "books"}, "REPLICAS": {"books": ["replica"]}})
def test_writes_go_to_the_primary_even_for_an_instance_read_from_a_replica() -> None:
    book = Book()
    book._state.db = "replica"
    assert router.db_for_write(Book, instance=book) == "books"
    elsewhere = Book()
    elsewhere._state.db = "loans"  # Another group: the route wins; save(using=...) to override.
    assert router.db_for_write(Book, instance=elsewhere) == "books"
