"""Synced models and ``fleet sync``: PostgreSQL and SQLite sources, copies on chDB.

The analytics configuration only (``DBFLEET_TEST_DATABASES=analytics``, with
``tests.synced`` installed): ``synced.Order`` lives in ``default`` (PostgreSQL),
``synced.Ticket`` in ``books`` (SQLite), and their copies in ``warehouse``
(chDB). Each test starts from empty tables, an empty change log and no sync
state. The change capture alone (every engine, no ClickHouse) is tested in
tests/test_analytics_capture.py. What needs a process of its own (a sync killed
with SIGKILL) runs in one, with a deadline; chDB is never forked.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.apps import apps
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections, models, router

from dbfleet.analytics import capture
from dbfleet.analytics import sync as sync_module
from dbfleet.analytics.spec import DELETED, VERSION, spec_of
from dbfleet.analytics.sync import (
    Copy,
    SyncLocked,
    check,
    ensure_state_table,
    follow,
    read_state,
    state_model,
    sync,
    sync_copy,
    sync_lock,
    sync_status,
)
from dbfleet.reports import fleet_status
from dbfleet.testing import capture_queries
from dbfleet.values import canonical
from dbfleet.vendors.base import CHANGES
from tests.children import django_child
from tests.settings import CONFIGURATION, PREFIX

DATABASES = ["default", "books", "warehouse"]
#: Seconds a helper process (or a --follow) gets before the test fails.
DEADLINE = 60
pytestmark = [pytest.mark.django_db(databases=DATABASES, transaction=True)]
if CONFIGURATION == "analytics" and apps.is_installed("tests.synced"):
    from tests.synced.models import Customer, Order, OrderFact, OrderTotal, Ticket, TicketFact
else:
    pytestmark.append(
        pytest.mark.skip(
            reason="needs ClickHouse (chDB) and tests.synced: DBFLEET_TEST_DATABASES=analytics"
            if CONFIGURATION != "analytics"
            else "tests.synced is not installed in the analytics configuration"
        )
    )


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    """An empty change log on both sources, and no sync state."""
    for alias in ("default", "books"):
        with connections[alias].cursor() as cursor:
            cursor.execute(f"DELETE FROM {CHANGES}")
    ensure_state_table("warehouse")
    with connections["warehouse"].cursor() as cursor:
        cursor.execute("TRUNCATE TABLE dbfleet_sync_state")
    yield


def orders(count: int, start: int = 0) -> list[Order]:
    customer = Customer.objects.create(name="c")
    return Order.objects.bulk_create(
        Order(
            customer=customer if i % 3 else None,
            status=("new", "paid", "sent")[i % 3],
            total=Decimal(f"{i}.{i % 100:02d}"),
            quantity=None if i % 5 == 0 else i,
            paid=bool(i % 2),
            placed=datetime.date(2024, 1, 1) + datetime.timedelta(days=i % 400),
            token=uuid.UUID(int=i + 1),
            weight=i / 4,
            note=f"note {i} 'quoted' \\ and %s",
        )
        for i in range(start, start + count)
    )


def tickets(count: int) -> list[Ticket]:
    return Ticket.objects.bulk_create(
        Ticket(code=f"T-{i:04d}", subject=f"subject {i}", priority=i % 5) for i in range(count)
    )


def source_rows(copy: type[models.Model]) -> list[tuple[Any, ...]]:
    """The source's rows of every column ``copy`` maps, in key order, as compared."""
    spec = spec_of(copy)
    assert spec is not None and spec.source is not None
    names = [column.source for column in spec.columns]
    rows = spec.source._base_manager.order_by("pk").values_list(*names)
    return [tuple(canonical(value) for value in row) for row in rows]


def copy_rows(copy: type[models.Model]) -> list[tuple[Any, ...]]:
    """The copy's live rows, in key order, as compared."""
    spec = spec_of(copy)
    assert spec is not None
    names = [column.name for column in spec.columns]
    rows = copy._default_manager.live().order_by(spec.pk).values_list(*names)  # type: ignore[attr-defined]
    return [tuple(canonical(value) for value in row) for row in rows]


def assert_exact(*copies: type[models.Model]) -> None:
    for copy in copies:
        expected = source_rows(copy)
        assert copy_rows(copy) == expected, copy._meta.label
    assert not check([copy._meta.label for copy in copies]).problems


# --- The model -------------------------------------------------------------------------------


def test_a_synced_model_has_its_sources_fields_a_version_and_a_deleted_flag() -> None:
    meta = OrderFact._meta
    fields = {field.name: type(field).__name__ for field in meta.concrete_fields}
    assert fields == {
        "id": "Int64Field",
        "customer_id": "Int64Field",
        "status": "StringField",
        "total": "DecimalField",
        "quantity": "Int32Field",
        "paid": "BoolField",
        "placed": "Date32Field",
        "updated": "DateTime64Field",
        "token": "UUIDField",
        "weight": "Float64Field",
        "note": "StringField",
        VERSION: "UInt64Field",
        DELETED: "UInt8Field",
    }
    assert meta.pk.name == "id"
    assert meta.get_field("customer_id").null and not meta.get_field("status").null
    assert (meta.get_field("total").max_digits, meta.get_field("total").decimal_places) == (10, 2)
    engine = meta.engine
    assert type(engine).__name__ == "ReplacingMergeTree"
    assert engine.order_by == ("id",)
    # A subset of the fields, with the key always; a text key orders its copy.
    assert [f.name for f in OrderTotal._meta.concrete_fields] == ["status", "id", "total",
                                                                 VERSION, DELETED]  # fmt: skip
    # A field the copy declares is kept as declared.
    assert OrderTotal._meta.get_field("status").low_cardinality
    assert TicketFact._meta.pk.name == "code"
    assert TicketFact._meta.engine.order_by == ("code",)
    with connections["warehouse"].cursor() as cursor:
        cursor.execute("SELECT engine_full FROM system.tables WHERE name = 'synced_orderfact' "
                       "AND database = currentDatabase()")  # fmt: skip
        ((engine_full,),) = cursor.fetchall()
    assert engine_full.startswith("ReplacingMergeTree(sync_version, sync_deleted) ORDER BY (id)")


def test_live_is_the_latest_version_of_each_row_unless_deleted() -> None:
    order = orders(2)[0]
    copy = Copy(OrderFact)
    row = copy.rows([order.pk])[0]
    other = copy.rows([order.pk + 1])[0]
    copy.write([row, other], 10)
    changed = tuple(
        "sent" if name == "status" else v for name, v in zip(copy.names, row, strict=True)
    )
    copy.write([changed], 11)
    copy.delete([other[copy.pk_index]], 12)
    copy.write([row], 9)  # An older version, written late (a replay): it does not win.
    assert OrderFact.objects.count() == 5  # Every version...
    live = OrderFact.objects.live()
    assert list(live.values_list("id", "status")) == [(order.pk, "sent")]  # ...one live row.
    # The WHERE applies to the merged rows: no filter finds an older version.
    assert not live.filter(status=row[copy.names.index("status")]).exists()
    assert live.filter(status="sent").count() == 1
    assert live.aggregate(total=models.Sum("total"))["total"] == order.total


# --- The sync ---------------------------------------------------------------------------------


def test_the_first_sync_loads_everything_from_postgresql_and_sqlite() -> None:
    orders(250)
    tickets(120)
    report = sync(batch_size=100)
    assert {m.model: (m.full, m.loaded, m.error) for m in report.models} == {
        "synced.OrderFact": (True, 250, ""),
        "synced.OrderTotal": (True, 250, ""),
        "synced.TicketFact": (True, 120, ""),
    }
    assert_exact(OrderFact, OrderTotal, TicketFact)
    # Every value as the source has it (a decimal's scale, a UUID, a time to the microsecond).
    first = Order.objects.order_by("pk").first()
    assert first is not None
    fact = OrderFact.objects.live().get(id=first.pk)
    assert (fact.total, fact.token, fact.updated, fact.note) == (
        first.total,
        first.token,
        first.updated,
        first.note,
    )
    again = sync()
    assert [(m.full, m.changes, m.written) for m in again.models] == [(False, 0, 0)] * 3
    assert all(read_state("warehouse", capture.label_of(m)).loaded for m in (OrderFact, TicketFact))


def test_a_full_load_from_postgresql_sends_copy_text_that_chdb_parses_value_for_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    customer = Customer.objects.create(name="c")
    tricky = [
        "tab\there",
        "new\nline",
        "carriage\rreturn",
        "back\\slash",
        "\\N",
        "",
        "été 東京 🎉",
        "\\t not a tab",
    ]
    Order.objects.bulk_create(
        Order(
            customer=customer if i % 2 else None,
            status=f"s{i}",
            total=Decimal(f"-{i}.05"),
            quantity=None if i % 3 else -(2**31),
            paid=bool(i % 2),
            placed=(datetime.date(1900, 1, 1), datetime.date(2299, 12, 31), None)[i % 3],
            token=uuid.UUID(int=2**128 - 1 - i),
            weight=(float("inf"), float("-inf"), 1e-300, -0.0, 1 / 3)[i % 5],
            note=note,
        )
        for i, note in enumerate(tricky)
    )
    # A time to the microsecond, far from now (auto_now set it on create).
    Order.objects.filter(pk=Order.objects.order_by("pk")[0].pk).update(
        updated=datetime.datetime(1901, 2, 3, 4, 5, 6, 789012, tzinfo=datetime.UTC)
    )
    with capture_queries() as queries:
        result = sync_copy(Copy(OrderFact), batch_size=3)
    assert (result.full, result.loaded, result.error) == (True, len(tricky), "")
    inserts = [q.sql for q in queries if q.alias == "warehouse" and "synced_orderfact" in q.sql]
    inserts = [sql for sql in inserts if sql.startswith("INSERT")]
    assert inserts and all("FROM file(" in sql for sql in inserts)
    assert len(inserts) == 3  # Batches of 3 rows, 8 rows.
    assert_exact(OrderFact)
    # Without a batch size, blocks of TEXT_BLOCK_ROWS (not the row path's default).
    monkeypatch.setattr(sync_module, "TEXT_BLOCK_ROWS", 5)
    monkeypatch.setattr(sync_module, "DEFAULT_BATCH_SIZE", 1)
    with capture_queries() as queries:
        assert sync_copy(Copy(OrderFact), full=True).loaded == len(tricky)
    inserts = [q.sql for q in queries if q.alias == "warehouse" and "FROM file(" in q.sql]
    assert len(inserts) == 2  # Blocks of 5 rows, 8 rows.
    assert_exact(OrderFact)


#: Per source: its model, copy, a text column, another column and a value for it.
SOURCES = {
    "postgresql": ("synced.Order", "synced.OrderFact", "status", "quantity", 999),
    "sqlite": ("synced.Ticket", "synced.TicketFact", "subject", "priority", 4),
}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_kind_of_write_reaches_the_copy(source: str) -> None:
    """save, bulk_create, update (no auto_now), bulk_update, raw SQL, delete, QuerySet.delete."""
    label, copy_label, text, other, value = SOURCES[source]
    model: Any = apps.get_model(label)
    copy = apps.get_model(copy_label)
    made: list[Any] = orders(10) if source == "postgresql" else tickets(10)
    new = {"status": "bulk"} if source == "postgresql" else {"code": "T-bulk"}
    manager = model.objects
    sync([copy_label])
    pks = [item.pk for item in made]
    item = manager.get(pk=pks[0])
    setattr(item, text, "saved")
    item.save()  # An UPDATE...
    manager.create(**({"code": "T-new"} if source == "sqlite" else {}), **{text: "created"})
    manager.filter(pk=pks[1]).update(**{other: value})  # ...and one that leaves auto_now be.
    bulk = list(manager.filter(pk__in=pks[2:4]))
    for each in bulk:
        setattr(each, text, "bulk updated")
    manager.bulk_update(bulk, [text])
    manager.bulk_create([model(**new)])
    connection = connections[router.db_for_write(model)]
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {quote(model._meta.db_table)} SET {quote(text)} = %s "
            f"WHERE {quote(model._meta.pk.column)} = %s",
            ("raw", pks[4]),
        )
    manager.get(pk=pks[5]).delete()
    manager.filter(pk__in=pks[6:8]).delete()
    (result,) = sync([copy_label]).models
    assert (result.full, result.changes, result.written, result.deleted) == (False, 10, 7, 3)
    assert result.pending == 0
    assert_exact(copy)


def test_replaying_a_batch_changes_nothing() -> None:
    orders(20)
    sync(["synced.OrderFact"])
    Order.objects.filter(pk__lte=Order.objects.order_by("pk")[5].pk).update(status="replayed")
    copy = Copy(OrderFact)
    changes = capture.pending(copy.source_connection, copy.label, 100)
    state = read_state(copy.alias, copy.label)
    from dbfleet.analytics.sync import Versions, apply

    versions = Versions(copy.alias, state)
    version = versions.take()
    apply(copy, changes, version)
    once = copy_rows(OrderFact)
    apply(copy, changes, version)  # The same batch again, as after a crash before consume.
    assert copy_rows(OrderFact) == once
    sync(["synced.OrderFact"])  # The log still has it: copied a third time, harmlessly.
    assert_exact(OrderFact)


def test_a_transaction_that_commits_late_is_copied_when_it_commits() -> None:
    """A watermark (updated_at > last sync) misses this: the change is older than the sync."""
    orders(5)
    sync(["synced.OrderFact"])
    first = Order.objects.order_by("pk").first()
    assert first is not None
    other = connections.create_connection("default")
    try:
        other.ensure_connection()
        other.set_autocommit(False)
        with other.cursor() as cursor:
            cursor.execute("UPDATE synced_order SET status = 'late' WHERE id = %s", (first.pk,))
            cursor.execute(
                "INSERT INTO synced_order (status, total, paid, updated, token, weight, note) "
                "VALUES ('late', 1, false, now() - interval '1 hour', %s, 0, '')",
                (uuid.uuid4(),),
            )
        Order.objects.filter(pk=first.pk + 1).update(status="early")
        report = sync(["synced.OrderFact"])  # Copies "early"; "late" is not committed.
        assert report.models[0].changes == 1
        assert OrderFact.objects.live().filter(status="late").count() == 0
        other.commit()
    finally:
        other.close()
    report = sync(["synced.OrderFact"])
    assert report.models[0].changes == 2
    assert OrderFact.objects.live().filter(status="late").count() == 2
    assert_exact(OrderFact)


def test_changes_during_a_full_load_are_copied_after_it() -> None:
    orders(300)
    made: list[int] = []

    def writes() -> None:
        try:
            Order.objects.filter(pk__in=Order.objects.order_by("pk").values("pk")[:3]).update(
                status="during"
            )
            made.append(Order.objects.create(status="during").pk)
            Order.objects.order_by("-pk")[1].delete()
        finally:
            connections.close_all()

    def meanwhile(label: str, what: str, count: int) -> None:
        # While the load reads (its connection busy with COPY): another session changes
        # rows already read and not yet read, adds one and deletes one, and commits.
        if what == "loaded" and not made:
            thread = threading.Thread(target=writes)
            thread.start()
            thread.join(DEADLINE)

    (result,) = sync(["synced.OrderFact"], batch_size=50, progress=meanwhile).models
    assert made and result.full and result.loaded == 300 and result.changes == 5
    assert_exact(OrderFact)


def test_full_marks_deleted_what_the_source_lost_unseen() -> None:
    orders(30)
    sync(["synced.OrderFact"])
    capture.uninstall(connections["default"], [Order])  # Deletes nobody logs.
    try:
        gone = list(Order.objects.order_by("pk").values_list("pk", flat=True)[:4])
        Order.objects.filter(pk__in=gone).delete()
        assert OrderFact.objects.live().filter(id__in=gone).count() == 4
    finally:
        # As migrate does; with the triggers missing, the next sync loads in full.
        assert capture.install(connections["default"], capture.sources_on("default"))
    (result,) = sync(["synced.OrderFact"], batch_size=3).models
    assert result.full and result.deleted == 4
    assert_exact(OrderFact)
    (forced,) = sync(["synced.OrderFact"], full=True).models
    assert forced.full and forced.loaded == 26 and forced.deleted == 0


def test_a_truncate_loads_the_copy_again() -> None:
    orders(10)
    sync(["synced.OrderFact"])
    with connections["default"].cursor() as cursor:
        cursor.execute("TRUNCATE synced_order")
    (result,) = sync(["synced.OrderFact"]).models
    assert result.full and result.deleted == 10
    assert OrderFact.objects.live().count() == 0


def test_a_second_sync_of_a_copy_is_refused_while_one_runs() -> None:
    orders(3)
    with sync_lock("default", "synced.orderfact"):
        with pytest.raises(SyncLocked) as refused:
            call_command("fleet", "sync", "synced.OrderFact")
        message = str(refused.value)
        assert "Another sync of synced.orderfact is running" in message
        assert "PostgreSQL session pid" in message
        call_command("fleet", "sync", "synced.TicketFact", stdout=StringIO())  # Not that one.
    assert OrderFact.objects.live().count() == 0
    call_command("fleet", "sync", "synced.OrderFact", stdout=StringIO())
    assert OrderFact.objects.live().count() == 3


def test_the_command_says_what_it_copied() -> None:
    orders(3)
    out = StringIO()
    call_command("fleet", "sync", "synced.OrderFact", "--batch-size", "2", "-v", "2", stdout=out)
    text = out.getvalue()
    assert "synced.orderfact: 2 rows loaded" in text
    assert "synced.OrderFact (synced.Order (default) -> warehouse): loaded in full (3 rows)" in text
    Order.objects.update(status="x")
    out = StringIO()
    call_command("fleet", "sync", "synced.OrderFact", "--format", "json", stdout=out)
    (model,) = json.loads(out.getvalue())["models"]
    assert (model["full"], model["changes"], model["written"]) == (False, 3, 3)
    with pytest.raises(CommandError, match="'shop.Order' is not a synced model; the synced"):
        call_command("fleet", "sync", "shop.Order")
    with pytest.raises(CommandError, match="cannot go with --full"):
        call_command("fleet", "sync", "--check", "--full")


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_a_failed_sync_is_reported_and_kept_for_status() -> None:
    orders(3)
    sync(["synced.OrderFact"])
    Order.objects.update(status="x")
    with connections["warehouse"].schema_editor() as editor:
        editor.delete_model(OrderFact)
    try:
        with pytest.raises(CommandError, match="Not every copy was synced: synced.OrderFact: "):
            call_command("fleet", "sync", "synced.OrderFact", stdout=StringIO())
    finally:
        with connections["warehouse"].schema_editor() as editor:
            editor.create_model(OrderFact)
    state = read_state("warehouse", "synced.orderfact")
    assert "synced_orderfact" in state.error and state.error_at > 0
    (status,) = [s for s in sync_status() if s.model == "synced.OrderFact"]
    assert status.pending == 3 and status.lag is not None and status.lag >= 0
    assert "synced_orderfact" in status.error
    out = StringIO()
    call_command("fleet", "status", stdout=out)  # In order: a sync's error is not a database's.
    assert "synced.OrderFact (synced from synced.Order on default -> warehouse): 3 changes " in (
        out.getvalue()
    )
    assert "last error: " in out.getvalue()
    sync(["synced.OrderFact"], full=True)  # The table was made again: load it.
    (status,) = [s for s in sync_status(["warehouse"]) if s.model == "synced.OrderFact"]
    assert (status.pending, status.error, status.loaded) == (0, "", True)
    assert status.synced_at is not None and status.last_lag is not None


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_fleet_status_shows_each_copy() -> None:
    report = fleet_status(["default", "books", "warehouse"])
    assert {s.model: (s.pending, s.synced_at) for s in report.synced} == {
        "synced.OrderFact": (0, None),
        "synced.OrderTotal": (0, None),
        "synced.TicketFact": (0, None),
    }
    # --database: the copies whose source or copy is there.
    assert [s.model for s in fleet_status(["books"], only=["books"]).synced] == [
        "synced.TicketFact"
    ]
    out = StringIO()
    call_command("fleet", "status", stdout=out)
    assert (
        "synced.TicketFact (synced from synced.Ticket on books -> warehouse): 0 changes "
        "pending, lag 0.0 s; never synced: run `fleet sync`" in out.getvalue()
    )


# --- --check ------------------------------------------------------------------------------------


def test_check_names_the_key_ranges_that_differ() -> None:
    orders(200)
    tickets(50)
    sync()
    assert not check().problems
    copy = Copy(OrderFact)
    pks = list(Order.objects.order_by("pk").values_list("pk", flat=True))
    row = copy.rows([pks[10]])[0]
    changed = tuple(
        "tampered" if n == "status" else v for n, v in zip(copy.names, row, strict=True)
    )
    copy.write([changed], 2**63)  # A row the source does not have so.
    copy.delete([pks[150]], 2**63)  # A row the source has.
    out = StringIO()
    with pytest.raises(
        CommandError, match="Not in order \\(exit 1\\): synced.OrderFact: 2 of"
    ) as e:
        call_command("fleet", "sync", "--check", stdout=out)
    assert e.value.returncode == 1
    text = out.getvalue()
    low = pks[0]
    width = -(-(pks[-1] - low + 1) // 64)
    for key in (pks[10], pks[150]):
        first = low + (key - low) // width * width
        assert f"synced.OrderFact: keys {first}-{first + width - 1} differ" in text
        assert f": {key}" in text
    assert "synced.TicketFact" in text and "synced.OrderTotal" in text
    (order_check,) = check(["synced.OrderFact"]).models
    assert (order_check.source_rows, order_check.copy_rows) == (200, 199)
    # A text key: hash buckets.
    copy = Copy(TicketFact)
    copy.delete(["T-0007"], 2**63)
    (ticket_check,) = check(["synced.TicketFact"]).models
    (difference,) = ticket_check.differ
    assert difference.range.startswith("hash bucket ") and difference.keys == ("T-0007",)


def test_check_says_when_changes_are_pending() -> None:
    orders(5)
    sync(["synced.OrderFact"])
    Order.objects.update(status="later")
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("fleet", "sync", "--check", "synced.OrderFact", stdout=out)
    assert "has 5 changes not copied yet: run `fleet sync` first" in out.getvalue()
    sync(["synced.OrderFact"])
    out = StringIO()
    call_command("fleet", "sync", "--check", "synced.OrderFact", stdout=out)
    assert "Every copy has exactly its source's rows." in out.getvalue()


# --- --follow -----------------------------------------------------------------------------------


def test_follow_keeps_the_lag_bounded_and_stops_on_sigterm() -> None:
    orders(5)
    seen: dict[str, float] = {}
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            deadline = time.monotonic() + DEADLINE
            while OrderFact.objects.live().count() < 5:  # The first turn's full load.
                assert time.monotonic() < deadline
                time.sleep(0.05)
            for round in range(3):
                written = time.monotonic()
                Order.objects.filter(quantity__isnull=False).update(status=f"round {round}")
                Order.objects.create(status=f"round {round}")
                while OrderFact.objects.live().filter(status=f"round {round}").count() < 5:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
                seen[f"round {round}"] = time.monotonic() - written
        except BaseException as error:  # noqa: BLE001  (failed in the test's thread)
            failures.append(error)
        finally:
            connections.close_all()
            os.kill(os.getpid(), signal.SIGTERM)

    out = StringIO()
    thread = threading.Thread(target=writer)
    thread.start()
    call_command("fleet", "sync", "--follow", "--interval", "0.1", "synced.OrderFact", stdout=out)
    thread.join(DEADLINE)
    assert not failures, failures
    assert len(seen) == 3 and max(seen.values()) < 5, seen
    assert "Following every 0.1 s" in out.getvalue() and out.getvalue().endswith("Stopped.\n")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert_exact(OrderFact)


def test_follow_reports_an_error_tries_again_and_stops_on_sigint() -> None:
    orders(3)
    with connections["warehouse"].schema_editor() as editor:
        editor.delete_model(OrderFact)
    out, err = StringIO(), StringIO()
    failures: list[BaseException] = []

    def repair() -> None:
        try:
            deadline = time.monotonic() + DEADLINE
            while "(trying again)" not in err.getvalue():
                assert time.monotonic() < deadline
                time.sleep(0.02)
            with connections["warehouse"].schema_editor() as editor:
                editor.create_model(OrderFact)
            while OrderFact.objects.live().count() < 3:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        except BaseException as error:  # noqa: BLE001  (failed in the test's thread)
            failures.append(error)
        finally:
            connections.close_all()
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=repair)
    thread.start()
    call_command(
        "fleet",
        "sync",
        "--follow",
        "--interval",
        "0.05",
        "synced.OrderFact",
        stdout=out,
        stderr=err,
    )
    thread.join(DEADLINE)
    assert not failures, failures
    assert (
        "synced.OrderFact: DatabaseError" in err.getvalue() or "synced_orderfact" in err.getvalue()
    )
    assert "synced.OrderFact: loaded in full (3 rows)" in out.getvalue()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --- A sync killed half-way -------------------------------------------------------------------


def child_sync(*args: str) -> subprocess.Popen[str]:
    """``fleet sync`` in a process of its own, on this test run's databases."""
    databases = {alias: connections[alias].settings_dict for alias in ("default", "warehouse")}
    books = connections["books"].settings_dict
    # Not read: an in-memory test database cannot be shared with another process.
    databases["books"] = {**books, "NAME": os.path.join(tempfile.gettempdir(), f"{PREFIX}_books")}
    connections["warehouse"].close()  # chDB opens a data directory in one process at a time.
    return django_child("tests.synced.child_settings", databases, "fleet", "sync", *args)


def kill_after(child: subprocess.Popen[str], lines: int, marker: str) -> str:
    """SIGKILL ``child`` once it has printed ``lines`` lines with ``marker``; its output."""
    assert child.stdout is not None
    output, found = [], 0
    timer = threading.Timer(DEADLINE, child.kill)
    timer.start()
    try:
        for line in child.stdout:
            output.append(line)
            found += marker in line
            if found >= lines:
                child.send_signal(signal.SIGKILL)
                break
        child.wait(DEADLINE)
    finally:
        timer.cancel()
    assert child.returncode == -signal.SIGKILL, "".join(output)
    return "".join(output)


@pytest.mark.timeout(4 * DEADLINE)
def test_a_sync_killed_half_way_then_run_again_leaves_an_exact_copy() -> None:
    orders(20_000)  # Some 200 batches: the kill comes long before the end.
    # Killed during the full load: a part of the rows is copied.
    kill_after(child_sync("synced.OrderFact", "--batch-size", "100", "-v", "2"), 3, "rows loaded")
    loaded = OrderFact.objects.live().count()
    assert 0 < loaded < 20_000, loaded
    assert not read_state("warehouse", "synced.orderfact").loaded
    (result,) = sync(["synced.OrderFact"]).models
    assert result.full  # The load is done again, whole.
    assert_exact(OrderFact)
    # Killed while copying changes: some are copied, their log rows maybe not yet consumed.
    Order.objects.filter(quantity__isnull=False).update(status="changed")
    Order.objects.filter(pk__in=Order.objects.order_by("pk").values("pk")[:500]).delete()
    kill_after(child_sync("synced.OrderFact", "--batch-size", "100", "-v", "2"), 3, "changes")
    changed = OrderFact.objects.live().filter(status="changed").count()
    left = capture.backlog(connections["default"], "synced.orderfact")[0]
    assert changed > 0 and left > 0, (changed, left)
    (result,) = sync(["synced.OrderFact"]).models
    assert not result.full and result.changes >= left - 100
    assert_exact(OrderFact)


def test_a_killed_sync_holds_no_lock() -> None:
    orders(2000)
    kill_after(child_sync("synced.OrderFact", "--batch-size", "100", "-v", "2"), 1, "rows loaded")
    with sync_lock("default", "synced.orderfact"):  # Ended with its session.
        pass


# --- The pieces ----------------------------------------------------------------------------------


def test_sync_copy_stops_after_max_batches_and_says_what_is_pending() -> None:
    orders(10)
    copy = Copy(OrderFact)
    sync_copy(copy)
    Order.objects.update(status="y")
    result = sync_copy(copy, batch_size=3, max_batches=2)
    assert (result.changes, result.pending) == (6, 4)


def test_the_state_table_is_made_once() -> None:
    ensure_state_table("warehouse")
    ensure_state_table("warehouse")
    assert state_model()._meta.db_table in connections["warehouse"].introspection.table_names()


def test_follow_tries_again_after_an_error_and_stops_when_told() -> None:
    orders(3)
    stop = threading.Event()
    results: list[Any] = []
    with connections["warehouse"].schema_editor() as editor:
        editor.delete_model(OrderFact)

    def on_sync(result: Any) -> None:
        results.append(result)
        if result.error:  # The copy's table is back for the next turn.
            with connections["warehouse"].schema_editor() as editor:
                editor.create_model(OrderFact)
        else:
            stop.set()

    follow(["synced.OrderFact"], interval=0.01, stop=stop, on_sync=on_sync)
    assert [bool(result.error) for result in results] == [True, False]
    assert "synced_orderfact" in results[0].error
    assert results[1].full and results[1].loaded == 3
    assert_exact(OrderFact)


def test_a_stop_during_a_full_load_leaves_it_to_be_done_again() -> None:
    orders(30)
    stop = threading.Event()
    copy = Copy(OrderFact)

    def progress(label: str, what: str, count: int) -> None:
        stop.set()

    result = sync_copy(copy, batch_size=10, progress=progress, stop=stop)
    assert (result.full, result.loaded) == (True, 0)
    assert not read_state("warehouse", copy.label).loaded
    assert 0 < OrderFact.objects.live().count() < 30
    assert sync_copy(copy, batch_size=10).loaded == 30
    assert_exact(OrderFact)
    Order.objects.update(status="later")
    assert sync_copy(copy, stop=stop).changes == 0  # Stopped: not a batch more.


def test_check_of_empty_copies_and_of_a_copy_it_cannot_read() -> None:
    report = check()
    assert [(m.model, m.ranges, m.source_rows) for m in report.models] == [
        ("synced.OrderFact", 0, 0),
        ("synced.OrderTotal", 0, 0),
        ("synced.TicketFact", 0, 0),
    ]
    assert not report.problems
    out = StringIO()
    call_command("fleet", "sync", "--check", "--format", "json", stdout=out)
    assert [m["ranges"] for m in json.loads(out.getvalue())["models"]] == [0, 0, 0]
    with connections["warehouse"].schema_editor() as editor:
        editor.delete_model(TicketFact)
    out = StringIO()
    try:
        (problem,) = check().problems
        with pytest.raises(CommandError, match="Not in order \\(exit 1\\): synced.TicketFact: "):
            call_command("fleet", "sync", "--check", stdout=out)
    finally:
        with connections["warehouse"].schema_editor() as editor:
            editor.create_model(TicketFact)
    assert problem.startswith("synced.TicketFact: ") and "synced_ticketfact" in problem
    assert "synced.TicketFact: " in out.getvalue()


def test_status_says_where_the_change_log_is_missing() -> None:
    with connections["books"].cursor() as cursor:
        cursor.execute(f"DROP TABLE {CHANGES}")
    try:
        (status,) = [s for s in sync_status() if s.model == "synced.TicketFact"]
    finally:
        capture.install(connections["books"], capture.sources_on("books"))
    assert status.pending is None
    assert status.problem == (
        "no change log on 'books': run `manage.py migrate --database books` (or `fleet "
        "migrate`), which installs it"
    )


def test_only_synced_models_with_a_source_are_copied() -> None:
    from django.apps.registry import Apps

    from dbfleet.analytics import SyncedModel

    class Orphan(SyncedModel):
        class Sync:
            source = "nowhere.Model"

        class Meta:
            apps = Apps()
            app_label = "orphans"

    with pytest.raises(LookupError, match="source 'nowhere.Model' cannot be found: no installed"):
        Copy(Orphan)
    with pytest.raises(LookupError, match="synced.Customer is not a synced model"):
        Copy(Customer)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "argument --batch-size: invalid positive value: '0'"),
        (["--interval", "-1"], "argument --interval: invalid seconds value: '-1'"),
        (["--follow", "--format", "json"], "--follow writes a line per sync as it goes"),
    ],
)
def test_what_the_command_refuses(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("fleet", "sync", *args)


def test_verbosity_0_says_nothing() -> None:
    orders(2)
    out = StringIO()
    call_command("fleet", "sync", "-v", "0", stdout=out)
    assert out.getvalue() == ""
    assert OrderFact.objects.live().count() == 2
