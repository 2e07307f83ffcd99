#!/usr/bin/env python
"""The sales demo: orders in SQLite, their fact table in embedded ClickHouse, kept in sync.

Run it from the repository root with ``python3 dev.py demo`` (the bookstore demo
runs it last) or ``.venv/bin/python examples/sales/demo.py``. It needs chDB
(``pip install 'django-dbfleet[chdb]'``; the dev venv has it) and no server.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

HERE = Path(__file__).resolve().parent
ORDERS = 100_000
CUSTOMERS = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Niklaus")
STATUSES = ("new", "paid", "shipped", "returned")
CENT = Decimal("0.01")


def setup() -> None:
    """Make the project importable and configure Django with its settings."""
    sys.path.insert(0, str(HERE))
    # Forced: the bookstore demo, which starts this one, has its own settings.
    os.environ["DJANGO_SETTINGS_MODULE"] = "salessite.settings"
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


def model(name: str) -> Any:
    from django.apps import apps

    return apps.get_model("sales", name)


def fleet(*args: str) -> None:
    """``manage.py fleet <args>``, its output indented."""
    from django.core.management import call_command

    out = io.StringIO()
    call_command("fleet", *args, stdout=out, stderr=out)
    for line in out.getvalue().splitlines():
        print(f"  {line}")


def migrate() -> None:
    from django.core.management import call_command

    call_command("check")
    fleet("migrate")


def write_orders() -> None:
    """Every order anew: deleted, then written in bulk (the triggers log each change)."""
    Order = model("Order")
    Order.objects.all().delete()
    start = datetime.date(2026, 1, 1)
    Order.objects.bulk_create(
        Order(
            customer=CUSTOMERS[(n * 7) % len(CUSTOMERS)],
            status=STATUSES[(n * 3) % len(STATUSES)],
            total=Decimal((n * 7919) % 50_000) / 100,
            day=start + datetime.timedelta(days=n % 90),
        )
        for n in range(ORDERS)
    )
    print(f"  {Order.objects.count():,} orders in {Order.objects.db} (SQLite)")


def change_orders() -> None:
    """An update, a delete and raw SQL: every kind of change is captured on the source."""
    from django.db import connection

    Order = model("Order")
    updated = Order.objects.filter(status="new", day__lt=datetime.date(2026, 1, 8)).update(
        status="paid"
    )
    deleted, _ = Order.objects.filter(status="returned", total__lt=10).delete()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE sales_order SET total = total + 1 WHERE customer = 'Ada'")
        raw = cursor.rowcount
    print(f"  update(): {updated} rows; delete(): {deleted}; raw SQL UPDATE: {raw}")


def report(orders: Any) -> dict[str, Any]:
    """Revenue by status, and the top three customers, through the ORM."""
    from django.db.models import Count, Sum

    by_status = list(
        orders.values("status")
        .annotate(revenue=Sum("total"), orders=Count("id"))
        .order_by("status")
    )
    top = list(
        orders.values("customer")
        .annotate(revenue=Sum("total"))
        .order_by("-revenue", "customer")[:3]
    )
    # SQLite adds decimals up as floating point (5707125.11999999): to the cent, as stored.
    for row in (*by_status, *top):
        row["revenue"] = row["revenue"].quantize(CENT)
    return {"by_status": by_status, "top": top}


def timed(answer: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], float]:
    """The answer, and the best of three times (milliseconds)."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        found = answer()
        times.append((time.perf_counter() - started) * 1000)
    return found, min(times)


def compare() -> None:
    Order, OrderFact = model("Order"), model("OrderFact")
    source, source_ms = timed(lambda: report(Order.objects))
    copy, copy_ms = timed(lambda: report(OrderFact.objects.live()))
    for row in source["by_status"]:
        print(f"  {row['status']:<9} {row['orders']:>6,} orders  {row['revenue']:>12,.2f}")
    top = ", ".join(f"{row['customer']} ({row['revenue']:,.2f})" for row in source["top"])
    print(f"  top customers: {top}")
    print(f"  SQLite (sales.Order):                      {source_ms:7.1f} ms")
    print(f"  ClickHouse (sales.OrderFact.objects.live()): {copy_ms:7.1f} ms")
    if copy != source:
        stop(f"The copy's report differs from the source's:\n{copy}\n{source}")
    print("  The same answer from both.")


def main(argv: list[str] | None = None) -> None:
    """Run the demo's steps in order."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first-step", type=int, default=1, help="number of the first heading")
    steps = Steps(parser.parse_args(argv).first_step)
    setup()

    steps.heading("Analytics (examples/sales): migrate the SQLite file and ClickHouse (chDB)")
    migrate()
    steps.heading(f"{ORDERS:,} orders written in SQLite; triggers log every change")
    write_orders()
    steps.heading("fleet sync: the copy in ClickHouse catches up")
    fleet("sync")
    steps.heading("Changes of every kind, then fleet sync copies only those")
    change_orders()
    fleet("sync")
    steps.heading("The same report on both databases, with the time each took")
    compare()
    steps.heading("fleet sync --check: counts and checksums per key range agree")
    fleet("sync", "--check")


if __name__ == "__main__":
    main()
