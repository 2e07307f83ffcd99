"""routing: what dbfleet.Router adds to an ORM read, and what one routing decision costs."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack, suppress
from typing import Any, Protocol

from django.db import DatabaseError, connections, models, router
from django.test import override_settings

import dbfleet
from bench.bookshop.models import Book
from bench.manymodels.models import GENERATED
from bench.settings import FLEET_PRIMARIES
from bench.timing import NS, US, Case, Ratio, console, measure, report
from dbfleet.conf import fleet_settings

BOOK_COUNT = 1_000
BOOKS_FLEET = {"ROUTES": {"bookshop.Book": "books"}}
#: 200 model routes over 10 primaries, each primary with one replica.
LARGE_ROUTES = {
    model._meta.label: FLEET_PRIMARIES[index % len(FLEET_PRIMARIES)]
    for index, model in enumerate(GENERATED)
}
LARGE_FLEET = {
    "ROUTES": LARGE_ROUTES,
    "REPLICAS": {primary: [f"{primary}_replica"] for primary in FLEET_PRIMARIES},
}
LARGE_PRIMARIES = {"ROUTES": LARGE_ROUTES}
#: Where each generated model is read once its primary has a replica.
LARGE_READS = {label: f"{primary}_replica" for label, primary in LARGE_ROUTES.items()}


class ReadRouter(Protocol):
    def db_for_read(self, model: type[models.Model], **hints: Any) -> str | None: ...


class HandWrittenRouter:
    """The router people write for one model in a second database."""

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str | None:
        if model._meta.app_label == "bookshop" and model._meta.model_name == "book":
            return "books"
        return None

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str | None:
        if model._meta.app_label == "bookshop" and model._meta.model_name == "book":
            return "books"
        return None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool:
        if app_label == "bookshop" and model_name == "book":
            return db == "books"
        return db == "default"


class ModelDictRouter:
    """A hand-written table router keyed by model class: the fastest lookup Python has."""

    def __init__(self, routes: Mapping[type[models.Model], str]) -> None:
        self.routes = routes

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str | None:
        return self.routes.get(model)


class LabelDictRouter:
    """A hand-written table router keyed by ``"app_label.model_name"``, as settings spell it."""

    def __init__(self, routes: Mapping[str, str]) -> None:
        self.routes = routes

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str | None:
        return self.routes.get(model._meta.label_lower)


def no_opinion(model: type[models.Model], **hints: Any) -> str | None:
    """The cheapest possible router method: the floor under every direct call."""
    return None


def install(*routers: object) -> Callable[[], None]:
    """A ``prepare`` step that makes ``routers`` Django's routers.

    ``override_settings(DATABASE_ROUTERS=...)`` ends in this same assignment
    (Django's ``clear_routers_cache`` receiver); doing it directly keeps the
    switch between batches cheap and leaves nothing else changed.
    """

    def prepare() -> None:
        router.routers = list(routers)

    return prepare


def create_books(alias: str = "books") -> list[int]:
    """Create and fill the ``Book`` table on ``alias``; return the keys to read, shuffled."""
    with connections[alias].schema_editor() as editor:
        editor.create_model(Book)
    Book.objects.using(alias).bulk_create(
        Book(title=f"Book {n}", author=f"Author {n % 97}", isbn=f"{n:013d}", year=1900 + n % 125)
        for n in range(BOOK_COUNT)
    )
    keys = list(Book.objects.using(alias).values_list("pk", flat=True))
    random.Random(0).shuffle(keys)
    return keys


def read_cases(keys: list[int]) -> list[Case]:
    """The point read, routed by dbfleet, by hand, and bound to ``books`` with no router."""
    objects = Book.objects
    # The fair baseline: the same manager call with the database already chosen,
    # so the only difference from the routed cases is the router call.
    bound = Book.objects.db_manager("books")

    def routed(n: int) -> None:
        for pk in keys[:n]:
            objects.get(pk=pk)

    def no_router(n: int) -> None:
        for pk in keys[:n]:
            bound.get(pk=pk)

    def using(n: int) -> None:
        for pk in keys[:n]:
            Book.objects.using("books").get(pk=pk)

    return [
        Case("dbfleet.Router", routed, install(dbfleet.Router())),
        Case("hand-written", routed, install(HandWrittenRouter())),
        Case("no router", no_router, install()),
        Case('.using("books")', using, install()),
        # The same as "no router": how far apart two identical cases come out.
        Case("no router, again", no_router, install()),
    ]


def call_routers(reads: Mapping[str, str]) -> dict[str, ReadRouter]:
    """dbfleet's router and two hand-written tables of ``reads`` (label -> where it is read)."""
    return {
        "dbfleet.Router": dbfleet.Router(),
        "dict by model": ModelDictRouter({model: reads[model._meta.label] for model in GENERATED}),
        "dict by label": LabelDictRouter(
            {model._meta.label_lower: reads[model._meta.label] for model in GENERATED}
        ),
    }


def calls(db_for_read: Callable[[type[models.Model]], object]) -> Callable[[int], None]:
    """A case body: ``db_for_read`` once per generated model, ``n`` calls in all."""

    def run(n: int) -> None:
        for _ in range(n // len(GENERATED)):
            for model in GENERATED:
                db_for_read(model)

    return run


def call_cases(routers: Mapping[str, ReadRouter]) -> list[Case]:
    """Each router through Django's ``router.db_for_read``, then called directly."""
    through_django = calls(router.db_for_read)
    return [
        *(
            Case(f"via Django: {name}", through_django, install(found))
            for name, found in routers.items()
        ),
        *(Case(f"direct: {name}", calls(found.db_for_read)) for name, found in routers.items()),
        Case("direct: an empty function", calls(no_opinion)),
    ]


def check_fleet() -> None:
    """Refuse to time a ``DBFLEET`` that dbfleet found problems in (it would drop routes)."""
    problems = fleet_settings().problems
    if problems:
        raise RuntimeError(f"The benchmark's DBFLEET is invalid: {problems}")


def databases_read(case: Case) -> set[str]:
    """The databases one batch of ``case`` sends queries to."""
    seen: set[str] = set()

    def record(execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        seen.add(context["connection"].alias)
        return execute(sql, params, many, context)

    case.prepare()
    with ExitStack() as stack:
        for connection in connections.all():
            stack.enter_context(connection.execute_wrapper(record))
        # A read sent to the wrong database fails (no table there): what counts is where it went.
        with suppress(DatabaseError):
            case.run(1)
    return seen


def check_reads(cases: Sequence[Case]) -> None:
    """Every case must read from ``books``: one that read elsewhere would time something else."""
    for case in cases:
        seen = databases_read(case)
        if seen != {"books"}:
            raise RuntimeError(f"{case.name!r} read from {sorted(seen)}, not from 'books'.")


def check_calls(routers: Mapping[str, ReadRouter], reads: Mapping[str, str]) -> None:
    """Every router, installed in Django, must send every generated model where ``reads`` says."""
    for name, found in routers.items():
        install(found)()
        for model in GENERATED:
            answer = router.db_for_read(model)
            if answer != reads[model._meta.label]:
                raise RuntimeError(f"{name} routes {model._meta.label} to {answer!r}.")


def bench_reads(quick: bool) -> bool:
    """Time ``Book.objects.get(pk=...)`` with each router; dbfleet must stay within 3%."""
    keys = create_books()
    # Leaving override_settings(DATABASE_ROUTERS=...) resets Django's routers,
    # undoing whatever the cases installed.
    with override_settings(DBFLEET=BOOKS_FLEET, DATABASE_ROUTERS=[]):
        check_fleet()
        cases = read_cases(keys)
        check_reads(cases)
        samples = measure(cases, rounds=200 if quick else 2_000, batch=5 if quick else 10)
    return report(
        "ORM point read: Book.objects.get(pk=...) on SQLite in memory, Book in 'books'",
        samples,
        unit=US,
        ratios=[
            Ratio("dbfleet.Router", "no router", at_most=1.03),
            Ratio("dbfleet.Router", "hand-written"),
            Ratio('.using("books")', "no router"),
            Ratio("no router, again", "no router"),
        ],
        note='"no router" reads through Book.objects.db_manager("books"): the same call '
        'with the database chosen. .using("books") also clones a queryset per read. '
        '"no router, again" repeats "no router": its ratio shows the noise floor.',
    )


def bench_calls(quick: bool, replicas: bool) -> bool:
    """Time one ``db_for_read`` with 200 routes.

    Without replicas it is the lookup, which through Django must stay under
    1 µs. With a replica in each group it also picks the replica and reads the
    scope (pins, transactions, health): reported, compared with tables of the
    answers, with no limit of its own (the ORM read's ratio in ``replicas`` is
    the target for that).
    """
    fleet, reads = (
        (LARGE_FLEET, LARGE_READS) if replicas else ({"ROUTES": LARGE_ROUTES}, LARGE_ROUTES)
    )
    with override_settings(DBFLEET=fleet, DATABASE_ROUTERS=[]):
        check_fleet()
        routers = call_routers(reads)
        check_calls(routers, reads)
        cases = call_cases(routers)
        samples = measure(cases, rounds=300 if quick else 3_000, batch=2 * len(GENERATED))
    groups = (
        f"{len(FLEET_PRIMARIES)} primaries with a replica each, reads to the replicas"
        if replicas
        else f"{len(FLEET_PRIMARIES)} primaries"
    )
    return report(
        f"Router cost: db_for_read with {len(GENERATED)} model routes, {groups}",
        samples,
        unit=NS,
        ratios=[
            Ratio("via Django: dbfleet.Router", "via Django: dict by model"),
            Ratio("via Django: dbfleet.Router", "via Django: dict by label"),
            Ratio("direct: dbfleet.Router", "direct: dict by model"),
            Ratio("direct: dbfleet.Router", "direct: dict by label"),
        ],
        limits={} if replicas else {"via Django: dbfleet.Router": 1_000},
    )


def run(quick: bool) -> bool:
    """Run both parts; return whether every target was met."""
    console.rule("routing")
    reads_met = bench_reads(quick)
    calls_met = bench_calls(quick, replicas=False)
    bench_calls(quick, replicas=True)
    return reads_met and calls_met
