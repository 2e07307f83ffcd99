"""replicas: what the router adds to a read routed to a replica, with read-your-writes on."""

from __future__ import annotations

from django.test import override_settings

import dbfleet
from bench.bookshop.models import Book
from bench.routing import check_fleet, create_books, install
from bench.timing import US, Case, Ratio, console, measure, report
from dbfleet.testing import capture_queries

#: Book lives in "shop", read from its replica; "shop_plain" is the same data, outside dbfleet.
FLEET = {"ROUTES": {"bookshop.Book": "shop"}, "REPLICAS": {"shop": ["shop_replica"]}}


class AlwaysTheReplica:
    """The least a replica router can do: every read to the one replica, nothing else."""

    def db_for_read(self, model: type[Book], **hints: object) -> str:
        return "shop_replica"


def read_cases(keys: list[int]) -> list[Case]:
    objects = Book.objects
    plain = Book.objects.db_manager("shop_plain")

    def routed(n: int) -> None:
        # As in a request under ReadYourWritesMiddleware: a scope that has not written.
        with dbfleet.read_your_writes():
            for pk in keys[:n]:
                objects.get(pk=pk)

    def unscoped(n: int) -> None:
        for pk in keys[:n]:
            objects.get(pk=pk)

    def no_router(n: int) -> None:
        for pk in keys[:n]:
            plain.get(pk=pk)

    return [
        Case("dbfleet.Router: replica, read-your-writes", routed, install(dbfleet.Router())),
        Case("hand-written: always the replica", unscoped, install(AlwaysTheReplica())),
        Case("no router", no_router, install()),
        Case("no router, again", no_router, install()),
    ]


def queries_per_read(keys: list[int]) -> float:
    """Statements per routed read, and a check that they all went to the replica."""
    install(dbfleet.Router())()
    with dbfleet.read_your_writes(), capture_queries() as queries:
        for pk in keys:
            Book.objects.get(pk=pk)
    where = set(queries.aliases)
    if where != {"shop_replica"}:
        raise RuntimeError(f"The routed reads went to {sorted(where)}, not to 'shop_replica'.")
    return len(queries) / len(keys)


def run(quick: bool) -> bool:
    """Time the point read; the router must stay within 5% and issue one query per read."""
    console.rule("replicas")
    with override_settings(DBFLEET=FLEET, DATABASE_ROUTERS=[]):
        check_fleet()
        keys = create_books("shop")
        per_read = queries_per_read(keys)
        samples = measure(
            read_cases(keys), rounds=200 if quick else 2_000, batch=5 if quick else 10
        )
    met = report(
        "ORM point read: Book.objects.get(pk=...) routed to a replica (SQLite in memory)",
        samples,
        unit=US,
        ratios=[
            Ratio("dbfleet.Router: replica, read-your-writes", "no router", at_most=1.05),
            Ratio("dbfleet.Router: replica, read-your-writes", "hand-written: always the replica"),
            Ratio("no router, again", "no router"),
        ],
        note="The routed read runs in a read_your_writes() scope, as under the middleware, "
        "and pays for the replica's health (checked once a second), the write guard on the "
        "replica's connection and the scope's state. \"no router\" reads the same rows through "
        'Book.objects.db_manager("shop_plain"), an alias dbfleet does not know. The hand-written '
        "router sends every read to the replica, with no health or scope (the replica's "
        "connection still runs the write guard).",
    )
    ok = per_read == 1
    console.print(
        f"Queries per routed read: {per_read:g} (target: exactly 1) "
        + ("[green]met[/green]" if ok else "[red]missed[/red]")
    )
    console.print()
    return met and ok
