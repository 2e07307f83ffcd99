"""sharding: one-shard reads through ShardedManager, and fan-outs over 8 PostgreSQL databases.

A shard group of eight PostgreSQL databases (``shard0`` ... ``shard7``) holds
``Customer`` (sharded by ``id``) and ``Order`` (sharded by ``customer``, with a
``FleetIdField`` primary key that carries the customer's slot); a ninth database,
``shard_all``, holds the same rows, all of them, outside any group. One-shard
reads through the sharded manager (``get(pk=...)`` by an order's id or a
customer's, ``filter(customer=...)``) are compared with the same query with
``.using(<its shard>)`` on a plain manager; fan-outs (ORDER BY + LIMIT 20,
and a ``values().annotate(Sum)`` group-by) with the loop people write by hand
(each shard in turn, then the merge) and with the query on ``shard_all``: once
with connections kept (``CONN_MAX_AGE = 600``), once with Django's default (0).
"""

from __future__ import annotations

import heapq
import itertools
import operator
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.db import connections, models
from django.db.models import Sum
from django.test import override_settings

import dbfleet
from bench.postgres import connect, require_server
from bench.routing import check_fleet
from bench.settings import SHARD_ALIASES, SHARD_ALIASES_AGE_0, SHARD_ALL
from bench.shardshop.models import Customer, Order
from bench.timing import US, Case, Ratio, Unit, console, measure, report
from dbfleet.sharding import ids
from dbfleet.sharding.slots import hash_slot
from dbfleet.testing import capture_queries

SLOTS = 1024


def fleet(databases: Sequence[str]) -> dict[str, Any]:
    """The shard group over ``databases``."""
    keys = {"shardshop.Customer": "id", "shardshop.Order": "customer"}
    return {"SHARDS": {"customers": {"databases": list(databases), "keys": keys, "slots": SLOTS}}}


#: One alias for each database the benchmark makes (the ``_age0`` aliases name the shards too).
ALIASES = (*SHARD_ALIASES, SHARD_ALL)
#: Orders per customer: the full run has 80,000 orders, --quick 8,000.
ORDERS_PER_CUSTOMER = 16
CUSTOMERS, QUICK_CUSTOMERS = 5_000, 500
STATUSES = ("new", "paid", "shipped", "delivered", "returned")
START = datetime(2026, 1, 1, tzinfo=UTC)
LIMIT = 20
MS = Unit("ms", 1_000_000)

ORDER_GET = "Order.objects.get(pk=...)"
ORDER_GET_USING = "Order.plain.using(shard).get(pk=...)"
GET = "Customer.objects.get(pk=...)"
GET_USING = "Customer.plain.using(shard).get(pk=...)"
GET_AGAIN = f"{GET_USING}, again"
FILTER = "Order.objects.filter(customer=...)"
FILTER_USING = "Order.plain.using(shard).filter(customer=...)"
LATEST = f'Order.objects.order_by("-created")[:{LIMIT}]'
LATEST_LOOP = "hand-written: each shard in turn, then heapq.merge"
LATEST_ONE = f"the same query on {SHARD_ALL} (one database)"
GROUPS = 'Order.objects.values("status").annotate(total=Sum("total"))'
GROUPS_LOOP = "hand-written: each shard in turn, sums in a dict"
GROUPS_ONE = f"the same group-by on {SHARD_ALL} (one database)"


@dataclass(frozen=True)
class Shop:
    """The rows as generated: what every case must answer is computed from them."""

    #: (id, name, country)
    customers: list[tuple[int, str, str]]
    #: (id, customer_id, status, total, created)
    orders: list[tuple[int, int, str, Decimal, datetime]]

    def orders_of(self, customer: int) -> set[int]:
        return {row[0] for row in self.orders if row[1] == customer}

    def an_order(self) -> dict[int, int]:
        """``{customer: the id of one of its orders}``, for each customer with orders."""
        return {customer: number for number, customer, *_ in reversed(self.orders)}

    def latest(self) -> list[int]:
        return [row[0] for row in heapq.nlargest(LIMIT, self.orders, key=operator.itemgetter(4))]

    def sums(self) -> dict[str, Decimal]:
        found: dict[str, Decimal] = {}
        for _, _, status, total, _ in self.orders:
            found[status] = found.get(status, Decimal(0)) + total
        return found


def order_id(created: datetime, customer: int) -> int:
    """The FleetIdField id of an order: its millisecond (``created``), its customer's slot.

    What the field would have given it, the sequence aside: the rows are written
    with COPY, which sends the values as they are. ``created`` is unique, so the id is.
    """
    counter = (created - ids.EPOCH) // timedelta(milliseconds=1) * ids.IDS_PER_MILLISECOND
    return ids.compose(counter, hash_slot(customer, SLOTS))


def make_shop(customers: int) -> Shop:
    """Customers with 16 orders each on average; no two orders have the same ``created``."""
    rng = random.Random(0)
    countries = ("fr", "de", "us", "jp")
    people = [(key, f"Customer {key}", rng.choice(countries)) for key in range(1, customers + 1)]
    count = customers * ORDERS_PER_CUSTOMER
    seconds = rng.sample(range(count * 60), count)
    orders = []
    for number in range(count):
        customer = rng.randint(1, customers)
        status = rng.choices(STATUSES, weights=(1, 4, 3, 10, 1))[0]
        total = Decimal(rng.randint(100, 50_000)) / 100
        created = START + timedelta(seconds=seconds[number])
        orders.append((order_id(created, customer), customer, status, total, created))
    return Shop(people, orders)


# The databases ---------------------------------------------------------------------------


def database_name(alias: str) -> str:
    return str(connections[alias].settings_dict["NAME"])


def drop_database(alias: str) -> None:
    with connect() as server:
        server.execute(f"DROP DATABASE IF EXISTS {database_name(alias)} WITH (FORCE)")


def drop_databases() -> None:
    """Every database of the benchmark, at once: one DROP DATABASE can take a second."""
    for alias in (*ALIASES, *SHARD_ALIASES_AGE_0):
        connections[alias].close()
    with ThreadPoolExecutor(len(ALIASES)) as pool:
        list(pool.map(drop_database, ALIASES))


def copy_rows(alias: str, model: type[models.Model], rows: Iterable[Sequence[Any]]) -> None:
    """``rows`` into ``model``'s table on ``alias`` with COPY (the benchmark is PostgreSQL's)."""
    columns = ", ".join(str(field.column) for field in model._meta.concrete_fields)
    sql = f"COPY {model._meta.db_table} ({columns}) FROM STDIN"
    # CursorWrapper.cursor: psycopg's own cursor, which has copy().
    with connections[alias].cursor() as cursor, cursor.cursor.copy(sql) as copy:
        for row in rows:
            copy.write_row(row)


def create_databases(shop: Shop, home: dict[int, str]) -> None:
    """Every database new, with its tables, its rows (COPY) and fresh planner statistics."""
    drop_databases()
    with connect() as server:
        for alias in ALIASES:
            server.execute(f"CREATE DATABASE {database_name(alias)}")
    for alias in ALIASES:
        with connections[alias].schema_editor() as editor:
            editor.create_model(Customer)
            editor.create_model(Order)
        everything = alias == SHARD_ALL
        copy_rows(alias, Customer, (c for c in shop.customers if everything or home[c[0]] == alias))
        copy_rows(alias, Order, (o for o in shop.orders if everything or home[o[1]] == alias))
        with connections[alias].cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")


# The cases -------------------------------------------------------------------------------


def latest_by_hand(shards: Sequence[str]) -> list[Order]:
    """What people write without a sharded queryset: each shard in turn, then the merge."""
    per_shard = [list(Order.plain.using(alias).order_by("-created")[:LIMIT]) for alias in shards]
    merged = heapq.merge(*per_shard, key=operator.attrgetter("created"), reverse=True)
    return list(itertools.islice(merged, LIMIT))


def sums_by_hand(shards: Sequence[str]) -> dict[str, Decimal]:
    sums: dict[str, Decimal] = {}
    for alias in shards:
        for row in Order.plain.using(alias).values("status").annotate(total=Sum("total")):
            sums[row["status"]] = sums.get(row["status"], Decimal(0)) + row["total"]
    return sums


def as_sums(rows: Iterable[dict[str, Any]]) -> dict[str, Decimal]:
    return {row["status"]: row["total"] for row in rows}


def repeat(answer: Callable[[], object]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            answer()

    return run


def per_key(read: Callable[[int], object], keys: Sequence[int]) -> Callable[[int], None]:
    """``read(key)`` for the next ``n`` keys; every case walks the same keys in the same order."""
    cycle: Iterator[int] = itertools.cycle(keys)

    def run(n: int) -> None:
        for key in itertools.islice(cycle, n):
            read(key)

    return run


def one_shard_reads(
    home: dict[int, str], order_of: dict[int, int]
) -> dict[str, Callable[[int], object]]:
    """Each one-shard read, by the case's name: ``read(customer key)``, returning the answer.

    The order reads by id read ``order_of[key]``, one order of that customer.
    """
    customers, orders = Customer.objects, Order.objects
    plain_customers, plain_orders = Customer.plain, Order.plain
    return {
        ORDER_GET: lambda key: orders.get(pk=order_of[key]),
        ORDER_GET_USING: lambda key: plain_orders.using(home[key]).get(pk=order_of[key]),
        FILTER: lambda key: list(orders.filter(customer=key)),
        FILTER_USING: lambda key: list(plain_orders.using(home[key]).filter(customer=key)),
        GET: lambda key: customers.get(pk=key),
        GET_USING: lambda key: plain_customers.using(home[key]).get(pk=key),
        GET_AGAIN: lambda key: plain_customers.using(home[key]).get(pk=key),
    }


def check_one_shard(
    shop: Shop,
    home: dict[int, str],
    order_of: dict[int, int],
    reads: dict[str, Callable[[int], object]],
) -> None:
    """Each read must answer right with one statement on the key's shard, and nothing else."""
    keys = sorted(order_of)
    for key in (keys[0], keys[1], keys[-1]):
        for name, read in reads.items():
            answer: Any = None
            # A read sent to the wrong shard finds nothing there: what counts is where it went.
            with capture_queries() as queries, suppress(ObjectDoesNotExist):
                answer = read(key)
            if queries.aliases != [home[key]]:
                raise RuntimeError(
                    f"{name} for key {key} ran on {queries.aliases}, not {home[key]!r}."
                )
            if answer is None:
                raise RuntimeError(f"{name} for key {key} found no row on {home[key]!r}.")
            if isinstance(answer, list):
                found, expected = {order.pk for order in answer}, shop.orders_of(key)
            elif isinstance(answer, Order):
                found, expected = {answer.pk}, {order_of[key]}
            else:
                found, expected = {answer.pk}, {key}
            if found != expected:
                raise RuntimeError(
                    f"{name} for key {key} answered {sorted(found)}, not {sorted(expected)}."
                )


def bench_one_shard(shop: Shop, home: dict[int, str], quick: bool) -> bool:
    """Time the one-shard reads against ``.using(<shard>)``: at most 5% slower."""
    order_of = shop.an_order()
    reads = one_shard_reads(home, order_of)
    check_one_shard(shop, home, order_of, reads)
    keys = list(order_of)  # The customers with orders: all of them, but for chance.
    random.Random(1).shuffle(keys)
    cases = [Case(name, per_key(read, keys)) for name, read in reads.items()]
    samples = measure(cases, rounds=40 if quick else 1_000, batch=5 if quick else 10)
    return report(
        "One-shard reads on PostgreSQL (8 shards): the sharded manager against using(shard)",
        samples,
        unit=US,
        ratios=[
            Ratio(ORDER_GET, ORDER_GET_USING, at_most=1.05),
            Ratio(FILTER, FILTER_USING, at_most=1.05),
            Ratio(GET, GET_USING, at_most=1.05),
            Ratio(GET_AGAIN, GET_USING),
        ],
        note="The sharded reads find the shard in the query: an order's id carries its slot "
        "(FleetIdField), a customer's key is hashed to one (BLAKE2b); the baselines are given "
        "the shard (a dict lookup) and read through Django's own manager. "
        f"filter(customer=...) returns that customer's orders ({ORDERS_PER_CUSTOMER} on "
        f'average). "{GET_AGAIN}" repeats a baseline: its ratio shows the noise floor.',
    )


def latest() -> list[Order]:
    return list(Order.objects.order_by("-created")[:LIMIT])


def groups() -> list[dict[str, Any]]:
    return list(Order.objects.values("status").annotate(total=Sum("total")))


def latest_on_one() -> list[Order]:
    return list(Order.plain.using(SHARD_ALL).order_by("-created")[:LIMIT])


def groups_on_one() -> list[dict[str, Any]]:
    return list(Order.plain.using(SHARD_ALL).values("status").annotate(total=Sum("total")))


def check_fan_out(shop: Shop, shards: Sequence[str]) -> str | None:
    """Every fan-out case must answer what the rows say; the reason the group-by cannot run."""
    expected = shop.latest()
    answers = {
        LATEST: [order.pk for order in latest()],
        LATEST_LOOP: [order.pk for order in latest_by_hand(shards)],
        LATEST_ONE: [order.pk for order in latest_on_one()],
    }
    for name, found in answers.items():
        if found != expected:
            raise RuntimeError(f"{name} answered {found}, not {expected}.")
    sums = shop.sums()
    totals = {GROUPS_LOOP: sums_by_hand(shards), GROUPS_ONE: as_sums(groups_on_one())}
    skipped = None
    try:
        totals[GROUPS] = as_sums(groups())
    except dbfleet.CrossShardError as error:
        skipped = str(error)
    for name, total in totals.items():
        if total != sums:
            raise RuntimeError(f"{name} answered {total}, not {sums}.")
    return skipped


def bench_fan_out(shop: Shop, quick: bool, *, kept: bool) -> bool:
    """Time the fan-outs against the loop over the shards (at most half of it) and one database.

    ``kept``: the shards' connections have ``CONN_MAX_AGE = 600``, else 0, Django's
    default (a fan-out thread would connect anew for its part of each query; on
    PostgreSQL these two queries run on the calling thread's connections instead).
    """
    shards = SHARD_ALIASES if kept else SHARD_ALIASES_AGE_0
    with override_settings(DBFLEET=fleet(shards)):
        check_fleet()
        skipped = check_fan_out(shop, shards)
        cases = [
            Case(LATEST, repeat(latest)),
            Case(LATEST_LOOP, repeat(lambda: latest_by_hand(shards))),
            Case(LATEST_ONE, repeat(latest_on_one)),
            Case(GROUPS_LOOP, repeat(lambda: sums_by_hand(shards))),
            Case(GROUPS_ONE, repeat(groups_on_one)),
        ]
        if skipped is None:
            cases.insert(3, Case(GROUPS, repeat(groups)))
        rounds = (10 if quick else 200) if kept else (5 if quick else 60)
        samples = measure(cases, rounds=rounds, batch=1 if quick else 2)
    # The targets are for connections kept, as in production: with CONN_MAX_AGE = 0 a
    # request's loop would connect to each shard once too, and here it never does.
    half = 0.5 if kept else None
    ratios = [Ratio(LATEST, LATEST_LOOP, at_most=half), Ratio(LATEST, LATEST_ONE)]
    if skipped is None:
        ratios += [Ratio(GROUPS, GROUPS_LOOP, at_most=half), Ratio(GROUPS, GROUPS_ONE)]
    connected = (
        "connections kept (CONN_MAX_AGE = 600)" if kept else "CONN_MAX_AGE = 0 (Django's default)"
    )
    met = report(
        f"Fan-out over {len(shards)} PostgreSQL databases ({len(shop.orders):,} orders), "
        f"{connected}; against the loop over the shards and one database holding every row",
        samples,
        unit=MS,
        ratios=ratios,
        note="The sharded queryset compiles the query once and sends it to every shard from "
        "this thread, on its connections, before it reads any answer (libpq's asynchronous "
        "API), then merges the answers; the hand-written loops run the same queries one shard "
        "after the other on the same connections, then merge. Each shard returns at most "
        f"{LIMIT} rows, read from its index on created; the group-by reads every row"
        + (
            "."
            if kept
            else ". No target: the loop's connections stay open here, as they would not "
            "under a request."
        ),
    )
    if skipped is not None:
        console.print(
            f"[yellow]Not timed: {GROUPS} raised CrossShardError ({skipped}); its target "
            "counts as missed.[/yellow]\n"
        )
        return False
    return met


def run(quick: bool) -> bool:
    """Fill the databases, then time the one-shard reads and the fan-outs."""
    console.rule("sharding")
    require_server()
    shop = make_shop(QUICK_CUSTOMERS if quick else CUSTOMERS)
    with override_settings(DATABASE_ROUTERS=["dbfleet.Router"], DBFLEET=fleet(SHARD_ALIASES)):
        check_fleet()
        home = {key: dbfleet.shard_for(Customer, key) for key, _, _ in shop.customers}
        try:
            create_databases(shop, home)
            one_met = bench_one_shard(shop, home, quick)
            kept_met = bench_fan_out(shop, quick, kept=True)
            bench_fan_out(shop, quick, kept=False)
        finally:
            drop_databases()
    return one_met and kept_met
