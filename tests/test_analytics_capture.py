"""Change capture on the source of a synced model: what its triggers log, on real engines.

Runs in every configuration but ``analytics`` (whose ClickHouse copies are tested
in tests/test_analytics_sync.py), on each engine the configuration has: the
PostgreSQL and MariaDB test databases themselves, and a SQLite file (not the
in-memory test database: a second connection to it, as another process would
open, must see only what the first committed). The source is a model of a
registry of its own, its table made here: nothing else in the suite sees it.

Each kind of write that a watermark on an ``auto_now`` column would miss has a
test that reads the log: without the triggers it is empty, and the test fails.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.apps.registry import Apps
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.utils import ConnectionHandler

from dbfleet import vendors
from dbfleet.analytics import capture
from dbfleet.analytics.sync import SyncLocked, sync_lock
from dbfleet.vendors.base import CHANGES, RELOAD
from tests.settings import ENGINES

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

ISOLATED = Apps()
COPY = "capture.itemfact"
OTHER_COPY = "capture.itemtotal"


class Item(models.Model):
    name = models.CharField(max_length=50)
    size = models.IntegerField(default=0)
    stamped = models.DateTimeField(auto_now=True)

    objects: models.Manager[Item] = models.Manager()

    class Meta:
        apps = ISOLATED
        app_label = "capture"
        db_table = "capture_item"


class Code(models.Model):
    """A text key."""

    code = models.CharField(max_length=20, primary_key=True)

    objects: models.Manager[Code] = models.Manager()

    class Meta:
        apps = ISOLATED
        app_label = "capture"
        db_table = "capture_code"


#: Each engine of this configuration once, by the first alias on it.
ALIASES = {engine: alias for alias, engine in reversed(list(ENGINES.items()))}


def register(alias: str, settings_dict: dict[str, Any]) -> BaseDatabaseWrapper:
    """A database ``alias`` for this thread's ``connections``, outside the settings."""
    connection = ConnectionHandler({"default": {}, alias: settings_dict})[alias]
    connections[alias] = connection
    return connection


@pytest.fixture(params=sorted(ALIASES))
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An alias on one engine, with ``Item`` and ``Code`` captured for ``COPY``, the log empty."""
    engine = request.param
    alias = ALIASES[engine]
    if engine == "sqlite":
        alias = "capture_file"
        register(alias, {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "c.db")})
    connection = connections[alias]
    with connection.schema_editor() as editor:
        editor.create_model(Item)
        editor.create_model(Code)
    try:
        assert capture.install(connection, {Item: [COPY], Code: [COPY]}) == [COPY, COPY]
        clear(alias)
        yield alias
    finally:
        capture.uninstall(connection, [Item, Code])
        with connection.schema_editor() as editor:
            editor.delete_model(Item)
            editor.delete_model(Code)
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {CHANGES}")
        if alias == "capture_file":
            connection.close()
            del connections[alias]


def clear(alias: str) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute(f"DELETE FROM {CHANGES}")


def log(alias: str, label: str = COPY) -> list[tuple[str | None, str]]:
    """(key, operation) of each change logged for ``label``, in the order logged."""
    return [(c.pk, c.op) for c in capture.pending(connections[alias], label, 10_000)]


def keys(alias: str, model: type[models.Model] = Item) -> list[str]:
    return [str(pk) for pk in model._default_manager.db_manager(alias).values_list("pk", flat=True)]


def test_save_logs_the_insert_then_the_update(db: str) -> None:
    item = Item(name="a")
    item.save(using=db)
    assert log(db) == [(str(item.pk), "I")]
    item.name = "b"
    item.save(using=db)
    assert log(db) == [(str(item.pk), "I"), (str(item.pk), "U")]


def test_bulk_create_logs_every_row(db: str) -> None:
    Item.objects.db_manager(db).bulk_create([Item(name=f"n{i}") for i in range(3)])
    assert sorted(log(db)) == sorted((pk, "I") for pk in keys(db))
    assert len(log(db)) == 3


def test_queryset_update_is_logged_though_it_leaves_auto_now_alone(db: str) -> None:
    item = Item.objects.db_manager(db).create(name="a")
    clear(db)
    Item.objects.db_manager(db).filter(pk=item.pk).update(size=5)
    # What a watermark on `stamped` (auto_now) would miss: the row changed, its time did not.
    assert Item.objects.db_manager(db).get(pk=item.pk).stamped == item.stamped
    assert log(db) == [(str(item.pk), "U")]


def test_bulk_update_logs_every_row(db: str) -> None:
    manager = Item.objects.db_manager(db)
    items = manager.bulk_create([Item(name=f"n{i}") for i in range(3)])
    items = list(manager.order_by("pk"))
    clear(db)
    for item in items:
        item.size = 7
    manager.bulk_update(items, ["size"])
    assert sorted(log(db)) == sorted((str(item.pk), "U") for item in items)


def test_raw_sql_is_logged(db: str) -> None:
    connection = connections[db]
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO capture_item (name, size, stamped) VALUES (%s, %s, %s)",
            ("raw", 1, "2024-05-01 00:00:00"),
        )
        (pk,) = keys(db)
        cursor.execute(f"UPDATE capture_item SET size = 2 WHERE {quote('id')} = %s", (pk,))
        cursor.execute(f"DELETE FROM capture_item WHERE {quote('id')} = %s", (pk,))
    assert log(db) == [(pk, "I"), (pk, "U"), (pk, "D")]


def test_delete_and_queryset_delete_are_logged(db: str) -> None:
    manager = Item.objects.db_manager(db)
    manager.bulk_create([Item(name=f"n{i}") for i in range(3)])
    first, *rest = keys(db)
    clear(db)
    manager.get(pk=first).delete()
    assert log(db) == [(first, "D")]
    manager.filter(pk__in=rest).delete()
    assert sorted(log(db)[1:]) == sorted((pk, "D") for pk in rest)


def test_a_changed_key_logs_the_old_key_and_the_new(db: str) -> None:
    Code.objects.db_manager(db).create(code="old")
    clear(db)
    Code.objects.db_manager(db).filter(code="old").update(code="new")
    assert sorted(log(db)) == [("new", "U"), ("old", "U")]


def test_a_text_key_is_logged_as_it_is(db: str) -> None:
    Code.objects.db_manager(db).create(code="K-1 'x'")
    assert log(db) == [("K-1 'x'", "I")]


def test_a_rolled_back_transaction_leaves_nothing_in_the_log(db: str) -> None:
    with pytest.raises(RuntimeError), transaction.atomic(using=db):
        Item.objects.db_manager(db).create(name="gone")
        assert log(db) == [(keys(db)[0], "I")]  # Its own transaction sees it.
        raise RuntimeError
    assert log(db) == []


def test_a_transaction_that_commits_late_is_in_the_log_when_it_commits(db: str) -> None:
    """What a watermark misses: changes made before the last sync and committed after it."""
    other = connections.create_connection(db) if db != "capture_file" else None
    if other is None:
        other = ConnectionHandler({"default": {}, db: connections[db].settings_dict})[db]
    try:
        other.ensure_connection()
        other.set_autocommit(False)
        with other.cursor() as cursor:  # Begun long ago, still open.
            cursor.execute(
                "INSERT INTO capture_item (name, size, stamped) VALUES (%s, %s, %s)",
                ("late", 1, "2024-05-01 00:00:00"),
            )
        # A sync now takes what is committed (nothing: the late row is not), and consumes it.
        assert log(db) == []
        capture.consume(connections[db], capture.pending(connections[db], COPY, 100))
        other.commit()
        (pk,) = keys(db)
        assert log(db) == [(pk, "I")]  # The next sync finds it.
    finally:
        other.close()


def test_install_is_idempotent_and_asks_for_a_full_load_only_where_capture_was_missing(
    db: str,
) -> None:
    connection = connections[db]
    vendor = vendors.of(connection)
    # As the engine keeps the triggers, so they are compared: nothing is installed again.
    assert vendor.captured_tables(connection) == {
        "capture_item": vendor.capture_definition(connection, "capture_item", "id", [COPY]),
        "capture_code": vendor.capture_definition(connection, "capture_code", "code", [COPY]),
    }
    assert capture.install(connection, {Item: [COPY], Code: [COPY]}) == []
    assert log(db) == []
    # A second copy of Item: a load for it, none for the copy whose triggers logged all along.
    assert capture.install(connection, {Item: [COPY, OTHER_COPY], Code: [COPY]}) == [OTHER_COPY]
    assert log(db) == [] and log(db, OTHER_COPY) == [(None, RELOAD)]
    Item.objects.db_manager(db).create(name="a")
    assert log(db) == [(keys(db)[0], "I")]
    assert log(db, OTHER_COPY) == [(None, RELOAD), (keys(db)[0], "I")]
    # Triggers gone (a table rebuilt without them): changes were missed, so a full load.
    capture.uninstall(connection, [Code])
    assert capture.install(connection, {Item: [COPY, OTHER_COPY], Code: [COPY]}) == [COPY]
    assert log(db)[-1] == (None, RELOAD)


def test_install_drops_the_capture_of_a_table_without_copies(db: str) -> None:
    connection = connections[db]
    assert capture.install(connection, {Item: [COPY]}) == []
    assert set(vendors.of(connection).captured_tables(connection)) == {"capture_item"}
    Code.objects.db_manager(db).create(code="a")
    assert log(db) == []
    capture.install(connection, {})
    assert vendors.of(connection).captured_tables(connection) == {}
    Item.objects.db_manager(db).create(name="a")
    assert log(db) == []


def test_a_table_rebuilt_by_a_migration_gets_its_capture_back(db: str) -> None:
    connection = connections[db]
    old = Item._meta.get_field("size")
    new = models.BigIntegerField(default=0)
    new.set_attributes_from_name("size")
    new.model = Item
    with connection.schema_editor() as editor:
        editor.alter_field(Item, old, new)
    # SQLite rebuilds the table (its triggers go with it); the others alter it in place.
    rebuilt = capture.install(connection, {Item: [COPY], Code: [COPY]})
    assert rebuilt == ([COPY] if vendors.of(connection).name == "sqlite" else [])
    Item.objects.db_manager(db).create(name="a")
    assert log(db)[-1] == (keys(db)[0], "I")


def test_truncate_asks_for_a_full_load_where_it_fires_triggers(db: str) -> None:
    connection = connections[db]
    if vendors.of(connection).name != "postgresql":
        pytest.skip("only PostgreSQL has TRUNCATE triggers (SQLite has no TRUNCATE)")
    Item.objects.db_manager(db).create(name="a")
    clear(db)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE capture_item")
    assert log(db) == [(None, RELOAD)]


def test_the_log_says_how_many_changes_wait_and_since_when(db: str) -> None:
    connection = connections[db]
    assert capture.backlog(connection, COPY) == (0, None)
    Item.objects.db_manager(db).bulk_create([Item(name="a"), Item(name="b")])
    count, oldest = capture.backlog(connection, COPY)
    assert count == 2 and oldest is not None
    assert capture.drain(connection, COPY) == 2
    assert capture.backlog(connection, COPY) == (0, None)
    assert capture.is_installed(connection)


def test_one_sync_of_a_copy_at_a_time(db: str) -> None:
    with sync_lock(db, COPY):
        refused = pytest.raises(SyncLocked, match="Another sync of capture.itemfact is running")
        with refused as e, sync_lock(db, COPY):
            pass  # pragma: no cover
        assert isinstance(e.value, CommandError)
        assert e.value.returncode == 75
        with sync_lock(db, OTHER_COPY):  # Another copy: its own lock.
            pass
    with sync_lock(db, COPY):  # Released.
        pass


def test_the_lock_is_held_by_a_session_of_its_own(db: str) -> None:
    """A thread of the same process is refused too (another connection, another session)."""
    refused: list[BaseException] = []

    settings_dict = connections[db].settings_dict

    def second() -> None:
        if db == "capture_file":  # Registered in the test's thread only.
            register(db, settings_dict)
        try:
            with sync_lock(db, COPY):
                pass  # pragma: no cover
        except SyncLocked as error:
            refused.append(error)
        finally:
            connections.close_all()

    with sync_lock(db, COPY):
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(30)
    assert len(refused) == 1


def test_after_migrate_without_synced_models_nothing_is_installed(db: str) -> None:
    connection = connections[db]
    capture.uninstall(connection, [Item, Code])
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {CHANGES}")
    capture.install_after_migrate(None, using=db)
    assert not capture.is_installed(connection)


def test_without_synced_models_fleet_sync_says_how_to_declare_one() -> None:
    out = StringIO()
    call_command("fleet", "sync", stdout=out)
    assert out.getvalue().startswith("No synced models: declare one with ")
    call_command("fleet", "sync", "--check", stdout=out)
    with pytest.raises(CommandError, match="'shop.Order' is not a synced model; the synced models"):
        call_command("fleet", "sync", "shop.Order")
