"""``manage.py fleet shards``: the slot map, rows per database, imbalance, and ``--check``.

The shard group is ``books`` + ``loans``, as in tests/test_sharding.py (same engine
in the sqlite, postgres and mysql configurations).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connections, models
from django.test import override_settings

import dbfleet
from dbfleet.management.fleet.output import jsonable
from dbfleet.reports import SlotRange, shards_report, slot_ranges
from dbfleet.topology import ShardGroup
from tests.settings import ENGINES
from tests.shop.models import Customer, Order, Product, Review, Visit

SHARDS = ("books", "loans")
GROUP = {
    "databases": list(SHARDS),
    "keys": {"shop.Customer": "id", "shop.Order": "customer", "shop.Visit": "session"},
    "reference": ["shop.Product"],
    "slots": 64,
}
FLEET = {"ROUTES": {}, "SHARDS": {"customers": GROUP}}
pytestmark = [
    pytest.mark.django_db(databases="__all__", transaction=True),
    pytest.mark.skipif(
        ENGINES["books"] != ENGINES["loans"],
        reason="a shard group is one engine; this configuration has none on two aliases",
    ),
]
#: Referred to before referring (reviews: only for what deleting a product cascades to).
SHARDED = (Customer, Product, Order, Visit, Review)


@pytest.fixture(scope="module")
def shard_tables(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """The sharded models' tables on both shards (the suite migrates them on default only)."""
    with django_db_blocker.unblock():
        for alias in SHARDS:
            with connections[alias].schema_editor() as editor:
                for model in SHARDED:
                    editor.create_model(model)
        yield
        for alias in SHARDS:
            with connections[alias].schema_editor() as editor:
                for model in reversed(SHARDED):
                    editor.delete_model(model)


@pytest.fixture(autouse=True)
def sharded(shard_tables: None) -> Iterator[None]:
    with override_settings(DBFLEET=FLEET):
        yield
        for alias in SHARDS:
            for model in (Order, Customer, Visit, Product):
                model.objects.using(alias).all()._raw_delete(alias)


def fleet(*args: str, **options: Any) -> str:
    stdout = StringIO()
    call_command("fleet", "shards", *args, stdout=stdout, stderr=StringIO(), **options)
    return stdout.getvalue()


def line(output: str, start: str) -> list[str]:
    (found,) = [text for text in output.splitlines() if text.startswith(start + " ")]
    return found.split()


def customers_and_orders() -> dict[str, tuple[int, int]]:
    """Six customers with 1..6 orders each; database -> (customers, orders) there."""
    found = dict.fromkeys(SHARDS, (0, 0))
    order_id = 0
    for key in range(1, 7):
        Customer.objects.create(id=key, name=f"c{key}", country="fr")
        for _ in range(key):
            order_id += 1
            Order.objects.create(id=order_id, customer_id=key, status="new", total=1)
        home = dbfleet.shard_for(Customer, key)
        people, orders = found[home]
        found[home] = (people + 1, orders + key)
    assert all(people for people, _ in found.values()), "both shards hold customers"
    return found


def products() -> None:
    Product.objects.bulk_create([Product(id=i, name=f"p{i}") for i in range(1, 5)])


# --- The slot map -------------------------------------------------------------------------------


def test_slot_map_compresses_contiguous_slots_into_ranges() -> None:
    report = shards_report()
    (group,) = report.groups
    assert (group.name, group.slots, group.vendor) == ("customers", 64, connections["books"].vendor)
    assert [(d.alias, d.slots, d.slot_count) for d in group.databases] == [
        ("books", (SlotRange(0, 31),), 32),
        ("loans", (SlotRange(32, 63),), 32),
    ]
    output = fleet()
    assert line(output, "books") == ["books", "0-31", "32"]
    assert line(output, "loans") == ["loans", "32-63", "32"]
    assert "Shard group customers (" in output and "64 slots over 2 databases" in output


def test_slot_ranges_follow_the_slot_map_whatever_its_shape() -> None:
    group = ShardGroup("g", ("a", "b", "c"), {}, frozenset(), 10)
    ranges = slot_ranges(group)
    assert ranges == {"a": [SlotRange(0, 3)], "b": [SlotRange(4, 6)], "c": [SlotRange(7, 9)]}
    for alias, found in ranges.items():
        assert [range(r.first, r.last + 1) for r in found] == [group.slots_of(alias)]
    assert str(SlotRange(5, 5)) == "5" and str(SlotRange(0, 255)) == "0-255"

    class Alternating(ShardGroup):
        def database_for_slot(self, slot: int) -> str:
            return self.databases[(slot // 2) % 2]

    odd = Alternating("g", ("a", "b"), {}, frozenset(), 7)
    assert slot_ranges(odd) == {
        "a": [SlotRange(0, 1), SlotRange(4, 5)],
        "b": [SlotRange(2, 3), SlotRange(6, 6)],
    }


# --- Rows per database --------------------------------------------------------------------------


def test_exact_rows_per_database_and_imbalance() -> None:
    expected = customers_and_orders()
    products()
    report = shards_report(exact=True)
    (group,) = report.groups
    people, orders, visits = group.sharded
    assert (people.model, people.key, orders.model, orders.key) == (
        "shop.Customer",
        "id",
        "shop.Order",
        "customer",
    )
    assert [(r.database, r.rows, r.exact) for r in people.rows] == [
        (alias, expected[alias][0], True) for alias in SHARDS
    ]
    assert [(r.database, r.rows) for r in orders.rows] == [
        (alias, expected[alias][1]) for alias in SHARDS
    ]
    assert (people.total, orders.total) == (6, 21)
    largest = max(SHARDS, key=lambda alias: expected[alias][1])
    assert orders.largest == largest
    assert orders.imbalance == pytest.approx(expected[largest][1] / (21 / 2))
    assert people.imbalance == pytest.approx(max(p for p, _ in expected.values()) / 3)
    # No rows: nothing to be uneven.
    assert (visits.total, visits.imbalance, visits.largest) == (0, None, None)
    (product,) = group.reference
    assert [(r.database, r.rows) for r in product.rows] == [("books", 4), ("loans", 4)]
    assert (product.copies, product.agree) == ((), None)  # Not checked.
    assert report.problems == ()

    output = fleet("--exact")
    assert line(output, "shop.Order") == [
        "shop.Order",
        "customer",
        *(str(expected[alias][1]) for alias in SHARDS),
        "21",
        largest,
        f"{orders.imbalance:.2f}",
    ]
    assert line(output, "shop.Visit")[-3:] == ["0", "-", "-"]
    assert line(output, "shop.Product") == ["shop.Product", "(reference)", "4", "4"]
    assert "Rows are counted (COUNT(*))." in output
    assert "~" not in output


def analyze(alias: str, *tables: str) -> None:
    with connections[alias].cursor() as cursor:
        for table in tables:
            if ENGINES[alias] == "postgres":
                cursor.execute(f"ANALYZE {table}")
            else:
                cursor.execute(f"ANALYZE TABLE {table}")
                cursor.fetchall()


def test_rows_are_estimates_where_the_engine_keeps_them_and_the_output_says_so() -> None:
    expected = customers_and_orders()
    if ENGINES["books"] == "sqlite":
        # SQLite keeps no estimate: counted, and said so.
        people = shards_report().groups[0].sharded[0]
        assert [(found.rows, found.exact) for found in people.rows] == [
            (expected[alias][0], True) for alias in SHARDS
        ]
        output = fleet()
        assert "Rows are counted (COUNT(*)): the engine keeps no estimate." in output
        assert "~" not in output
        return
    # Statistics just gathered on tables this small are the count.
    for alias in SHARDS:
        analyze(alias, "shop_customer", "shop_order", "shop_visit")
    people, orders, visits = shards_report().groups[0].sharded
    assert [(found.rows, found.exact) for found in people.rows] == [
        (expected[alias][0], False) for alias in SHARDS
    ]
    assert [(found.rows, found.exact) for found in orders.rows] == [
        (expected[alias][1], False) for alias in SHARDS
    ]
    assert [(found.rows, found.exact) for found in visits.rows] == [(0, False)] * 2
    output = fleet()
    assert line(output, "shop.Customer")[2:4] == [f"~{expected[alias][0]}" for alias in SHARDS]
    assert "Rows marked ~ are the engine's estimate (its statistics), not a count" in output
    assert "--exact counts them" in output
    assert "~" not in fleet("--exact")
    if ENGINES["books"] == "postgres":
        # Analyzed empty, then written to: the statistics know nothing of its rows.
        Visit.objects.create(id=1, session="s")
        home = dbfleet.shard_for(Visit, "s")
        visits = shards_report().groups[0].sharded[2]
        assert [(found.rows, found.exact) for found in visits.rows] == [
            (1, True) if alias == home else (0, False) for alias in SHARDS
        ]


def test_json_is_the_report_the_table_shows() -> None:
    customers_and_orders()
    products()
    document = json.loads(fleet("--exact", "--check", format="json"))
    assert document == jsonable(shards_report(exact=True, check=True))
    (group,) = document["groups"]
    assert group["databases"][0] == {
        "alias": "books",
        "slots": [{"first": 0, "last": 31}],
        "slot_count": 32,
    }
    order = group["sharded"][1]
    assert set(order) == {"model", "key", "table", "rows", "total", "imbalance", "largest"}
    assert order["rows"][0] == {
        "database": "books",
        "rows": order["rows"][0]["rows"],
        "exact": True,
        "error": "",
    }
    (product,) = group["reference"]
    assert product["agree"] is True and product["differ"] == []
    assert [copy["rows"] for copy in product["copies"]] == [4, 4]
    assert (document["exact"], document["checked"], document["problems"]) == (True, True, [])


# --- --check: the copies of reference models ----------------------------------------------------


def test_check_passes_when_every_copy_agrees() -> None:
    products()
    output = fleet("--check")
    assert "Every copy of every reference model agrees." in output
    assert line(output, "shop.Product")[-1] == "agree"
    (first, second) = shards_report(check=True).groups[0].reference[0].copies
    assert (first.rows, first.checksum) == (second.rows, second.checksum) != (4, None)


def behind_dbfleet_s_back(alias: str) -> models.QuerySet[Product]:
    """Product rows on ``alias`` through a plain queryset: one copy only."""
    return models.QuerySet(Product, using=alias)


@pytest.mark.parametrize("change", ["update", "delete"])
def test_check_fails_naming_the_model_and_the_copy_that_differs(change: str) -> None:
    products()
    rows = behind_dbfleet_s_back("loans").filter(id=2)
    assert (rows.update(name="changed") if change == "update" else rows.delete()[0]) == 1
    report = shards_report(check=True)
    (product,) = report.groups[0].reference
    assert (product.agree, product.differ) == (False, ("loans",))
    (problem,) = report.problems
    assert problem.startswith("shop.Product: the copy on loans (")
    assert "differs from the one on books (4 rows" in problem
    stdout = StringIO()
    with pytest.raises(CommandError, match="shop.Product: the copy on loans") as error:
        call_command("fleet", "shards", "--check", stdout=stdout, stderr=StringIO())
    assert error.value.returncode == 1
    assert line(stdout.getvalue(), "shop.Product")[-2:] == ["differ:", "loans"]
    assert "differs from the one on books (where queries read)" in stdout.getvalue()
    # Without --check nothing is compared, and nothing fails.
    assert "differ" not in fleet()


MISSING = {
    "ROUTES": {},
    "SHARDS": {
        "customers": {
            **GROUP,
            "keys": {**GROUP["keys"], "shop.Ghost": "id"},  # type: ignore[dict-item]
            # TwinOrder's table is on default only; there is no Phantom.
            "reference": ["shop.Product", "shop.TwinOrder", "shop.Phantom"],
        }
    },
}


@override_settings(DBFLEET=MISSING)
def test_a_table_that_is_not_there_says_to_migrate_and_fails_the_check() -> None:
    products()
    report = shards_report(check=True)
    (group,) = report.groups
    ghost = group.sharded[-1]
    assert (ghost.model, ghost.table, ghost.total, ghost.imbalance) == (
        "shop.ghost",
        "",
        None,
        None,
    )
    assert {found.error for found in ghost.rows} == {"not an installed model"}
    phantom, product, twin = group.reference
    assert (phantom.model, phantom.agree, phantom.differ) == ("shop.phantom", False, ())
    assert {copy.error for copy in phantom.copies} == {"not an installed model"}
    assert product.agree is True
    assert twin.agree is False and twin.differ == ()
    assert [copy.error for copy in twin.copies] == [
        "no table shop_twinorder: run `manage.py fleet migrate`"
    ] * 2
    assert "shop.TwinOrder on loans: no table shop_twinorder: run `manage.py fleet migrate`" in (
        report.problems
    )
    stdout = StringIO()
    with pytest.raises(CommandError, match="shop.TwinOrder on books: no table") as error:
        call_command("fleet", "shards", "--check", stdout=stdout, stderr=StringIO())
    assert error.value.returncode == 1
    output = stdout.getvalue()
    assert "shop.TwinOrder on books: no table shop_twinorder: run `manage.py fleet migrate`" in (
        output
    )
    assert line(output, "shop.TwinOrder")[1:] == ["(reference)", "-", "-", "not", "all", "read"]
    assert "shop.TwinOrder: not every copy could be read." in output
    assert "fleet migrate" in fleet()  # Shown without --check too; exits 0.


@pytest.fixture
def bare_twin_tables() -> Iterator[None]:
    """``shop_twinorder`` on both shards with its primary key only (its migrations not applied)."""
    for alias in SHARDS:
        with connections[alias].cursor() as cursor:
            cursor.execute("CREATE TABLE shop_twinorder (id bigint PRIMARY KEY)")
            cursor.execute("INSERT INTO shop_twinorder (id) VALUES (1)")
    yield
    for alias in SHARDS:
        with connections[alias].cursor() as cursor:
            cursor.execute("DROP TABLE shop_twinorder")


TWIN = {"ROUTES": {}, "SHARDS": {"customers": {**GROUP, "reference": ["shop.TwinOrder"]}}}


@override_settings(DBFLEET=TWIN)
def test_a_copy_that_is_counted_but_cannot_be_read_fails_the_check(bare_twin_tables: None) -> None:
    report = shards_report(exact=True, check=True)
    (twin,) = report.groups[0].reference
    assert [(found.rows, found.error) for found in twin.rows] == [(1, ""), (1, "")]
    assert twin.agree is False and twin.differ == ()
    for copy in twin.copies:
        assert copy.error.startswith("cannot be read: ") and "fleet status" in copy.error
    # (The configuration error is TwinOrder's manager: a plain one.)
    assert [p.partition(":")[0] for p in report.problems if p.startswith("shop.")] == [
        "shop.TwinOrder on books",
        "shop.TwinOrder on loans",
    ]
    stdout = StringIO()
    with pytest.raises(CommandError, match="shop.TwinOrder on books: cannot be read"):
        call_command("fleet", "shards", "--check", stdout=stdout, stderr=StringIO())
    output = stdout.getvalue()
    assert "shop.TwinOrder: not every copy could be read." in output
    assert "  shop.TwinOrder on loans: cannot be read: " in output


def unreachable(alias: str) -> Any:
    """A connection for ``alias`` that cannot connect (put in place of the real one)."""
    original = connections[alias]
    settings = {**original.settings_dict}
    if original.vendor == "sqlite":
        settings["NAME"] = "/nonexistent-directory/db.sqlite3"
    else:
        settings.update(HOST="127.0.0.1", PORT=1)  # Nothing listens there.
    return type(original)(settings, alias)


def test_a_database_that_cannot_be_read_is_reported_once_per_table() -> None:
    products()
    original = connections["loans"]
    connections["loans"] = unreachable("loans")
    try:
        report = shards_report(check=True)
    finally:
        connections["loans"].close()
        connections["loans"] = original
    (group,) = report.groups
    for rows in [*(m.rows for m in group.sharded), *(m.rows for m in group.reference)]:
        books, loans = rows
        assert books.error == "" and loans.rows is None
        assert loans.error.startswith("cannot be read: ")
    assert group.reference[0].agree is False
    assert len(report.problems) == 4 and all(
        " on loans: cannot be read" in p for p in report.problems
    )


# --- Groups -------------------------------------------------------------------------------------


def test_an_unknown_group_names_the_groups_there_are() -> None:
    with pytest.raises(
        CommandError, match=r"No shard group 'customer': the groups are 'customers'"
    ):
        fleet("--group", "customer")
    with pytest.raises(CommandError, match="Did you mean 'customers'"):
        fleet("--group", "customer")
    assert [group.name for group in shards_report(["customers"]).groups] == ["customers"]
    assert "Shard group customers" in fleet("--group", "customers")


TWO_GROUPS = {
    "ROUTES": {},
    "SHARDS": {"customers": GROUP, "alone": {"databases": ["default"], "keys": {}, "slots": 4}},
}


@override_settings(DBFLEET=TWO_GROUPS)
def test_each_group_has_its_tables_and_a_group_without_reference_models_checks_nothing() -> None:
    products()
    output = fleet("--check")
    assert "Shard group customers (" in output and "Shard group alone (" in output
    assert line(output, "default") == ["default", "0-3", "4"]
    assert [group.name for group in shards_report(["alone"]).groups] == ["alone"]
    output = fleet("--check", "--group", "alone")
    assert "Shard group customers" not in output
    assert "No reference models: no copies to compare." in output


@override_settings(DBFLEET={})
def test_no_groups_says_how_to_configure_them() -> None:
    output = fleet()
    assert output.startswith('No shard groups are configured. Add them to DBFLEET["SHARDS"]')
    assert "dbfleet.ShardedManager()" in output
    assert json.loads(fleet(format="json"))["groups"] == []
    with pytest.raises(CommandError, match="No shard group 'customers': no shard groups are"):
        fleet("--group", "customers")


BROKEN = {
    "ROUTES": {},
    "SHARDS": {"customers": GROUP, "other": {"databases": ["default"], "keys": {}, "slots": 0}},
}


@override_settings(DBFLEET=BROKEN)
def test_configuration_errors_are_announced_and_fail_the_check() -> None:
    report = shards_report()
    assert [group.name for group in report.groups] == ["customers"]  # "other" is left out.
    (error,) = report.configuration
    assert error.startswith("dbfleet.E037: ")
    assert report.problems == ("1 configuration error(s): run `manage.py check --tag dbfleet`",)
    stdout, stderr = StringIO(), StringIO()
    with pytest.raises(CommandError, match="configuration error"):
        call_command("fleet", "shards", "--check", stdout=stdout, stderr=stderr)
    assert "check --tag dbfleet" in stderr.getvalue()


def test_verbosity_zero_prints_only_the_tables() -> None:
    products()
    output = fleet(verbosity=0)
    assert output.splitlines()[0].split() == ["database", "slots", "count"]
    assert "Shard group" not in output and "Rows" not in output
