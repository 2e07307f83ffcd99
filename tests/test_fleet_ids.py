"""FleetIdField: the bit layout, the counters, routing by id, batches, processes, JSON.

As in tests/test_sharding.py the shard group is ``books`` + ``loans``: the tables of
``Account`` (keyed by its own id) and ``Ticket`` (keyed by its account) are made there
by hand, with the counter (``ids.install``). ``Receipt`` is not sharded and lives in
``default``, migrated by the suite: its counter there comes from ``post_migrate``.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core import serializers
from django.core.management import call_command
from django.db import DatabaseError, IntegrityError, ProgrammingError, connections, transaction
from django.forms.models import model_to_dict
from django.test import override_settings

import dbfleet
from dbfleet import vendors
from dbfleet.conf import get_topology
from dbfleet.migrating.worker import migrate_up_to_date
from dbfleet.sharding import ids
from dbfleet.sharding.slots import home_slot, slot_of_id, unallocated
from dbfleet.testing import capture_queries
from tests.settings import ENGINES
from tests.shop.models import Account, Receipt, Ticket
from tests.threads import Threads

SHARDS = ("books", "loans")
FLEET: dict[str, Any] = {
    "ROUTES": {},
    "WRITE_GUARD": "raise",
    "SHARDS": {
        "accounts": {
            "databases": list(SHARDS),
            "keys": {"shop.Account": "id", "shop.Ticket": "account"},
            "slots": 64,
        }
    },
}
pytestmark = [
    pytest.mark.django_db(databases="__all__", transaction=True),
    pytest.mark.skipif(
        ENGINES["books"] != ENGINES["loans"],
        reason="a shard group is one engine; this configuration has none on two aliases",
    ),
]
ROOT = Path(__file__).resolve().parent.parent
#: Seconds anything here waits for another thread or process; far more than it needs.
DEADLINE = 90.0
servers_only = pytest.mark.skipif(
    ENGINES["books"] == "sqlite",
    reason="SQLite has one writer at a time, and its counter is part of the transaction",
)


@pytest.fixture(scope="module")
def shard_tables(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Account and Ticket on both shards, with the counter (the suite migrates them on default)."""
    with django_db_blocker.unblock():
        for alias in SHARDS:
            with connections[alias].schema_editor() as editor:
                editor.create_model(Account)
                editor.create_model(Ticket)
            ids.install(connections[alias])
        yield
        for alias in SHARDS:
            with connections[alias].schema_editor() as editor:
                editor.delete_model(Ticket)
                editor.delete_model(Account)


@pytest.fixture(autouse=True)
def sharded(shard_tables: None) -> Iterator[None]:
    with override_settings(DBFLEET=FLEET):
        yield
        for alias in SHARDS:
            Ticket.objects.using(alias).all()._raw_delete(alias)
            Account.objects.using(alias).all()._raw_delete(alias)


def group() -> Any:
    return get_topology().shard_groups["accounts"]


def counter(fleet_id: int) -> int:
    """The counter value an id was made of (its slot taken out): it orders one database's ids."""
    return fleet_id >> 22 << 12 | fleet_id & 0xFFF


def allocations(queries: Any) -> list[str]:
    """The database of each allocation among ``queries``."""
    return [query.alias for query in queries if "dbfleet_fleet_id" in query.sql]


def drop_counter(alias: str) -> None:
    connection = connections[alias]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("DROP FUNCTION IF EXISTS dbfleet_fleet_ids(bigint, bigint)")
            cursor.execute("DROP SEQUENCE IF EXISTS dbfleet_fleet_id")
        else:
            cursor.execute("DROP TABLE IF EXISTS dbfleet_fleet_id")


@pytest.fixture
def no_counter_on_loans() -> Iterator[None]:
    """``loans`` without its counter during the test, with a new one after."""
    drop_counter("loans")
    try:
        yield
    finally:
        drop_counter("loans")
        ids.install(connections["loans"])


# --- The layout ---------------------------------------------------------------------------------


def test_the_bit_layout_and_what_an_id_says() -> None:
    assert datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC) == ids.EPOCH
    assert ids.EPOCH_MS == 1_767_225_600_000
    fleet_id = ids.compose(5 << 12 | 3, 17)
    assert fleet_id == 5 << 22 | 17 << 12 | 3
    assert slot_of_id(fleet_id) == 17
    assert ids.parse(fleet_id) == ids.FleetId(ids.EPOCH + datetime.timedelta(milliseconds=5), 17, 3)
    assert ids.parse(str(fleet_id)) == ids.parse(fleet_id)
    # The last id there can be: the largest positive signed 64-bit integer, in 2095.
    last = ids.compose(ids.MAX_MILLISECONDS << 12 | 4095, 1023)
    assert last == 2**63 - 1
    assert ids.parse(last).time.date() == datetime.date(2095, 9, 7)
    assert ids.IDS_PER_MILLISECOND == 4096
    for wrong in (-1, 2**63):
        with pytest.raises(ValueError, match="not a FleetIdField id"):
            ids.parse(wrong)


def test_first_id_selects_by_time() -> None:
    assert ids.first_id(ids.EPOCH) == 0
    assert ids.first_id(ids.EPOCH - datetime.timedelta(days=1)) == 0
    # Rounded up: an id of millisecond 1 may have been handed out before 1.5 ms.
    assert ids.first_id(ids.EPOCH + datetime.timedelta(microseconds=1500)) == 2 << 22
    assert ids.first_id(ids.EPOCH + datetime.timedelta(milliseconds=2)) == 2 << 22


# --- The counters -------------------------------------------------------------------------------


def test_the_counter_moves_to_the_greater_of_itself_and_the_clock() -> None:
    connection = connections["books"]
    vendor = vendors.of(connection)
    current = vendor.allocate_ids(connection, 1, 0)
    assert current is not None
    ahead = ((max(current, ids._now()) >> 12) + 10) << 12  # A clock 10 ms ahead of both.
    assert vendor.allocate_ids(connection, 5, ahead) == ahead + 4  # The block ahead .. ahead + 4.
    assert vendor.allocate_ids(connection, 5, ahead) == ahead + 9  # The same millisecond: on.
    assert vendor.allocate_ids(connection, 1, 0) == ahead + 10  # A clock behind: on all the same.
    # Beyond 4096 in a millisecond: borrowed from the next ones, still in order.
    last = vendor.allocate_ids(connection, 10_000, ahead)
    assert last == ahead + 10_010
    assert last >> 12 == (ahead >> 12) + 2


def wait_for_the_clock(alias: str) -> None:
    """Until the clock passes the counter of ``alias`` (which earlier tests may have pushed on)."""
    counter = ids._allocate(alias, 1)
    deadline = time.monotonic() + DEADLINE
    while ids._now() <= counter:
        assert time.monotonic() < deadline, "the clock did not catch up with the counter"
        time.sleep(0.001)


def test_ids_grow_with_time_and_tell_it() -> None:
    for alias in SHARDS:
        wait_for_the_clock(alias)
    before = datetime.datetime.now(datetime.UTC)
    made = [Account.objects.create(name=f"a{n}") for n in range(8)]
    after = datetime.datetime.now(datetime.UTC)
    for alias in SHARDS:
        # Each database's counter (milliseconds and sequence, without the slot) only grows.
        counters = [counter(account.id) for account in made if account._state.db == alias]
        assert counters == sorted(counters) and len(set(counters)) == len(counters)
    times = [ids.parse(account.id).time for account in made]
    assert times == sorted(times)  # The clock's milliseconds: in order, on either shard.
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= times[0]
    assert times[-1] <= after


def test_a_rollback_does_not_hand_an_id_out_again() -> None:
    if ENGINES["books"] == "sqlite":
        # SQLite's counter is part of the transaction, as its own AUTOINCREMENT counter is.
        pytest.skip("SQLite's counter rolls back with the transaction")
    connection = connections["books"]
    vendor = vendors.of(connection)
    now = ids._now()  # One clock value for both: only the counter decides.
    with pytest.raises(RuntimeError), transaction.atomic(using="books"):
        inside = vendor.allocate_ids(connection, 1, now)
        raise RuntimeError
    assert inside is not None
    assert vendor.allocate_ids(connection, 1, now) == inside + 1
    account = Account(name="rolled back")
    with pytest.raises(RuntimeError), transaction.atomic(using="books"):
        account.save(using="books")
        raise RuntimeError
    again = Account.objects.on_shard("books").create(name="kept")
    assert counter(again.id) > counter(account.id)


@servers_only
def test_an_open_transaction_does_not_hold_up_another_allocation() -> None:
    opened, allocated = threading.Event(), threading.Event()

    def elsewhere() -> list[int]:
        assert opened.wait(DEADLINE)
        found = ids.new_ids(Account, 3, using="books")
        allocated.set()
        return found

    with Threads([elsewhere], DEADLINE) as threads, transaction.atomic(using="books"):
        held = Account.objects.on_shard("books").create(name="held")  # Uncommitted.
        opened.set()
        # Were the counter locked until this transaction ends, this would wait in vain.
        assert allocated.wait(DEADLINE), "an allocation waited for another transaction"
    (found,) = threads.results
    assert len(found) == 3 and held.id not in found


def test_the_write_guard_lets_an_allocation_through() -> None:
    # The counter is written outside the transaction open on default, on purpose.
    with transaction.atomic(using="default"):
        assert len(ids.new_ids(Account, 2, using="books")) == 2


def test_a_missing_counter_says_to_migrate(no_counter_on_loans: None) -> None:
    with pytest.raises(ProgrammingError) as error:
        ids.new_ids(Account, using="loans")
    assert str(error.value) == (
        "FleetIdField's id counter is missing on database 'loans': run manage.py migrate "
        "--database loans (or manage.py fleet migrate), which creates it wherever a model "
        "with a FleetIdField migrates; for tables made by hand, call "
        "dbfleet.sharding.ids.install(connections['loans'])."
    )
    assert ids.new_ids(Account, using="books")  # The other shard has its own.
    with pytest.raises(ProgrammingError, match="missing"), transaction.atomic(using="loans"):
        ids.new_ids(Account, using="loans")


def test_a_counter_without_its_row_is_missing() -> None:
    if ENGINES["books"] == "postgres":
        pytest.skip("PostgreSQL's counter is a sequence, which has no row to lose")
    with connections["loans"].cursor() as cursor:
        cursor.execute("DELETE FROM dbfleet_fleet_id")
    with pytest.raises(ProgrammingError, match="missing on database 'loans'"):
        ids.new_ids(Account, using="loans")
    ids.install(connections["loans"])  # The row again.
    assert ids.new_ids(Account, using="loans")


def test_other_errors_of_the_counter_are_raised_as_they_are() -> None:
    connection = connections["loans"]
    if connection.vendor == "sqlite":
        before, after = "PRAGMA query_only = ON", "PRAGMA query_only = OFF"
    else:
        before, after = "SET TRANSACTION READ ONLY", None
    with pytest.raises(DatabaseError) as error, transaction.atomic(using="loans"):
        with connection.cursor() as cursor:
            cursor.execute(before)
        try:
            ids.new_ids(Account, using="loans")
        finally:
            if after:
                with connection.cursor() as cursor:
                    cursor.execute(after)
    assert not isinstance(error.value, ProgrammingError) or "missing" not in str(error.value)


def test_migrate_creates_the_counter_where_a_model_with_ids_migrates(
    no_counter_on_loans: None,
) -> None:
    with override_settings(DBFLEET={"ROUTES": {"shop": "books"}}):
        # No model with a FleetIdField migrates on loans now: nothing made there.
        call_command("migrate", "shop", database="loans", verbosity=0)
    with pytest.raises(ProgrammingError, match="missing on database 'loans'"):
        ids.new_ids(Account, using="loans")
    call_command("migrate", "shop", database="loans", verbosity=0)  # Account migrates there.
    assert ids.new_ids(Account, using="loans")
    drop_counter("loans")
    # fleet migrate runs an up-to-date database's signals in its own process.
    migrate_up_to_date("loans", verbosity=0)
    assert ids.new_ids(Account, using="loans")
    # The suite's own migrate made the one on default, where Receipt migrates.
    assert Receipt.objects.create().id


def test_installing_again_leaves_the_counter_where_it_is() -> None:
    connection = connections["books"]
    vendor = vendors.of(connection)
    ahead = ((ids._now() >> 12) + 20) << 12  # Ahead of the clock: only the counter says it.
    before = vendor.allocate_ids(connection, 1, ahead)
    assert before is not None
    ids.install(connection)
    ids.install(connection)
    assert vendor.allocate_ids(connection, 1, 0) == before + 1


def test_an_engine_without_a_counter_says_so() -> None:
    with pytest.raises(NotImplementedError, match="needs PostgreSQL, MariaDB/MySQL or SQLite"):
        vendors.Vendor.install_id_counter(connections["books"])
    with pytest.raises(NotImplementedError, match="needs PostgreSQL, MariaDB/MySQL or SQLite"):
        vendors.Vendor.allocate_ids(connections["books"], 1, 0)


def test_ids_run_out_in_2095(no_counter_on_loans: None, monkeypatch: pytest.MonkeyPatch) -> None:
    ids.install(connections["loans"])  # A counter of its own, dropped after.
    monkeypatch.setattr(ids, "_now", lambda: (ids.MAX_MILLISECONDS + 1) << 12)
    with pytest.raises(OverflowError, match="ended on 2095-09-07"):
        ids.new_ids(Account, using="loans")


@pytest.mark.skipif(ENGINES["books"] != "mysql", reason="MariaDB's counter is a MyISAM table")
def test_a_transactional_counter_table_is_refused(no_counter_on_loans: None) -> None:
    with connections["loans"].cursor() as cursor:
        cursor.execute(
            "CREATE TABLE dbfleet_fleet_id (id TINYINT UNSIGNED NOT NULL PRIMARY KEY, "
            "t BIGINT NOT NULL) ENGINE=InnoDB"
        )
    with pytest.raises(DatabaseError, match="needs MyISAM"):
        ids.install(connections["loans"])


@pytest.mark.skipif(ENGINES["books"] != "postgres", reason="a psycopg option")
def test_server_side_binding_allocates_in_one_statement(monkeypatch: pytest.MonkeyPatch) -> None:
    connection = connections["books"]
    options = {**(connection.settings_dict.get("OPTIONS") or {}), "server_side_binding": True}
    monkeypatch.setitem(connection.settings_dict, "OPTIONS", options)
    with capture_queries() as queries:
        ids.new_ids(Account, using="books")
    assert [query.sql for query in queries] == ["SELECT dbfleet_fleet_ids(%s::bigint, %s::bigint)"]


# --- Sharded rows -------------------------------------------------------------------------------


def test_a_ticket_carries_its_account_s_slot_and_is_found_by_id_on_one_shard() -> None:
    for alias in SHARDS:
        account = Account.objects.on_shard(alias).create(name=alias)
        ticket = Ticket.objects.create(account=account, subject="help")
        slot = slot_of_id(account.id)
        assert group().database_for_slot(slot) == alias == account._state.db
        assert slot_of_id(ticket.id) == slot and ticket._state.db == alias
        with capture_queries() as queries:
            assert Ticket.objects.get(pk=ticket.id) == ticket
            assert Ticket.objects.get(pk=str(ticket.id)) == ticket
            assert Account.objects.get(pk=account.id) == account
            assert [t.id for t in account.ticket_set.all()] == [ticket.id]
        assert set(queries.aliases) == {alias}
    tickets = list(Ticket.objects.all())
    with dbfleet.atomic(*SHARDS), capture_queries() as queries:  # In order, in this thread.
        found = Ticket.objects.filter(id__in=[ticket.id for ticket in tickets])
        assert sorted(t.id for t in found) == sorted(t.id for t in tickets)
    for alias in SHARDS:  # An IN list split per shard: each is asked for its own id only.
        (sql,) = queries.on(alias)
        assert sql.count("%s") + sql.count("?") == 1


def test_queries_by_other_columns_or_ids_of_no_slot_of_the_group() -> None:
    for alias in SHARDS:
        account = Account.objects.on_shard(alias).create(name=alias)
        Ticket.objects.create(account=account, subject="same")
    with dbfleet.atomic(*SHARDS), capture_queries() as queries:
        assert Ticket.objects.filter(subject="same").count() == 2
    assert sorted(queries.aliases) == sorted(SHARDS)  # No key, no id: every shard.
    with pytest.raises(ValueError, match="carries slot 100, and the group has 64"):
        Ticket.objects.filter(pk=ids.compose(1 << 12, 100)).count()


def test_a_new_account_gets_a_slot_of_the_shard_it_is_written_to() -> None:
    for alias in SHARDS:
        for account in (
            Account.objects.on_shard(alias).create(name="pinned"),
            Account.objects.using(alias).create(name="using"),
        ):
            assert group().database_for_slot(slot_of_id(account.id)) == alias
        account = Account(name="saved")
        account.save(using=alias)
        assert group().database_for_slot(slot_of_id(account.id)) == alias
        assert Account.objects.get(pk=account.id) == account
    spread = {Account.objects.create(name="any")._state.db for _ in range(40)}
    assert spread == set(SHARDS)  # At random: both, but for a chance of 2**-39.


def test_an_id_given_by_hand_routes_the_row() -> None:
    (fleet_id,) = ids.new_ids(Account, using="loans")
    account = Account(id=fleet_id, name="by hand")
    account.save()
    assert account._state.db == "loans"
    assert Account.objects.get(pk=fleet_id).name == "by hand"
    # A new instance with an id is inserted, as for any primary key with a default.
    with pytest.raises(IntegrityError), transaction.atomic(using="loans"):
        Account(id=fleet_id, name="again").save()


def test_new_ids_and_assign_need_the_key_of_a_row_keyed_by_another_field() -> None:
    account = Account.objects.on_shard("loans").create(name="k")
    found = ids.new_ids(Ticket, 3, key=account.id)
    assert {slot_of_id(fleet_id) for fleet_id in found} == {slot_of_id(account.id)}
    assert found == sorted(found)
    with pytest.raises(TypeError, match="pass key="):
        ids.new_ids(Ticket)
    with pytest.raises(dbfleet.ShardKeyRequired, match="sharded by 'account'"):
        ids.assign(Ticket, [Ticket(subject="no account")])
    accounts = ids.new_ids(Account, 2, using="books")
    assert {group().database_for_slot(slot_of_id(fleet_id)) for fleet_id in accounts} == {"books"}
    assert len({slot_of_id(fleet_id) for fleet_id in accounts}) == 1  # One slot for a batch.


def test_bulk_create_allocates_once_per_database() -> None:
    accounts = [Account(name=f"a{n}") for n in range(5000)]
    with capture_queries() as queries:
        Account.objects.bulk_create(accounts)
    assert sorted(allocations(queries)) == sorted(SHARDS)
    assert len({account.id for account in accounts}) == 5000
    for alias in SHARDS:
        stored = set(Account.objects.on_shard(alias).values_list("id", flat=True))
        assert stored == {account.id for account in accounts if account._state.db == alias}
        assert {group().database_for_slot(slot_of_id(fleet_id)) for fleet_id in stored} == {alias}
    owners = [next(a for a in accounts if a._state.db == alias) for alias in SHARDS]
    tickets = [Ticket(account=owners[n % 2], subject="t") for n in range(5000)]
    with capture_queries() as queries:
        Ticket.objects.bulk_create(tickets)
    assert sorted(allocations(queries)) == sorted(SHARDS)
    assert len({ticket.id for ticket in tickets}) == 5000
    assert all(slot_of_id(t.id) == slot_of_id(t.account_id) for t in tickets)
    assert Ticket.objects.count() == 5000


def test_bulk_create_takes_its_ids_before_its_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    existing = Account.objects.on_shard("loans").create(name="there")
    connection = connections["loans"]
    vendor = vendors.of(connection)
    monkeypatch.setattr(ids, "_now", lambda: 0)  # Only the counter moves.
    before = vendor.allocate_ids(connection, 1, 0)
    assert before is not None
    rows = [Account(name="new") for _ in range(3)] + [Account(id=existing.id, name="twice")]
    with pytest.raises(IntegrityError):
        Account.objects.on_shard("loans").bulk_create(rows)
    assert Account.objects.on_shard("loans").count() == 1
    # None of them was written; their ids were handed out all the same (SQLite included,
    # whose counter is part of a transaction: not of that one).
    assert vendor.allocate_ids(connection, 1, 0) == before + 3 + 1


def test_bulk_create_on_one_shard_gives_slots_of_that_shard() -> None:
    accounts = Account.objects.on_shard("loans").bulk_create(Account(name="l") for _ in range(50))
    assert {group().database_for_slot(slot_of_id(a.id)) for a in accounts} == {"loans"}
    assert Account.objects.on_shard("loans").count() == 50


# --- A model that is not sharded ----------------------------------------------------------------


def test_django_s_own_bulk_create_allocates_once() -> None:
    receipts = [Receipt(note=f"r{n}") for n in range(1000)]
    with capture_queries() as queries:
        Receipt.objects.bulk_create(receipts, batch_size=300)
    assert allocations(queries) == ["default"]  # Both fields of every row, at once.
    assert len({r.id for r in receipts} | {r.number for r in receipts}) == 2000
    assert Receipt.objects.count() == 1000
    assert {slot_of_id(r.id) for r in receipts} == {home_slot("default")} == {0}


def test_save_inserts_without_trying_an_update_first() -> None:
    with capture_queries() as queries:
        receipt = Receipt.objects.create(note="one")
        Receipt(note="two").save()
    assert allocations(queries) == ["default", "default"]
    rows = [query.sql.split()[0].upper() for query in queries if "fleet_id" not in query.sql]
    assert rows == ["INSERT", "INSERT"]
    assert receipt.id != receipt.number and Receipt.objects.get(pk=receipt.id) == receipt


def test_a_model_that_is_not_sharded_takes_its_database_s_first_slot() -> None:
    assert home_slot("default") == 0
    assert home_slot("loans") == 32  # Of the group: its ids differ from the group's too.
    assert {slot_of_id(i) for i in ids.new_ids(Receipt, 3, using="loans")} == {32}
    assert {slot_of_id(i) for i in ids.new_ids(Receipt, 3)} == {0}
    copied = {**FLEET["SHARDS"]["accounts"], "reference": ["shop.Receipt"]}
    with override_settings(DBFLEET={**FLEET, "SHARDS": {"accounts": copied}}):
        # A reference model's ids come from its first copy's counter (router or not).
        with capture_queries() as queries:
            assert {slot_of_id(i) for i in ids.new_ids(Receipt, 2)} == {home_slot("books")}
        assert allocations(queries) == ["books"]
    receipts = [Receipt(), Receipt(number=7)]
    with capture_queries() as queries:
        ids.assign(Receipt, receipts, using="loans")
    assert allocations(queries) == ["loans"]
    assert receipts[1].number == 7 and {slot_of_id(receipts[0].number)} == {32}


def test_a_value_still_to_come_is_allocated_where_it_is_first_needed() -> None:
    field = Receipt._meta.pk
    assert field is not None
    receipts = [Receipt(), Receipt()]
    # What bulk_create() does first; then, say, it fails before writing a row.
    for receipt in receipts:
        receipt.pk = field.get_pk_value_on_save(receipt)
    assert "allocated when the row is written" in repr(receipts[0].pk)
    assert unallocated(receipts[0].pk) and unallocated(receipts[1].number)
    with capture_queries() as queries:
        assert list(Receipt.objects.filter(pk=receipts[0].pk)) == []
    assert allocations(queries) == ["default"]  # The batch: both rows, both fields.
    assert all(isinstance(value, int) for r in receipts for value in (r.id, r.number))
    waiting = Receipt()
    waiting.pk = field.get_pk_value_on_save(waiting)
    assert model_to_dict(waiting)["id"] == str(waiting.id)
    # A value replaced meanwhile is left alone.
    replaced = Receipt()
    replaced.pk = field.get_pk_value_on_save(replaced)
    pending = replaced.pk
    replaced.pk = 5
    assert pending.resolve(None) != 5 and replaced.pk == 5
    assert pending.resolve(None) == pending.value  # Allocated once.
    given = Receipt(number=7)
    given.pk = field.get_pk_value_on_save(given)
    assert unallocated(given.pk) and given.number == 7


def test_a_row_with_an_id_given_gets_its_other_ids_when_written() -> None:
    (fleet_id,) = ids.new_ids(Receipt)
    receipt = Receipt(id=str(fleet_id))  # As a form or JSON would give it.
    with capture_queries() as queries:
        receipt.save()
    assert allocations(queries) == ["default"]  # For its number.
    assert receipt.id == fleet_id and isinstance(receipt.number, int)
    assert Receipt.objects.get(number=receipt.number) == receipt


def test_a_batch_still_to_come_belongs_to_its_thread() -> None:
    field = Receipt._meta.pk
    assert field is not None
    mine = Receipt()
    mine.pk = field.get_pk_value_on_save(mine)

    def other() -> int:
        theirs = Receipt()
        theirs.pk = field.get_pk_value_on_save(theirs)
        theirs.save()
        return int(theirs.pk)

    # Even in a copy of this thread's context, as asgiref's threads run in.
    context = contextvars.copy_context()
    with Threads([lambda: context.run(other)], DEADLINE) as threads:
        pass
    assert unallocated(mine.pk)  # Not allocated with the other thread's row.
    mine.save()
    assert mine.pk != threads.results[0]
    # A value to come can still be allocated in another thread (its batch is not that one's).
    late = Receipt()
    late.pk = field.get_pk_value_on_save(late)
    pending = late.pk
    with Threads([lambda: pending.resolve(None)], DEADLINE) as threads:
        pass
    assert late.pk == threads.results[0] and isinstance(late.pk, int)


# --- The field ----------------------------------------------------------------------------------


def test_the_field_deconstructs_and_reads_strings() -> None:
    field = Account._meta.get_field("id")
    assert field.deconstruct() == (
        "id",
        "dbfleet.FleetIdField",
        [],
        {"primary_key": True, "serialize": False},
    )
    assert field.to_python("123") == 123
    assert field.formfield() is None  # type: ignore[func-returns-value]
    number = Receipt._meta.get_field("number")
    assert number.deconstruct()[3] == {"unique": True}
    assert number.get_default() is None
    assert dbfleet.FleetIdField(default=4).get_default() == 4
    call_command("makemigrations", "shop", check=True, dry_run=True, verbosity=0)


def test_serializers_write_the_id_as_a_string_and_read_it_back(tmp_path: Path) -> None:
    receipt = Receipt.objects.create(note="json")
    (row,) = json.loads(serializers.serialize("json", [receipt]))
    assert row["pk"] == str(receipt.id) and row["fields"]["number"] == str(receipt.number)
    (restored,) = serializers.deserialize("json", serializers.serialize("json", [receipt]))
    assert isinstance(restored.object, Receipt)
    assert (restored.object.id, restored.object.number) == (receipt.id, receipt.number)
    assert model_to_dict(receipt)["number"] == str(receipt.number)
    fixture = tmp_path / "receipts.json"
    with fixture.open("w") as out:
        call_command("dumpdata", "shop.receipt", format="json", stdout=out)
    assert f'"pk": "{receipt.id}"' in fixture.read_text()
    Receipt.objects.all().delete()
    call_command("loaddata", str(fixture), verbosity=0)
    assert Receipt.objects.get(pk=receipt.id).number == receipt.number
    # A foreign key to a FleetIdField is Django's ForeignKey: its value stays a number.
    account = Account.objects.create(name="j")
    ticket = Ticket.objects.create(account=account, subject="s")
    (row,) = json.loads(serializers.serialize("json", [ticket]))
    assert row["pk"] == str(ticket.id) and row["fields"]["account"] == account.id
    (restored,) = serializers.deserialize("json", json.dumps([row]))
    assert isinstance(restored.object, Ticket)
    assert restored.object.id == ticket.id and restored.object.account_id == account.id


# --- Processes inserting at once ----------------------------------------------------------------

#: A process that inserts accounts and tickets into both shards: ``python -c WORKER CONFIG``.
WORKER = r"""
import json, os, sys, time
config = json.loads(sys.argv[1])
import django
from django.conf import settings
import tests.settings as base
options = {name: getattr(base, name) for name in dir(base) if name.isupper()}
options.update(DATABASES=config["databases"], DBFLEET=config["fleet"])
settings.configure(**options)
django.setup()
from django.db import connections
from dbfleet.sharding import ids
from tests.shop.models import Account, Ticket
if config["setup"]:
    for alias in config["shards"]:
        with connections[alias].schema_editor() as editor:
            editor.create_model(Account)
            editor.create_model(Ticket)
        ids.install(connections[alias])
    sys.exit(0)
open(os.path.join(config["directory"], f"ready-{config['index']}"), "w").close()
deadline = time.monotonic() + config["deadline"]
while not os.path.exists(os.path.join(config["directory"], "go")):
    if time.monotonic() > deadline:
        sys.exit("never told to go")
    time.sleep(0.005)
shards = config["shards"][config["index"] % 2:] + config["shards"][:config["index"] % 2]
# First ids alone, as fast as they come: every process at one counter at once.
made = [["id", i] for _ in range(config["ids"]) for i in ids.new_ids(Account, using="books")]
for round in range(config["rounds"]):
    for alias in shards:
        accounts = Account.objects.on_shard(alias).bulk_create(
            Account(name="bulk") for _ in range(config["batch"])
        )
        tickets = Ticket.objects.bulk_create(Ticket(account=a, subject="b") for a in accounts)
        account = Account.objects.create(name="one")
        ticket = Ticket.objects.create(account=account, subject="one")
        made += [["account", a.id] for a in [*accounts, account]]
        made += [["ticket", t.id] for t in [*tickets, ticket]]
print(json.dumps(made))
"""


def worker_databases(directory: Path) -> dict[str, Any]:
    """The test databases, for another process; SQLite's own files (its test ones are in memory)."""
    if ENGINES["books"] == "sqlite":
        return {
            alias: {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(directory / f"{alias}.sqlite3"),
                "OPTIONS": {"timeout": DEADLINE},
            }
            for alias in ("default", *SHARDS)
        }
    keys = ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS")
    return {
        alias: {key: connections[alias].settings_dict[key] for key in keys}
        for alias in ("default", *SHARDS)
    }


def start(config: dict[str, Any]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> str:
    try:
        out, err = process.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"a worker still ran after {DEADLINE:g} s:\n{err}") from None
    assert process.returncode == 0, err
    return out


def stored(directory: Path, alias: str, table: str) -> list[int]:
    if ENGINES["books"] == "sqlite":
        with sqlite3.connect(directory / f"{alias}.sqlite3") as connection:
            return [row[0] for row in connection.execute(f"SELECT id FROM {table}")]
    model = Account if table == "shop_account" else Ticket
    return list(model.objects.on_shard(alias).values_list("id", flat=True))


@pytest.mark.timeout(4 * DEADLINE)
def test_processes_inserting_at_once_into_both_shards_never_hand_out_an_id_twice(
    tmp_path: Path,
) -> None:
    workers, single, rounds, batch = 4, 3000, 8, 25
    config: dict[str, Any] = {
        "ids": single,
        "databases": worker_databases(tmp_path),
        "fleet": FLEET,
        "shards": list(SHARDS),
        "directory": str(tmp_path),
        "deadline": DEADLINE,
        "rounds": rounds,
        "batch": batch,
        "setup": False,
    }
    if ENGINES["books"] == "sqlite":
        finish(start({**config, "setup": True, "index": 0}))
    processes = [start({**config, "index": index}) for index in range(workers)]
    try:
        deadline = time.monotonic() + DEADLINE
        while len(list(tmp_path.glob("ready-*"))) < workers:
            failed = [p for p in processes if p.poll() is not None]
            assert not failed, failed[0].communicate()[1]
            assert time.monotonic() < deadline, "the workers did not start in time"
            time.sleep(0.01)
        (tmp_path / "go").touch()
        outputs = [finish(process) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    made = [row for output in outputs for row in json.loads(output)]
    per_kind = workers * rounds * len(SHARDS) * (batch + 1)
    assert len(made) == workers * single + 2 * per_kind
    assert len({fleet_id for _, fleet_id in made}) == len(made), "an id was handed out twice"
    for table, kind in (("shop_account", "account"), ("shop_ticket", "ticket")):
        found = {alias: stored(tmp_path, alias, table) for alias in SHARDS}
        assert sum(len(rows) for rows in found.values()) == per_kind
        assert sorted(i for rows in found.values() for i in rows) == sorted(
            fleet_id for row_kind, fleet_id in made if row_kind == kind
        )
        for alias, rows in found.items():  # Each row on the shard of its slot.
            assert {group().database_for_slot(slot_of_id(i)) for i in rows} <= {alias}
