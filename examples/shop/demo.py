#!/usr/bin/env python
"""The shop demo: customers and their orders sharded over four SQLite files.

Run it from the repository root with ``python3 dev.py demo`` (the bookstore
demo runs it last) or ``.venv/bin/python examples/shop/demo.py``. Each step
prints the databases its statements ran on, as ``dbfleet.testing.capture_queries()``
recorded them; the last one opens every file directly to show where the rows are.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from dbfleet.topology import ShardGroup

HERE = Path(__file__).resolve().parent
TABLES = ("shop_customer", "shop_order")
CUSTOMERS = [
    (1, "Ada Lovelace", "gb"),
    (2, "Grace Hopper", "us"),
    (3, "Alan Turing", "gb"),
    (4, "Edsger Dijkstra", "nl"),
    (5, "Barbara Liskov", "us"),
    (6, "Donald Knuth", "us"),
    (7, "Margaret Hamilton", "us"),
    (8, "Niklaus Wirth", "ch"),
]
#: Three orders a customer: (customer id, total, day of December 2026). Their ids are
#: given when they are written (``FleetIdField``), and carry the customer's slot.
ORDERS = [
    (customer, Decimal(f"{(customer * 37 + n * 53) % 90 + 10}.{n * 25:02d}"), n)
    for customer, _, _ in CUSTOMERS
    for n in (1, 2, 3)
]


def setup() -> None:
    """Make the project importable and configure Django with its settings."""
    sys.path.insert(0, str(HERE))
    # Forced: the bookstore demo, which starts this one, has its own settings.
    os.environ["DJANGO_SETTINGS_MODULE"] = "shopsite.settings"
    import django

    django.setup()


def stop(message: str) -> NoReturn:
    """End the demo with ``message`` on stderr, after everything printed so far."""
    sys.stdout.flush()
    sys.exit(message)


class Steps:
    """Numbered headings, from ``first`` on (the bookstore demo continues its own numbering)."""

    def __init__(self, first: int) -> None:
        self.number = first

    def heading(self, title: str) -> None:
        print(f"\n== {self.number}. {title}")
        self.number += 1


def shop_model(name: str) -> Any:
    """A model of the ``shop`` app, from the registry of the running project."""
    from django.apps import apps

    # Looked up, and typed Any: the models exist only once Django is set up.
    return apps.get_model("shop", name)


@contextmanager
def touching(call: str) -> Iterator[None]:
    """Run the block, then print ``call`` and the databases its statements ran on."""
    from dbfleet.testing import capture_queries

    with capture_queries() as queries:
        yield
    aliases = sorted(set(queries.aliases))
    where = ", ".join(aliases) if aliases else "no database recorded"
    count = f"{len(queries)} statement{'' if len(queries) == 1 else 's'}"
    print(f"{call:<42} -> ran on {where} ({count})")


def group() -> ShardGroup:
    """The shard group ``customers``."""
    from dbfleet.conf import get_topology

    return get_topology().shard_groups["customers"]


def shards() -> tuple[str, ...]:
    """The databases of the shard group, in order."""
    return group().databases


def slot(customer: int) -> int:
    """The slot of a customer's key: where its rows go, and what its orders' ids carry."""
    from dbfleet.sharding.slots import hash_slot

    return hash_slot(customer, group().slots)


def migrate() -> None:
    """Migrate every database at once (``fleet migrate``); show which tables each file has."""
    from django.core.management import call_command
    from django.db import connections

    call_command("check")
    call_command("fleet", "migrate", verbosity=0)
    for alias in connections:
        present = set()
        if Path(connections[alias].settings_dict["NAME"]).exists():
            with closing(open_directly(alias)) as connection:
                present = table_names(connection)
        tables = [table for table in TABLES if table in present]
        print(f"{alias:<8} {describe(alias)}: {', '.join(tables) or 'no shop table'}")
        if alias in shards() and len(tables) != len(TABLES):
            stop(f"fleet migrate left {alias} without {', '.join(sorted(set(TABLES) - present))}.")


def store() -> None:
    """Write customers and orders with no ``using=``: each row goes to its key's shard."""
    import dbfleet

    Customer, Order = shop_model("Customer"), shop_model("Order")
    # Start from empty tables, so every run ends with the same rows.
    Order.objects.all().delete()
    Customer.objects.all().delete()
    for key, name, country in CUSTOMERS:
        with touching(f"Customer.objects.create(id={key})"):
            customer = Customer.objects.create(id=key, name=name, country=country)
        if customer._state.db != dbfleet.shard_for(Customer, key):
            stop(f"Customer {key} was saved to {customer._state.db}, not to its key's shard.")
    orders = [
        Order(customer_id=customer, total=total, placed=datetime.date(2026, 12, day))
        for customer, total, day in ORDERS
    ]
    # No ids given: bulk_create() allocates them, one round trip per shard.
    with touching(f"Order.objects.bulk_create({len(orders)} orders)"):
        Order.objects.bulk_create(orders)


def one_shard() -> None:
    """A read with the shard key runs on that key's shard only; so does one by an order's id."""
    import dbfleet
    from dbfleet.sharding import ids

    Customer, Order = shop_model("Customer"), shop_model("Order")
    key = 4
    home = dbfleet.shard_for(Customer, key)
    with touching(f"Order.objects.filter(customer={key})"):
        found = list(Order.objects.filter(customer=key).order_by("id"))
    print(f"  {len(found)} orders of {Customer.objects.get(pk=key)}, whose rows are on {home}:")
    print(f"  ids {', '.join(str(order.id) for order in found)}")
    # The slot is in the id: the customer's, which its shard holds.
    carried = {ids.parse(order.id).slot for order in found}
    if carried != {slot(key)} or group().database_for_slot(slot(key)) != home:
        stop(f"The ids of customer {key}'s orders carry slots {sorted(carried)}, not {slot(key)}.")
    print(f"  each carries slot {slot(key)} (ids.parse(id).slot): customer {key}'s, held by {home}")
    wanted = found[-1].id
    with touching(f"Order.objects.get(pk={wanted})"):
        order = Order.objects.get(pk=wanted)
    if order._state.db != home:
        stop(f"Order.objects.get(pk={wanted}) read {order._state.db}, not {home}.")


def fan_out() -> None:
    """A read without the key runs on every shard; the answers are merged, then sliced."""
    Order = shop_model("Order")
    with touching('Order.objects.order_by("-total")[:5]'):
        top = list(Order.objects.order_by("-total")[:5])
    for order in top:
        # order.customer is read from the order's shard, where its customer is.
        customer = order.customer.name
        placed = f"{order.placed:%b} {order.placed.day}"
        print(f"  {order.total:>6}  {customer:<18} {placed:<6}  from {order._state.db}")


def aggregate() -> None:
    """Count, Sum and Avg over every shard: Avg from the shards' sums and counts."""
    from django.db.models import Avg, Count, Sum

    Order = shop_model("Order")
    with touching("Order.objects.aggregate(Count, Sum, Avg)"):
        found = Order.objects.aggregate(
            orders=Count("id"), revenue=Sum("total"), average=Avg("total")
        )
    orders, revenue, average = found["orders"], found["revenue"], found["average"]
    print(f"  {orders} orders, {revenue:.2f} in all, {average:.2f} on average")
    expected = sum(total for _, total, _ in ORDERS)
    if found["orders"] != len(ORDERS) or found["revenue"] != expected:
        stop(f"The aggregate says {found}; the demo wrote {len(ORDERS)} orders worth {expected}.")


def open_directly(alias: str) -> sqlite3.Connection:
    """The SQLite file behind ``alias``, opened read-only past Django."""
    from django.db import connections

    path = Path(connections[alias].settings_dict["NAME"]).resolve()
    return sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)


def table_names(connection: sqlite3.Connection) -> set[str]:
    rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def describe(alias: str) -> str:
    """``"var/shard0.sqlite3"``, relative to the example when it is inside it."""
    from django.db import connections

    path = Path(connections[alias].settings_dict["NAME"]).resolve()
    return f"sqlite, {path.relative_to(HERE) if path.is_relative_to(HERE) else path}"


def show_placement() -> None:
    """Count each file's rows, past Django; stop if a row is anywhere but its key's shard."""
    import dbfleet
    from dbfleet.sharding import ids

    Customer = shop_model("Customer")
    customers_seen, orders_seen = 0, 0
    for alias in shards():
        with closing(open_directly(alias)) as connection:
            customers = sorted(key for (key,) in connection.execute("SELECT id FROM shop_customer"))
            orders = connection.execute("SELECT id, customer_id FROM shop_order").fetchall()
        word = "customer" if len(customers) == 1 else "customers"
        print(
            f"{alias} ({describe(alias)}): {word} {', '.join(map(str, customers))}; "
            f"{len(orders)} orders"
        )
        owners = {customer for _, customer in orders}
        misplaced = sorted(
            key for key in {*customers, *owners} if dbfleet.shard_for(Customer, key) != alias
        )
        if misplaced:
            stop(f"{alias} holds rows of customers {misplaced}, whose key is elsewhere.")
        # Each order's id carries the slot of its customer, so it names this shard too.
        strays = [number for number, customer in orders if ids.parse(number).slot != slot(customer)]
        if strays:
            stop(f"{alias} holds orders {strays}, whose ids do not carry their customer's slot.")
        customers_seen, orders_seen = customers_seen + len(customers), orders_seen + len(orders)
    if (customers_seen, orders_seen) != (len(CUSTOMERS), len(ORDERS)):
        stop(
            f"The shards hold {customers_seen} customers and {orders_seen} orders, not "
            f"{len(CUSTOMERS)} and {len(ORDERS)}."
        )
    print("As sharded: each customer and its orders in one file, the one shard_for() names.")


def main(argv: list[str] | None = None) -> None:
    """Run the demo's steps in order."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first-step", type=int, default=1, help="number of the first heading")
    steps = Steps(parser.parse_args(argv).first_step)
    setup()

    steps.heading("Sharding (examples/shop): migrate default and the four shard files")
    migrate()
    steps.heading("Writes go to the shard of their key (Customer by id, Order by customer)")
    store()
    steps.heading("A read with the key, or with an order's id, runs on one shard")
    one_shard()
    steps.heading("A read without it runs on every shard: ORDER BY and LIMIT, merged")
    fan_out()
    steps.heading("An aggregate over every shard")
    aggregate()
    steps.heading("Where the rows are, asking each file directly")
    show_placement()


if __name__ == "__main__":
    main()
