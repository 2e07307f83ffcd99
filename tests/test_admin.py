"""The stock Django admin on a routed model: ``Book`` lives in 'books', ``LogEntry`` in 'default'.

Through the admin's real views, with the write guard raising (tests/settings.py) and
every warning an error: each write commits the object and its log entry together.
The tests run without a wrapping test transaction, so what they see was committed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.admin import ModelAdmin
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.db import DatabaseError, connections, router
from django.test import Client, override_settings

from dbfleet import admin_transactions
from tests import admin_urls
from tests.library.models import Author, Book, Review
from tests.settings import DBFLEET

pytestmark = [
    pytest.mark.django_db(databases="__all__", transaction=True),
    pytest.mark.filterwarnings("error"),
]

BOOKS = "/admin/library/book/"
REFUSED = "refused by a test trigger"


@pytest.fixture
def browser() -> Client:
    """A client logged in as a superuser."""
    admin_urls.written_in.clear()
    user = User.objects.create_superuser("admin", "admin@example.com", "secret")
    client = Client()
    client.force_login(user)
    return client


def logged(action_flag: int) -> list[tuple[str, str | None]]:
    """(model name, object id) of each log entry with ``action_flag``, by name and id."""
    entries = LogEntry.objects.filter(action_flag=action_flag)
    return sorted(entries.values_list("content_type__model", "object_id"))


def no_transaction_left() -> bool:
    return not any(connection.in_atomic_block for connection in connections.all())


@pytest.mark.parametrize("mode", ["raise", "warn"])
def test_add(browser: Client, mode: str) -> None:
    with override_settings(DBFLEET={**DBFLEET, "WRITE_GUARD": mode}):
        response = browser.post(f"{BOOKS}add/", {"title": "Dune", "content": "Arrakis"})
    assert response.status_code == 302, response.content.decode()
    book = Book.objects.get()
    assert (book.title, book.content) == ("Dune", "Arrakis")
    assert logged(ADDITION) == [("book", str(book.pk))]
    # The object was saved inside one transaction on both databases.
    assert admin_urls.written_in == [{"default", "books"}]
    assert no_transaction_left()


def test_change(browser: Client) -> None:
    book = Book.objects.create(title="Dune", content="Arrakis")
    assert browser.get(f"{BOOKS}{book.pk}/change/").status_code == 200
    response = browser.post(
        f"{BOOKS}{book.pk}/change/", {"title": "Dune Messiah", "content": "Arrakis"}
    )
    assert response.status_code == 302, response.content.decode()
    assert Book.objects.get().title == "Dune Messiah"
    assert logged(CHANGE) == [("book", str(book.pk))]
    assert LogEntry.objects.get().get_change_message() == "Changed Title."
    assert admin_urls.written_in == [{"default", "books"}]


def test_delete_view(browser: Client) -> None:
    book = Book.objects.create(title="Dune", content="Arrakis")
    Review.objects.create(book=book, stars=5)
    assert browser.get(f"{BOOKS}{book.pk}/delete/").status_code == 200
    response = browser.post(f"{BOOKS}{book.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302, response.content.decode()
    assert not Book.objects.exists()
    assert not Review.objects.exists()  # the cascade ran on 'books' too
    assert logged(DELETION) == [("book", str(book.pk))]
    assert admin_urls.written_in == [{"default", "books"}]


def test_delete_selected(browser: Client) -> None:
    books = [Book.objects.create(title=title, content="-") for title in ("Dune", "Emma", "Ubik")]
    kept, *deleted = books
    selected = {"action": "delete_selected", "_selected_action": [book.pk for book in deleted]}
    # First the confirmation page, then the confirmed deletion.
    assert browser.post(BOOKS, selected).status_code == 200
    response = browser.post(BOOKS, {**selected, "post": "yes"})
    assert response.status_code == 302, response.content.decode()
    assert list(Book.objects.values_list("pk", flat=True)) == [kept.pk]
    assert logged(DELETION) == sorted(("book", str(book.pk)) for book in deleted)
    # Django runs actions in no transaction: the log entries would commit before the deletion.
    assert admin_urls.written_in == [{"default", "books"}]


def test_list_editable(browser: Client) -> None:
    dune = Book.objects.create(title="Dune", content="-")
    emma = Book.objects.create(title="Emma", content="-")
    assert browser.get(BOOKS).status_code == 200
    forms = {"form-0-id": dune.pk, "form-0-title": "Dune!", "form-1-id": emma.pk}
    response = browser.post(
        BOOKS,
        {
            **forms,
            "form-1-title": "Emma",
            "form-TOTAL_FORMS": 2,
            "form-INITIAL_FORMS": 2,
            "form-MIN_NUM_FORMS": 0,
            "form-MAX_NUM_FORMS": 1000,
            "_save": "Save",
        },
    )
    assert response.status_code == 302, response.content.decode()
    assert dict(Book.objects.values_list("pk", "title")) == {dune.pk: "Dune!", emma.pk: "Emma"}
    assert logged(CHANGE) == [("book", str(dune.pk))]
    assert admin_urls.written_in == [{"default", "books"}]


def test_a_model_in_the_log_entries_database_is_left_to_django(browser: Client) -> None:
    response = browser.post("/admin/library/author/add/", {"first_name": "Jane", "last_name": "A"})
    assert response.status_code == 302, response.content.decode()
    assert Author.objects.get().first_name == "Jane"
    assert logged(ADDITION) == [("author", str(Author.objects.get().pk))]
    # Django's own transaction, on 'default' alone: nothing opened on 'books'.
    assert admin_urls.written_in == [{"default"}]


def test_installed_once_on_the_stock_model_admin() -> None:
    views = [getattr(ModelAdmin, name) for name in admin_transactions.WRITING_VIEWS]
    # dbfleet's wrapper, under Django's names.
    assert all(view.__code__.co_filename == admin_transactions.__file__ for view in views)
    assert [view.__name__ for view in views] == list(admin_transactions.WRITING_VIEWS)
    admin_transactions.install()  # as a second ready() would
    assert [getattr(ModelAdmin, name) for name in admin_transactions.WRITING_VIEWS] == views


# --- atomicity: a write refused by the database itself -----------------------

#: A trigger that makes the database refuse one kind of write to one table, per vendor.
REFUSE = {
    "sqlite": [
        "CREATE TRIGGER dbfleet_refuse BEFORE {operation} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION dbfleet_refuse() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN RAISE EXCEPTION '{REFUSED}'; END $$",
        "CREATE TRIGGER dbfleet_refuse BEFORE {operation} ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION dbfleet_refuse()",
    ],
    "mysql": [
        "CREATE TRIGGER dbfleet_refuse BEFORE {operation} ON {table} "
        f"FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{REFUSED}'"
    ],
}
ALLOW = {
    "sqlite": ["DROP TRIGGER dbfleet_refuse"],
    "postgresql": ["DROP TRIGGER dbfleet_refuse ON {table}", "DROP FUNCTION dbfleet_refuse()"],
    "mysql": ["DROP TRIGGER dbfleet_refuse"],
}


def refusing(alias: str, table: str, operation: str) -> Iterator[None]:
    connection = connections[alias]

    def run(statements: list[str]) -> None:
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement.format(operation=operation, table=table))

    run(REFUSE[connection.vendor])
    try:
        yield
    finally:
        run(ALLOW[connection.vendor])


@pytest.fixture
def log_refused() -> Iterator[None]:
    """'default' refuses every new admin log entry."""
    yield from refusing(router.db_for_write(LogEntry), LogEntry._meta.db_table, "INSERT")


@pytest.fixture
def delete_refused() -> Iterator[None]:
    """'books' refuses to delete a book."""
    yield from refusing(router.db_for_write(Book), Book._meta.db_table, "DELETE")


@pytest.mark.usefixtures("log_refused")
def test_a_refused_log_entry_saves_no_object(browser: Client) -> None:
    with pytest.raises(DatabaseError, match=REFUSED):
        browser.post(f"{BOOKS}add/", {"title": "Dune", "content": "Arrakis"})
    assert not Book.objects.exists()
    assert not LogEntry.objects.exists()
    assert no_transaction_left()


@pytest.mark.usefixtures("delete_refused")
@pytest.mark.parametrize("view", ["delete_view", "delete_selected"])
def test_a_refused_deletion_keeps_no_log_entry(browser: Client, view: str) -> None:
    # The admin logs a deletion before it deletes: the log entry must go with it.
    book = Book.objects.create(title="Dune", content="Arrakis")
    with pytest.raises(DatabaseError, match=REFUSED):
        if view == "delete_view":
            browser.post(f"{BOOKS}{book.pk}/delete/", {"post": "yes"})
        else:
            browser.post(
                BOOKS, {"action": "delete_selected", "_selected_action": [book.pk], "post": "yes"}
            )
    assert Book.objects.get() == book
    assert not LogEntry.objects.exists()
    assert no_transaction_left()


def test_the_log_entries_point_at_the_routed_model(browser: Client) -> None:
    browser.post(f"{BOOKS}add/", {"title": "Dune", "content": "Arrakis"})
    entry = LogEntry.objects.get()
    assert entry.content_type == ContentType.objects.get_for_model(Book)
    assert entry.get_edited_object() == Book.objects.get()
