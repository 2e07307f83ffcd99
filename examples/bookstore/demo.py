#!/usr/bin/env python
"""The bookstore demo: one app on two databases, and proof of where each row lives.

Run it from the repository root with ``python3 dev.py demo`` (or
``.venv/bin/python examples/bookstore/demo.py``). ``Author`` lives in
``default`` and ``Book`` in ``books``; the code below never says ``using=``.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any, NoReturn

HERE = Path(__file__).resolve().parent
#: The sharded example: a project of its own, so it runs in a process of its own.
SHOP_DEMO = HERE.parent / "shop" / "demo.py"
SALES_DEMO = HERE.parent / "sales" / "demo.py"
#: The shop demo's steps: the sales demo's numbering follows them.
SHOP_STEPS = 6
TABLES = ("books_author", "books_book")
AUTHORS = [("Jane", "Austen"), ("Herman", "Melville"), ("Toni", "Morrison")]
BOOKS = [
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife.",
    "Call me Ishmael.",
    "124 was spiteful.",
]
LIST_TABLES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
    "postgresql": "SELECT table_name FROM information_schema.tables "
    "WHERE table_schema = current_schema()",
    "mysql": "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()",
}
# MySQL's ER_BAD_DB_ERROR: "Unknown database".
MYSQL_UNKNOWN_DATABASE = 1049


def setup() -> None:
    """Make the project importable and configure Django with its settings."""
    sys.path.insert(0, str(HERE))
    # Forced, not setdefault: an inherited DJANGO_SETTINGS_MODULE (a test run's,
    # say) would run the demo on some other project's databases.
    os.environ["DJANGO_SETTINGS_MODULE"] = "bookstore.settings"
    import django

    django.setup()


def stop(message: str) -> NoReturn:
    """End the demo with ``message`` on stderr, after everything printed so far."""
    sys.stdout.flush()
    sys.exit(message)


def heading(title: str) -> None:
    """Print the title of the next step."""
    print(f"\n== {title}")


def check() -> None:
    """Run Django's system checks; a configuration error stops the demo with its message."""
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    try:
        call_command("check")
    except SystemCheckError as error:
        stop(f"{error}\nFix the settings above and run the demo again.")


def describe(alias: str) -> str:
    """``"sqlite, var/default.sqlite3"`` or ``"postgresql, bookstore on 127.0.0.1:5432"``."""
    from django.db import connections

    connection = connections[alias]
    config = connection.settings_dict
    if connection.vendor == "sqlite":
        path = Path(config["NAME"]).resolve()
        shown = path.relative_to(HERE) if path.is_relative_to(HERE) else path
        return f"sqlite, {shown}"
    return f"{connection.vendor}, {config['NAME']} on {config['HOST']}:{config['PORT']}"


def creation_hint(alias: str) -> str:
    """The command that creates the server database behind ``alias``."""
    from django.db import connections

    connection = connections[alias]
    config = connection.settings_dict
    host, port, user, name = config["HOST"], config["PORT"], config["USER"], config["NAME"]
    if connection.vendor == "postgresql":
        return f"createdb -h {host} -p {port} -U {user} {name}"
    return f'mysql -h {host} -P {port} -u {user} -e "CREATE DATABASE {name} CHARACTER SET utf8mb4"'


def connect(alias: str) -> None:
    """Open ``alias`` once, so an unreachable or missing database stops the demo in one sentence."""
    from django.db import OperationalError, connections

    connection = connections[alias]
    try:
        connection.ensure_connection()
    except OperationalError as error:
        message = str(error).strip()
        # PostgreSQL says so in words (a missing role reads alike, hence the name); MySQL by code.
        missing = (
            f'database "{connection.settings_dict["NAME"]}" does not exist' in message
            or error.args[:1] == (MYSQL_UNKNOWN_DATABASE,)
        )
        if missing:
            stop(
                f"Database {alias!r} ({describe(alias)}) does not exist; "
                f"create it with: {creation_hint(alias)}"
            )
        stop(f"Cannot open database {alias!r} ({describe(alias)}): {message.splitlines()[0]}")


def migrate() -> None:
    """Migrate every database at once, each in its own worker running Django's migrate."""
    from django.core.management import call_command

    call_command("fleet", "migrate")


def routes() -> None:
    """Show where dbfleet sends every model."""
    from django.core.management import call_command

    call_command("fleet", "routes")


def bookstore_model(name: str) -> Any:
    """A model of the ``books`` app, from the registry of the running project."""
    from django.apps import apps

    # Looked up rather than imported, and typed Any: the models exist only once Django
    # is set up, and the type checker knows the test suite's apps, not this project's.
    return apps.get_model("books", name)


def store() -> None:
    """Save authors and books through the ORM with no ``using=``: the router picks."""
    Author, Book = bookstore_model("Author"), bookstore_model("Book")
    # Start from empty tables, so every run ends with the same rows.
    Author.objects.all().delete()
    Book.objects.all().delete()
    authors = [Author.objects.create(first_name=first, last_name=last) for first, last in AUTHORS]
    books = [Book.objects.create(content=content) for content in BOOKS]
    for saved, call in ((authors, "Author.objects.create()"), (books, "Book.objects.create()")):
        where = ", ".join(sorted({repr(obj._state.db) for obj in saved}))
        print(f"{len(saved)} x {call:<24} -> saved to {where}")


def open_directly(alias: str) -> Any:
    """A fresh DB-API connection to ``alias``, bypassing Django's connections and routers."""
    from django.db import connections

    connection = connections[alias]
    config = connection.settings_dict
    if connection.vendor == "sqlite":
        # Read-only: looking must never create a database file.
        return sqlite3.connect(f"{Path(config['NAME']).resolve().as_uri()}?mode=ro", uri=True)
    options = {
        "host": config["HOST"],
        "port": int(config["PORT"]) if config["PORT"] else None,
        "user": config["USER"],
        "password": config["PASSWORD"],
    }
    options = {key: value for key, value in options.items() if value}
    if connection.vendor == "postgresql":
        import psycopg

        return psycopg.connect(dbname=config["NAME"], **options)
    import MySQLdb  # type: ignore[import-untyped]

    return MySQLdb.connect(database=config["NAME"], charset="utf8mb4", **options)


def count_rows(alias: str) -> dict[str, int | None]:
    """Rows in each example table of ``alias`` (None: no such table), read past Django."""
    from django.db import connections

    with closing(open_directly(alias)) as connection:
        cursor = connection.cursor()
        cursor.execute(LIST_TABLES[connections[alias].vendor])
        present = {name for (name,) in cursor.fetchall()}
        counts: dict[str, int | None] = {}
        for table in TABLES:
            counts[table] = None
            if table in present:
                cursor.execute(f"SELECT COUNT(*) FROM {table}")
                counts[table] = cursor.fetchone()[0]
        return counts


def show_placement() -> None:
    """Print which database holds each table; stop if a table is anywhere but its route."""
    from django.db import connections

    from dbfleet import database_for
    from dbfleet.conf import get_topology

    # The replica stand-in is the default database itself: not counted twice.
    primaries = [alias for alias in connections if not get_topology().is_replica(alias)]
    found = {alias: count_rows(alias) for alias in primaries}
    for alias, counts in found.items():
        tables = "; ".join(
            f"{table}: {'no such table' if rows is None else f'{rows} rows'}"
            for table, rows in counts.items()
        )
        print(f"{alias} ({describe(alias)}): {tables}")
    homes = []
    for name in ("Author", "Book"):
        model = bookstore_model(name)
        table, routed = model._meta.db_table, database_for(model, write=True)
        holders = [alias for alias, counts in found.items() if counts[table] is not None]
        if holders != [routed]:
            stop(f"{table} is in {holders or 'no database'}, but {name} is routed to {routed!r}.")
        homes.append(f"{name} only in {routed!r}")
    print(f"As routed: {' and '.join(homes)}.")


class Undo(Exception):
    """Raised inside a block to roll it back."""


def transactions() -> None:
    """A block on both databases rolls back on both; Django's atomic() alone does not."""
    import warnings

    from django.db import transaction

    import dbfleet

    Author, Book = bookstore_model("Author"), bookstore_model("Book")
    before = Author.objects.count(), Book.objects.count()
    try:
        with dbfleet.atomic(Author, Book):
            Author.objects.create(first_name="Mary", last_name="Shelley")
            Book.objects.create(content="You will rejoice to hear that no disaster has ...")
            raise Undo
    except Undo:
        pass
    after = Author.objects.count(), Book.objects.count()
    print(f"dbfleet.atomic(Author, Book), then an exception: (authors, books) {before} -> {after}")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", dbfleet.WriteOutsideTransaction)
        try:
            with transaction.atomic():  # On 'default' only: the book is not in it.
                stray = Book.objects.create(content="Stays, although the block rolled back.")
                raise Undo
        except Undo:
            pass
    print(f"transaction.atomic(), then an exception: {Book.objects.count()} books, one too many.")
    print(f"The write guard said: {caught[0].message}")
    stray.delete()


def replicas() -> None:
    """Reads go to the replica, except where they must see a write."""
    import dbfleet
    from dbfleet.testing import capture_queries

    Author = bookstore_model("Author")

    def read_from() -> str:
        with capture_queries() as queries:
            Author.objects.count()
        return ", ".join(queries.aliases)

    with dbfleet.read_your_writes():  # One scope, as one request under the middleware.
        print(f"Author.objects.count()                   -> read from {read_from()!r}")
        with dbfleet.use_primary():
            print(f"  inside dbfleet.use_primary()           -> read from {read_from()!r}")
        Author.objects.filter(last_name="Austen").update(first_name="Jane")
        print(f"  after a write in the same scope        -> read from {read_from()!r}")
    with dbfleet.read_your_writes():
        print(f"  in a new scope that has not written    -> read from {read_from()!r}")


def sharding(first_step: int) -> None:
    """Run the shop example: customers and orders sharded over four SQLite files."""
    sys.stdout.flush()  # Its output follows this demo's, on the same stdout.
    # Django is set up once per process, with one project's settings: the shop has its own.
    shop = subprocess.run([sys.executable, str(SHOP_DEMO), "--first-step", str(first_step)])
    if shop.returncode:
        stop(f"The sharded part ({SHOP_DEMO.relative_to(HERE.parent)}) failed; see above.")


def analytics(first_step: int) -> None:
    """Run the sales example: orders in SQLite, their copy in embedded ClickHouse (chDB)."""
    if importlib.util.find_spec("chdb") is None:
        print(
            f"\n== {first_step}. Analytics (examples/sales): skipped, chDB is not installed "
            "(pip install 'django-dbfleet[chdb]'; python3 dev.py demo installs it)"
        )
        return
    sys.stdout.flush()
    # A process of its own too: chDB allows one data directory per process.
    sales = subprocess.run([sys.executable, str(SALES_DEMO), "--first-step", str(first_step)])
    if sales.returncode:
        stop(f"The analytics part ({SALES_DEMO.relative_to(HERE.parent)}) failed; see above.")


def main() -> None:
    """Run the demo's steps in order."""
    setup()
    from django.db import connections

    heading("1. System checks")
    check()
    heading("2. Migrate every database")
    for alias in connections:
        connect(alias)
    migrate()
    heading("3. Routing table: manage.py fleet routes")
    routes()
    heading("4. Save through the ORM, no using= anywhere")
    store()
    heading("5. Where the rows are, asking each database directly")
    show_placement()
    heading("6. A transaction over both databases")
    transactions()
    heading("7. Reads from the replica, and reading your own writes")
    replicas()
    sharding(first_step=8)
    analytics(first_step=8 + SHOP_STEPS)


if __name__ == "__main__":
    main()
