"""``fleet move``: a move while a writer creates, updates and deletes rows, to the end.

The writer keeps a ledger of what committed; the target must hold exactly that
once the move is finished, and the source must refuse the writer from then on.
Between two servers the writer is a thread that never stops; where SQLite is one
side (an in-memory test database, which another connection cannot write at the
same time), it writes between the copy's batches and between the move's steps.
"""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connections, transaction
from django.db.migrations.recorder import MigrationRecorder
from django.test import override_settings

from dbfleet import vendors
from dbfleet.analytics import capture
from dbfleet.moving import move
from dbfleet.vendors.base import CHANGES, MOVES
from tests.children import django_child, killed_and_run_again
from tests.moving.models import Item, Maker, Tag
from tests.settings import ENGINES
from tests.test_moving import DEADLINE, PAIRS, delete_all, empty, fill, tables  # noqa: F401
from tests.threads import Threads

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)
Ledger = dict[int, tuple[str, frozenset[int]]]
Through = Item.tags.through


def routed(alias: str) -> Any:
    """The settings that route the moving app to ``alias``."""
    fleet: dict[str, Any] = settings.DBFLEET
    return override_settings(DBFLEET={**fleet, "ROUTES": {**fleet["ROUTES"], "moving": alias}})


def fleet_move(*args: str) -> str:
    stdout = StringIO()
    call_command("fleet", "move", *args, stdout=stdout, stderr=StringIO())
    return stdout.getvalue()


class Writer:
    """Creates, updates (name and tags) and deletes items on ``alias``, each in a
    transaction of its own; ``items`` is what committed."""

    def __init__(self, alias: str, seed: int) -> None:
        self.alias = alias
        self.chance = random.Random(seed)
        self.makers = list(Maker.objects.using(alias).values_list("pk", flat=True))
        self.tags = list(Tag.objects.using(alias).values_list("pk", flat=True))
        self.items = held(alias)
        self.writes = 0
        #: The error of the first write refused (the source fenced).
        self.refused: DatabaseError | None = None
        self.retried: list[DatabaseError] = []

    def write(self) -> bool:
        """One write; False once refused."""
        chance, items = self.chance, Item.objects.using(self.alias)
        what = chance.choice(("create", "create", "update", "delete")) if self.items else "create"
        name = f"w{self.writes}-{chance.randrange(10**6)}"
        tags = frozenset(chance.sample(self.tags, chance.randint(0, 2)))
        key = chance.choice(sorted(self.items)) if self.items else 0
        try:
            with transaction.atomic(using=self.alias):
                if what == "create":
                    key = items.create(maker_id=chance.choice(self.makers), name=name, price=1).pk
                elif what == "update":
                    items.filter(pk=key).update(name=name, price=Decimal("2.50"))
                else:
                    # As Django deletes an item: its tags' rows, then what points to it.
                    Through.objects.using(self.alias).filter(item_id=key).delete()
                    items.filter(parent_id=key).update(parent=None)
                    Maker.objects.using(self.alias).filter(flagship_id=key).update(flagship=None)
                    items.filter(pk=key).delete()
                if what != "delete":
                    Through.objects.using(self.alias).filter(item_id=key).delete()
                    Through.objects.using(self.alias).bulk_create(
                        Through(item_id=key, tag_id=tag) for tag in sorted(tags)
                    )
        except DatabaseError as error:
            if vendors.of(connections[self.alias]).is_retryable(error):
                # A deadlock (MariaDB's triggers being made, say): the transaction rolled
                # back whole, as an application that retries it sees it.
                self.retried.append(error)
                return True
            self.refused = error
            return False
        if what == "delete":
            del self.items[key]
        else:
            self.items[key] = (name, tags)
        self.writes += 1
        return True

    def wait_for(self, writes: int) -> None:
        """Until ``writes`` more writes committed (from another thread), or one was refused."""
        wanted, deadline = self.writes + writes, time.monotonic() + 30
        while self.writes < wanted and self.refused is None:
            assert time.monotonic() < deadline, f"{self.writes} writes, {wanted} awaited"
            time.sleep(0.005)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set() and self.write():
            time.sleep(0.001)


def held(alias: str) -> Ledger:
    """Each item on ``alias`` -> its name and tags."""
    tags: dict[int, set[int]] = {}
    for item, tag in Through.objects.using(alias).values_list("item_id", "tag_id"):
        tags.setdefault(item, set()).add(tag)
    return {
        pk: (name, frozenset(tags.get(pk, ())))
        for pk, name in Item.objects.using(alias).values_list("pk", "name")
    }


def tables_on(alias: str) -> set[str]:
    with connections[alias].cursor() as cursor:
        return set(connections[alias].introspection.table_names(cursor))


@pytest.fixture(autouse=True)
def no_moves(empty: None) -> Iterator[None]:  # noqa: F811
    """No move, capture or backup table is left for the next test."""
    yield
    for alias in ("default", "books", "loans"):
        connection = connections[alias]
        backups = [connection.ops.quote_name(t) for t in tables_on(alias) if "_moved_" in t]
        with connection.constraint_checks_disabled(), connection.cursor() as cursor:
            if backups and connection.vendor == "postgresql":
                cursor.execute(f"DROP TABLE {', '.join(backups)} CASCADE")
            elif backups:
                for table in backups:
                    cursor.execute(f"DROP TABLE {table}")
        recreated(alias)
        for table in ("moving_maker", "moving_item", "moving_tag", "moving_item_tags"):
            vendors.of(connection).unfence(connection, table)
        with connection.cursor() as cursor:
            for name in (MOVES, CHANGES):
                if name in tables_on(alias):
                    cursor.execute(f"DELETE FROM {name}")
        capture.install(connection, {})


def recreated(alias: str) -> None:
    """The moving app's tables again on ``alias`` (a finished move renamed them)."""
    missing = [m for m in (Maker, Tag, Item) if m._meta.db_table not in tables_on(alias)]
    with connections[alias].schema_editor() as editor:
        for model in missing:
            editor.create_model(model)


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
@pytest.mark.timeout(300)
def test_a_move_with_a_writer_running_throughout_loses_nothing(source: str, target: str) -> None:
    fill(source, items=120)
    writer = Writer(source, seed=hash((source, target)))
    if "sqlite" not in (ENGINES[source], ENGINES[target]):
        stop = threading.Event()
        with Threads([lambda: writer.run(stop)]):
            try:
                _move(source, target, between=lambda: writer.wait_for(3), during_copy=True)
            finally:
                stop.set()
    else:
        # Not during the copy: the writer would write in the copy's own transaction.
        _move(source, target, between=lambda: [writer.write() for _ in range(8)])
    # The source refuses the writer from the fence on, loudly.
    assert not writer.write()
    assert writer.refused is not None
    assert writer.writes >= 16, writer.refused
    assert held(target) == writer.items
    assert "moving_item" not in tables_on(source)
    (backup,) = [t for t in tables_on(source) if t.startswith("moving_item_moved_")]
    # The fence stays on the backup: a write there is refused with the reason.
    connection = connections[source]
    with (
        pytest.raises(DatabaseError, match=f"moving_item moved to {target}"),
        transaction.atomic(using=source),
        connection.cursor() as cursor,
    ):
        cursor.execute(f"DELETE FROM {connection.ops.quote_name(backup)}")
    assert capture.moving_from(connections[source]) == []
    assert not vendors.of(connections[source]).captured_tables(connections[source])


def _move(source: str, target: str, between: Any, during_copy: bool = False) -> None:
    """Start the move, follow, switch the routes, finish; ``between`` each step (and each
    batch of the copy, ``during_copy``)."""
    report = move.start(
        ["moving"], target, source, batch_size=16,
        progress=lambda copy: between() if during_copy else None,
    )  # fmt: skip
    assert report.move.phase == move.FOLLOWING and report.copy is not None
    between()
    again = move.start(["moving"], target, source, batch_size=16, progress=lambda copy: None)
    assert again.copy is None  # Copied already: only caught up.
    between()
    with routed(target):
        (finished,) = move.finish()
    assert finished.move.phase == "finished"
    assert finished.verify is not None and not finished.verify.differs


def test_abort_leaves_the_source_as_it_was_and_empties_the_target() -> None:
    fill("default", items=30)
    before = held("default")
    output = fleet_move("moving", "--to", "books", "--batch-size", "8")
    assert "Next: change ROUTES to send moving." in output and "--finish" in output
    Item.objects.using("default").filter(pk=min(before)).update(name="changed meanwhile")
    before[min(before)] = ("changed meanwhile", before[min(before)][1])
    (status,) = move.move_status()
    assert (status.phase, status.source, status.target) == ("following", "default", "books")
    assert status.backlog == 1 and status.lag is not None
    assert "moving.Item" in status.models and "moving.Item_tags" not in status.models
    text = StringIO()
    with contextlib.suppress(CommandError):  # Its exit code is of the rest of the fleet.
        call_command("fleet", "status", stdout=text, stderr=StringIO())
    assert "(moving default -> books): following; 1 changes not applied yet" in text.getvalue()
    with routed("books"), pytest.raises(CommandError, match="--abort empties its tables there"):
        fleet_move("--abort")
    output = fleet_move("--abort")
    assert "default is as it was" in output
    assert held("default") == before
    assert not Item.objects.using("books").exists() and not Maker.objects.using("books").exists()
    connection = connections["default"]
    assert not vendors.of(connection).captured_tables(connection)
    assert capture.moving_from(connection) == []
    with pytest.raises(CommandError, match="No move is in progress"):
        fleet_move("--finish")


def test_finish_is_refused_until_the_routes_send_the_models_to_the_target() -> None:
    fill("default", items=10)
    fleet_move("moving", "--to", "loans")
    with pytest.raises(CommandError, match=r"moving.Item is routed to 'default'.*ROUTES"):
        fleet_move("--finish")
    # Nothing was fenced: the application still writes.
    Item.objects.using("default").filter(
        pk=Item.objects.using("default").earliest("pk").pk
    ).delete()
    with pytest.raises(CommandError, match="in a move from 'default' to 'loans' already"):
        fleet_move("moving", "--to", "books")
    with routed("loans"):
        output = fleet_move("--finish")
    assert "refuse writes and are kept, renamed, as" in output
    assert Item.objects.using("loans").count() == 9


def test_a_row_changed_on_the_target_by_hand_stops_the_move_with_its_key() -> None:
    fill("default", items=10)
    fleet_move("moving", "--to", "books")
    changed = Item.objects.using("books").order_by("pk").first()
    assert changed is not None
    Item.objects.using("books").filter(pk=changed.pk).update(name="by hand")
    with pytest.raises(CommandError, match=rf"differ .* moving.Item {changed.pk}\b"):
        fleet_move("moving", "--to", "books")


def test_two_rows_that_swapped_a_unique_pair_are_caught_up() -> None:
    fill("default", items=10)
    tags = list(Tag.objects.using("default").values_list("pk", flat=True))
    item = Item.objects.using("default").order_by("pk").first()
    assert item is not None
    rows = Through.objects.using("default")
    rows.filter(item_id=item.pk).delete()
    first, second = rows.bulk_create(
        [Through(item_id=item.pk, tag_id=tags[0]), Through(item_id=item.pk, tag_id=tags[1])]
    )
    fleet_move("moving", "--to", "books")
    # The lower key takes the pair the higher one had, by way of a third tag.
    rows.filter(pk=first.pk).update(tag_id=tags[2])
    rows.filter(pk=second.pk).update(tag_id=tags[0])
    rows.filter(pk=first.pk).update(tag_id=tags[1])
    report = move.start(["moving"], "books", batch_size=100, progress=lambda copy: None)
    assert report.applied >= 2 and report.verify is not None and not report.verify.differs
    assert set(
        Through.objects.using("books").filter(item_id=item.pk).values_list("pk", "tag_id")
    ) == {
        (first.pk, tags[1]),
        (second.pk, tags[0]),
    }


def test_a_start_stopped_before_its_triggers_were_made_makes_them_when_run_again() -> None:
    fill("default", items=10)
    fleet_move("moving", "--to", "loans")
    # As a start killed right after it recorded the move: no triggers yet.
    connection = connections["default"]
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {MOVES} SET phase = 'copying'")
    capture.install(connection, {})
    assert not vendors.of(connection).captured_tables(connection)
    fleet_move("moving", "--to", "loans")
    Item.objects.using("default").filter(
        pk=Item.objects.using("default").earliest("pk").pk
    ).delete()
    Maker.objects.using("default").update(name="renamed")
    with routed("loans"):
        fleet_move("--finish")
    assert sorted(Maker.objects.using("loans").values_list("name", flat=True)) == ["renamed"] * 3
    assert Item.objects.using("loans").count() == 9


def test_a_finish_stopped_while_renaming_goes_on_and_cannot_be_aborted() -> None:
    fill("default", items=10)
    fleet_move("moving", "--to", "books")
    with routed("books"):
        (one,) = move.in_progress()
        # As a finish killed after it fenced, drained, compared and named the backups, and
        # renamed one table of four.
        connection = connections["default"]
        for model in one.models:
            vendors.of(connection).fence(connection, model._meta.db_table, "moved")
        backups = {model._meta.label: f"{model._meta.db_table}_moved_x" for model in one.models}
        move._set_phase(one, move.FINISHING, backups)
        with connection.schema_editor() as editor:
            editor.alter_db_table(Tag, "moving_tag", "moving_tag_moved_x")
        with pytest.raises(CommandError, match="was renaming the tables"):
            fleet_move("--abort")
        output = fleet_move("--finish")
    assert "`moving_item_moved_x`" in output
    assert {t for t in tables_on("default") if t.startswith("moving_")} == set(backups.values())
    assert capture.moving_from(connection) == []
    (status,) = move.move_status()
    assert status.phase == "finished" and status.backups == backups


@pytest.mark.skipif(
    "sqlite" in (ENGINES["default"],),
    reason="nothing else can open an in-memory test database: it takes no lock",
)
def test_one_command_at_a_time_catches_up_a_move() -> None:
    fill("default", items=5)
    fleet_move("moving", "--to", "books")
    held_lock, release = threading.Event(), threading.Event()

    def follower() -> None:
        with move.exclusive("default", "books"):
            held_lock.set()
            assert release.wait(30)

    with Threads([follower]):
        try:
            assert held_lock.wait(30)
            with routed("books"), pytest.raises(CommandError, match="Another fleet move"):
                fleet_move("--finish")
            with pytest.raises(CommandError, match="Another fleet move"):
                fleet_move("moving", "--to", "books")
        finally:
            release.set()
    assert move.in_progress()[0].phase == move.FOLLOWING


def test_the_tables_the_target_lacks_are_made_and_their_migrations_recorded() -> None:
    fill("default", items=10)
    connection = connections["loans"]
    with connection.constraint_checks_disabled(), connection.schema_editor() as editor:
        for model in (Item, Tag, Maker):
            editor.delete_model(model)
    recorder = MigrationRecorder(connection)
    recorder.migration_qs.filter(app="moving").delete()
    fleet_move("moving", "--to", "loans")
    assert {"moving_item", "moving_item_tags", "moving_maker", "moving_tag"} <= tables_on("loans")
    assert {("moving", "0001_initial"), ("moving", "0002_maker_flagship")} <= set(
        recorder.applied_migrations()
    )
    with routed("loans"):
        fleet_move("--finish")
        assert Item.objects.count() == 10


@pytest.mark.skipif(
    "sqlite" in (ENGINES["default"], ENGINES["books"]),
    reason="an in-memory test database cannot be shared with another process",
)
@pytest.mark.timeout(300)
def test_a_move_killed_at_random_moments_and_run_again_loses_nothing() -> None:
    fill("default", items=400)
    writer = Writer("default", seed=7)
    databases = {alias: connections[alias].settings_dict for alias in ("default", "books", "loans")}
    stop = threading.Event()
    with Threads([lambda: writer.run(stop)]):
        try:
            # Killed after a random number of the copy's batches, a moment later.
            kills = killed_and_run_again(
                lambda: django_child(
                    "tests.moving.child_settings", databases,
                    "fleet", "move", "moving", "--to", "books", "--batch-size", "20", "-v", "2",
                ),
                lambda: None, lines=(1, 40), pause=0.05, deadline=DEADLINE,
            )  # fmt: skip
            writer.wait_for(5)
            with routed("books"):
                move.finish()
        finally:
            stop.set()
    assert len(kills) == 3
    assert held("books") == writer.items


def test_an_abort_stopped_half_way_is_ended_by_running_it_again() -> None:
    fill("default", items=10)
    fleet_move("moving", "--to", "books")
    (one,) = move.in_progress()
    move._set_phase(one, "aborted")  # As an abort killed after its first step.
    with pytest.raises(CommandError, match="is being aborted") as refused:
        fleet_move("moving", "--to", "books")
    with routed("books"), pytest.raises(CommandError, match="is being aborted"):
        fleet_move("--finish")
    # As the refusal says.
    (advised,) = re.findall(r"`manage.py fleet move ([^`]*--abort)`", str(refused.value))
    fleet_move(*advised.split()[1:])
    assert not Item.objects.using("books").exists()
    assert move.move_status() == []


def test_a_missing_many_to_many_table_alone_is_made() -> None:
    fill("default", items=10)
    with connections["loans"].schema_editor() as editor:
        editor.delete_model(Through)
    fleet_move("moving", "--to", "loans")
    assert Through.objects.using("loans").count() == Through.objects.using("default").count() > 0


def test_a_target_with_rows_is_refused_with_the_comparison_to_make() -> None:
    fill("default", items=5)
    Tag.objects.using("books").create(label="already there")
    with pytest.raises(CommandError, match=r"moving.Tag \(1 rows\) already.*fleet verify mov"):
        fleet_move("moving", "--to", "books")
    assert move.move_status() == []
    assert not vendors.of(connections["default"]).captured_tables(connections["default"])


def test_rows_updated_one_by_one_where_a_delete_would_cascade_lose_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As for a model a database-level on_delete (Django 6's DB_CASCADE) points to.
    monkeypatch.setattr(move, "_rewritten", lambda model: False)
    fill("default", items=60)
    writer = Writer("default", seed=11)
    _move("default", "books", between=lambda: [writer.write() for _ in range(10)])
    assert held("books") == writer.items
