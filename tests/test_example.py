"""The bookstore example runs end to end and leaves each table only where it is routed.

The demo runs in a subprocess, as a user runs it, so nothing here uses the test
databases; the rows are counted by opening each database directly. Its last
steps run the shop example (examples/shop): a sharded model on four SQLite files.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from dbfleet.sharding.slots import hash_slot
from tests.servers import SERVER_URLS, recreate, server_connection
from tests.settings import CONFIGURATION, ENGINES, PREFIX

DEMO = Path(__file__).resolve().parent.parent / "examples" / "bookstore" / "demo.py"
SHOP_DEMO = DEMO.parent.parent / "shop" / "demo.py"
ALIASES = ("default", "books")
Counts = dict[str, int | None]
# Author lives in default and Book in books; None: the table does not exist there.
EXPECTED = {
    "default": {"books_author": 3, "books_book": None},
    "books": {"books_author": None, "books_book": 3},
}
LIST_TABLES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
    "postgres": "SELECT table_name FROM information_schema.tables "
    "WHERE table_schema = current_schema()",
    "mysql": "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()",
}
SHARDS = ("shard0", "shard1", "shard2", "shard3")
#: The shop demo's customers; each has three orders, whose FleetIdField ids carry its slot.
CUSTOMERS = range(1, 9)
SLOTS = 1024


def run_demo(data_dir: Path, urls: dict[str, str] | None = None) -> str:
    """Run the demo as a user would; return what it printed."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("BOOKSTORE_") and key != "DJANGO_SETTINGS_MODULE"
    }
    env["BOOKSTORE_DATA_DIR"] = str(data_dir)
    env["SHOP_DATA_DIR"] = str(data_dir / "shop")
    env["SALES_DATA_DIR"] = str(data_dir / "sales")
    env["PYTHONWARNINGS"] = "error::DeprecationWarning,error::PendingDeprecationWarning"
    for alias, url in (urls or {}).items():
        env[f"BOOKSTORE_{alias.upper()}_URL"] = url
    result = subprocess.run(
        [sys.executable, str(DEMO)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    return result.stdout


def home(customer: int) -> str:
    """The shard of a customer, worked out here: 1024 slots in four equal ranges."""
    return SHARDS[hash_slot(customer, SLOTS) * len(SHARDS) // SLOTS]


def carried_slot(order_id: int) -> int:
    """The slot in a FleetIdField id, read from its bits here: ms (41) | slot (10) | seq (12)."""
    return order_id >> 12 & (SLOTS - 1)


def shop_rows(data_dir: Path) -> dict[str, tuple[list[int], list[tuple[int, int]]]]:
    """``{shard: (customer ids, (order id, customer id) pairs)}``, read from each file directly."""
    found = {}
    for alias in SHARDS:
        path = data_dir / "shop" / f"{alias}.sqlite3"
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as connection:
            customers = sorted(key for (key,) in connection.execute("SELECT id FROM shop_customer"))
            orders = sorted(connection.execute("SELECT id, customer_id FROM shop_order"))
        found[alias] = customers, orders
    return found


def shop_files(data_dir: Path) -> dict[str, tuple[list[int], list[int]]]:
    """``{shard: (customer ids, order customer ids)}``; every order id carries its customer's slot.

    Also checks that the orders' ids are unique over the shards.
    """
    rows = shop_rows(data_dir)
    orders = [order for _, shard_orders in rows.values() for order in shard_orders]
    assert len({number for number, _ in orders}) == len(orders)
    assert [carried_slot(number) for number, _ in orders] == [
        hash_slot(customer, SLOTS) for _, customer in orders
    ]
    return {
        alias: (customers, sorted(customer for _, customer in shard_orders))
        for alias, (customers, shard_orders) in rows.items()
    }


def expected_shop_files() -> dict[str, tuple[list[int], list[int]]]:
    return {
        alias: (
            [key for key in CUSTOMERS if home(key) == alias],
            sorted(key for key in CUSTOMERS for _ in range(3) if home(key) == alias),
        )
        for alias in SHARDS
    }


def shop_demo() -> Any:
    """The shop demo's module, loaded without running it."""
    spec = importlib.util.spec_from_file_location("shop_demo", SHOP_DEMO)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shop_orders() -> list[tuple[str, int, Decimal, int]]:
    """The orders the shop demo writes: (customer name, customer id, total, day of December)."""
    module = shop_demo()
    names = {key: name for key, name, _ in module.CUSTOMERS}
    return [(names[customer], customer, total, day) for customer, total, day in module.ORDERS]


def ran_on(output: str, call: str) -> list[str]:
    """The databases the shop demo printed for ``call`` (its capture_queries() aliases)."""
    match = re.search(
        rf"^{re.escape(call)} +-> ran on ([\w, ]+) \(\d+ statements?\)$", output, re.M
    )
    assert match, f"no line for {call} in:\n{output}"
    return match[1].split(", ")


def printed_placement(output: str) -> dict[str, Counts]:
    """Read the demo's last step back into ``{alias: {table: rows or None}}``."""
    placement: dict[str, Counts] = {}
    for line in output.partition("== 5.")[2].partition("== 8.")[0].splitlines():
        match = re.fullmatch(r"(\w+) \([^)]*\): (books_author: .*)", line)
        if match:
            parts = (part.split(": ") for part in match[2].split("; "))
            placement[match[1]] = {
                table: None if rows == "no such table" else int(rows.removesuffix(" rows"))
                for table, rows in parts
            }
    return placement


def count_rows(connection: Any, engine: str) -> Counts:
    """Rows in the example's tables, asked of a DB-API connection (None: no such table)."""
    cursor = connection.cursor()
    cursor.execute(LIST_TABLES[engine])
    present = {name for (name,) in cursor.fetchall()}
    counts: Counts = {}
    for table in ("books_author", "books_book"):
        counts[table] = None
        if table in present:
            cursor.execute(f"SELECT COUNT(*) FROM {table}")
            counts[table] = cursor.fetchone()[0]
    return counts


def sqlite_counts(path: Path) -> Counts:
    # Read-only, so a missing file is an error rather than a new empty database.
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as connection:
        return count_rows(connection, "sqlite")


def server_counts(engine: str, name: str) -> Counts:
    with closing(server_connection(SERVER_URLS[engine], name)) as connection:
        return count_rows(connection, engine)


@pytest.fixture
def server_databases() -> Iterator[dict[str, str]]:
    """Fresh, dedicated server databases for the demo: ``{alias: url}``, dropped afterwards."""
    engines = {alias: ENGINES[alias] for alias in ALIASES}
    if "sqlite" in engines.values():
        pytest.skip(f"needs servers; DBFLEET_TEST_DATABASES is {CONFIGURATION!r}")
    names = {alias: f"{PREFIX}_example_{alias}" for alias in ALIASES}
    for alias in ALIASES:
        recreate(engines[alias], names[alias])
    try:
        yield {alias: f"{SERVER_URLS[engines[alias]]}/{names[alias]}" for alias in ALIASES}
    finally:
        for alias in ALIASES:
            recreate(engines[alias], names[alias], create=False)


def test_demo_on_sqlite_files(tmp_path: Path) -> None:
    output = run_demo(tmp_path)

    assert printed_placement(output) == EXPECTED
    assert "dbfleet.atomic(Author, Book), then an exception: (authors, books) (3, 3) -> (3, 3)" in (
        output
    )
    assert "The write guard said: A write on database 'books' ran outside" in output
    reads = re.findall(r"-> read from '(\w+)'$", output, re.M)
    assert reads == ["replica", "default", "default", "replica"]
    assert {alias: sqlite_counts(tmp_path / f"{alias}.sqlite3") for alias in ALIASES} == EXPECTED


def test_demo_runs_again_with_the_same_rows(tmp_path: Path) -> None:
    run_demo(tmp_path)
    output = run_demo(tmp_path)

    for alias in ALIASES:
        assert re.search(rf"^{alias} +sqlite +0 +0\.0 +up to date$", output, re.M), output
    assert printed_placement(output) == EXPECTED
    assert {alias: sqlite_counts(tmp_path / f"{alias}.sqlite3") for alias in ALIASES} == EXPECTED
    assert shop_files(tmp_path) == expected_shop_files()


def test_demo_shards_a_model_over_four_sqlite_files(tmp_path: Path) -> None:
    output = run_demo(tmp_path).partition("\n== 8. Sharding")[2]
    assert output, "the bookstore demo runs the shop demo as its step 8"

    assert all(customers for customers, _ in expected_shop_files().values())  # On all four.
    for key in CUSTOMERS:  # Each write on its key's shard only.
        assert ran_on(output, f"Customer.objects.create(id={key})") == [home(key)]
    assert ran_on(output, "Order.objects.bulk_create(24 orders)") == list(SHARDS)
    assert ran_on(output, "Order.objects.filter(customer=4)") == [home(4)]
    assert f"  3 orders of Edsger Dijkstra, whose rows are on {home(4)}:\n" in output
    # The ids printed are customer 4's orders in its shard's file, each with its slot.
    match = re.search(r"^  ids (\d+), (\d+), (\d+)$", output, re.M)
    assert match, output
    printed = [int(number) for number in match.groups()]
    _, orders = shop_rows(tmp_path)[home(4)]
    assert printed == sorted(number for number, customer in orders if customer == 4)
    assert {carried_slot(number) for number in printed} == {hash_slot(4, SLOTS)}
    assert f"  each carries slot {hash_slot(4, SLOTS)} (ids.parse(id).slot)" in output
    # get(pk=) with one of those ids: the shard from the id alone.
    assert ran_on(output, f"Order.objects.get(pk={printed[-1]})") == [home(4)]
    # The fan-outs: every shard, as capture_queries() saw them on the worker threads.
    assert ran_on(output, 'Order.objects.order_by("-total")[:5]') == list(SHARDS)
    top = re.findall(r"^ +([\d.]+)  (\S.*?) +Dec (\d+) +from (shard\d)$", output, re.M)
    largest = sorted(shop_orders(), key=lambda order: order[2], reverse=True)[:5]
    assert [(Decimal(total), name, int(day), shard) for total, name, day, shard in top] == [
        (total, name, day, home(customer)) for name, customer, total, day in largest
    ]
    assert ran_on(output, "Order.objects.aggregate(Count, Sum, Avg)") == list(SHARDS)
    assert "  24 orders, 1122.00 in all, 46.75 on average\n" in output
    assert "As sharded: each customer and its orders in one file" in output
    assert shop_files(tmp_path) == expected_shop_files()


def test_demo_syncs_orders_into_chdb_and_reports_the_same_on_both(tmp_path: Path) -> None:
    if importlib.util.find_spec("chdb") is None:  # Not imported: this process may fork.
        pytest.skip("the sales demo needs chDB (the [chdb] extra)")
    output = run_demo(tmp_path).partition("Analytics (examples/sales)")[2]
    assert output, "the bookstore demo runs the sales demo after the shop"
    assert "loaded in full (100,000 rows)" in output
    assert re.search(r"changes; [\d,]+ rows written, \d+ deleted", output), output
    assert "The same answer from both." in output
    assert "Every copy has exactly its source's rows." in output
    assert (tmp_path / "sales" / "chdb").is_dir()  # Its files where it was told.


def test_demo_on_servers(tmp_path: Path, server_databases: dict[str, str]) -> None:
    for _ in range(2):  # The second run must find the same rows, not twice as many.
        output = run_demo(tmp_path, server_databases)

        assert printed_placement(output) == EXPECTED
        counts = {
            alias: server_counts(ENGINES[alias], f"{PREFIX}_example_{alias}") for alias in ALIASES
        }
        assert counts == EXPECTED
    # The shop's shards are SQLite files always, in their own directory.
    assert not list(tmp_path.glob("*.sqlite3")), "no SQLite file is made when both URLs are set"
