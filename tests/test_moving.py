"""``fleet copy``: every engine pair of the configuration, refusals, a resume after SIGKILL.

``tests.moving``'s models are migrated on ``default``; their tables are made on
``books`` and ``loans`` here. Each ordered pair of the three aliases is a copy
between engines of the configuration (all six on one engine in the sqlite,
postgres and mysql configurations; PostgreSQL, MariaDB and SQLite in mixed).
"""

from __future__ import annotations

import datetime
import itertools
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections, models
from django.test import override_settings

from dbfleet.moving.copy import CHECKPOINTS, copy_models, read_checkpoint
from dbfleet.values import canonical
from tests.children import django_child, killed_and_run_again
from tests.moving.models import Item, Maker, Tag
from tests.settings import ENGINES

ALIASES = ("default", "books", "loans")
PAIRS = list(itertools.permutations(ALIASES, 2))
Through = Item.tags.through
MODELS: tuple[type[models.Model], ...] = (Maker, Tag, Item, Through)
#: Seconds a child process gets before the test fails.
DEADLINE = 60
pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)


@pytest.fixture(scope="module")
def tables(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    with django_db_blocker.unblock():
        for alias in ALIASES[1:]:
            with connections[alias].schema_editor() as editor:
                for model in (Maker, Tag, Item):
                    editor.create_model(model)
        yield
        for alias in ALIASES[1:]:
            # Makers and items point to each other: MariaDB drops neither first otherwise.
            with (
                connections[alias].constraint_checks_disabled(),
                connections[alias].schema_editor() as editor,
            ):
                for model in (Item, Tag, Maker):
                    editor.delete_model(model)


@pytest.fixture(autouse=True)
def empty(tables: None) -> Iterator[None]:
    yield
    for alias in ALIASES:
        delete_all(alias)
        with connections[alias].cursor() as cursor:
            if CHECKPOINTS in connections[alias].introspection.table_names(cursor):
                cursor.execute(f"DELETE FROM {CHECKPOINTS}")


def delete_all(alias: str) -> None:
    """Every row of the moving app on ``alias``, the cycle of makers and items cut first."""
    Maker.objects.using(alias).update(flagship=None)
    with connections[alias].constraint_checks_disabled():  # Items refer to items.
        for model in reversed(MODELS):
            model._base_manager.using(alias).all()._raw_delete(alias)


NAMES = ["tab\there", "new\nline", "back\\slash", "\\N", "", "été 東京 🎉", "'quoted' %s"]


def fill(alias: str, items: int = 40) -> None:
    """Makers, tags and items of every kind of value on ``alias``, some items tagged."""
    makers = Maker.objects.using(alias).bulk_create(Maker(name=f"m{i}") for i in range(3))
    tags = Tag.objects.using(alias).bulk_create(Tag(label=f"t{i}") for i in range(4))
    moment = datetime.datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=datetime.UTC)
    made = Item.objects.using(alias).bulk_create(
        Item(
            maker=makers[i % 3],
            name=NAMES[i % len(NAMES)] + str(i),
            price=Decimal(f"{(-1) ** i * i}.{i % 100:02d}"),
            made=None if i % 4 == 0 else moment + datetime.timedelta(days=i, microseconds=i),
            day=None if i % 5 == 0 else datetime.date(1900 + 7 * i % 400, 1 + i % 12, 1 + i % 28),
            token=None if i % 6 == 0 else uuid.UUID(int=2**128 - 1 - i),
            ready=bool(i % 2),
            ratio=(1e-300, -0.5, 1 / 3, None, 2.0**52)[i % 5],
            data=({"b": [1, "x"], "a": None}, [], None, {"n": i})[i % 4],
            note="n" * (i % 3) * 100,
        )
        for i in range(items)
    )
    for i, item in enumerate(made):
        # Parents before and after their children: a batch may come before its rows' parents.
        item.parent = made[(i + 7) % items] if i % 3 == 0 else None
        if i % 2:
            item.tags.set(tags[: 1 + i % 4])
    Item.objects.using(alias).bulk_update(made, ["parent"])
    for maker, item in zip(makers, made[-3:], strict=True):  # A cycle: makers <-> items.
        maker.flagship = item
    Maker.objects.using(alias).bulk_update(makers, ["flagship"])


def rows(alias: str, model: type[models.Model]) -> list[tuple[Any, ...]]:
    names = [field.attname for field in model._meta.local_concrete_fields]
    values = model._base_manager.using(alias).order_by("pk").values_list(*names)
    return [tuple(canonical(value) for value in row) for row in values]


def assert_same(source: str, target: str) -> None:
    for model in MODELS:
        expected = rows(source, model)
        assert expected, model
        assert rows(target, model) == expected, model._meta.label


def copy(*args: str) -> str:
    stdout = StringIO()
    call_command("fleet", "copy", *args, stdout=stdout, stderr=StringIO())
    return stdout.getvalue()


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_a_copy_between_two_databases_is_exact(source: str, target: str) -> None:
    fill(source)
    output = copy("moving", "--from", source, "--to", target, "--batch-size", "7")
    assert_same(source, target)
    assert "moving.Item" in output and "no save(), no signals" in output
    binary = ENGINES[source] == ENGINES[target] == "postgres"
    assert ("binary COPY" in output) == binary
    # Past the copied ids: the target's next ids do not collide.
    created = Maker.objects.using(target).create(name="after")
    assert created.pk > max(row[0] for row in rows(source, Maker))
    checkpoint = read_checkpoint(target, Item, source)
    assert checkpoint is not None and checkpoint[1] == 40


def test_a_target_with_rows_is_refused_unless_resume_or_replace() -> None:
    fill("default")
    copy("moving", "--from", "default", "--to", "books")
    with pytest.raises(CommandError, match=r"has rows of .*moving.Maker \(3 rows\).*--resume"):
        copy("moving", "--from", "default", "--to", "books")
    # Resumed after the end: the rows added since (by key) are copied, nothing twice.
    Maker.objects.using("default").create(name="later")
    report = copy_models(["moving"], "books", "default", resume=True)
    assert {copy.model: copy.rows for copy in report.models}["moving.Maker"] == 1
    assert_same("default", "books")
    # Replaced: emptied first, copied whole.
    Maker.objects.using("books").filter(name="later").update(name="changed there")
    report = copy_models(["moving"], "books", "default", replace=True)
    assert {copy.model: copy.rows for copy in report.models}["moving.Maker"] == 4
    assert_same("default", "books")
    # Emptied by hand since: --resume would skip what the checkpoint says is there.
    delete_all("books")
    with pytest.raises(CommandError, match="no longer there"):
        copy("moving", "--from", "default", "--to", "books", "--resume")
    copy("moving", "--from", "default", "--to", "books")  # Not resumed: everything again.
    assert_same("default", "books")
    # --replace of tags alone would leave the items' tag rows on books pointing nowhere.
    with pytest.raises(CommandError, match=r"Item_tags.tag -> moving.Tag"):
        copy("moving.Tag", "--from", "default", "--to", "books", "--replace")
    # Rows that fleet copy did not put there: no checkpoint to go on from.
    Tag.objects.using("loans").create(label="mine")
    with pytest.raises(CommandError, match="no checkpoint"):
        copy("moving.Tag", "--from", "default", "--to", "loans", "--resume")
    assert rows("loans", Tag) == [(Tag.objects.using("loans").get().pk, "mine")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["moving.Item", "--to", "books"], "moving.Item.maker refers to moving.Maker"),
        (["nope", "--to", "books"], "neither an installed app nor a model"),
        (["moving.Nope", "--to", "books"], "neither an installed app nor a model"),
        (["moving", "--to", "default"], "its source is 'default' already"),
        (["shop.TwinOrder", "--to", "books"], "missing on 'books'"),
        (["moving", "--to", "books", "--resume", "--replace"], "not allowed with argument"),
        (["moving", "--to", "books", "--batch-size", "0"], "invalid positive value"),
    ],
)
def test_what_fleet_copy_refuses_before_writing_anything(args: list[str], message: str) -> None:
    fill("default", items=5)
    with pytest.raises(CommandError, match=message):
        copy(*args)
    assert not Maker.objects.using("books").exists()


def test_json_reports_each_model() -> None:
    fill("default", items=5)
    report = json.loads(copy("moving", "--to", "loans", "--format", "json"))
    copied = {model["model"]: model["rows"] for model in report["models"]}
    assert copied == {
        "moving.Maker": 3,
        "moving.Tag": 4,
        "moving.Item": 5,
        "moving.Item_tags": len(rows("default", Through)),
    }
    assert report["target"] == "loans"


# --- fleet verify ---------------------------------------------------------------------------


def verify(*args: str) -> str:
    stdout = StringIO()
    call_command("fleet", "verify", *args, stdout=stdout, stderr=StringIO())
    return stdout.getvalue()


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_verify_finds_each_missing_extra_and_different_row_exactly(
    source: str, target: str
) -> None:
    fill(source)
    copy("moving", "--from", source, "--to", target)
    output = verify("moving", "--between", source, target)
    assert output.count(": the same") == len(MODELS), output
    keys = list(Item.objects.using(source).order_by("pk").values_list("pk", flat=True))
    # Item 2 has no tags and no children: deleting it changes no other row.
    Item.objects.using(target).filter(pk=keys[2]).delete()
    extra = Maker.objects.using(target).create(name="only there")
    # What the normal form must not hide: a trailing space (equal under MariaDB's
    # collation), a microsecond.
    spaced = Item.objects.using(target).get(pk=keys[5])
    Item.objects.using(target).filter(pk=keys[5]).update(name=spaced.name + " ")
    # A many-to-many row, named by the pair it links.
    pair = Through.objects.using(target).filter(item_id=keys[1]).order_by("tag_id").first()
    assert pair is not None
    pair.delete()
    # JSON true is not 1 (Python's == says it is).
    Item.objects.using(target).filter(pk=keys[4]).update(data={"b": [True, "x"], "a": None})
    moved = Item.objects.using(target).get(pk=keys[9])
    assert moved.made is not None
    later = moved.made + datetime.timedelta(microseconds=1)
    Item.objects.using(target).filter(pk=keys[9]).update(made=later)
    # ... and what it must: the same instant at another offset, a decimal's scale.
    Item.objects.using(target).filter(pk=keys[13]).update(
        made=Item.objects.using(source)
        .get(pk=keys[13])
        .made.astimezone(  # type: ignore[union-attr]
            datetime.timezone(datetime.timedelta(hours=-5))
        ),
        price=Decimal(str(Item.objects.using(source).get(pk=keys[13]).price) + "0"),
    )
    stdout = StringIO()
    with pytest.raises(
        CommandError, match="moving.Maker, moving.Item, moving.Item_tags differ"
    ) as raised:
        call_command(
            "fleet",
            "verify",
            "moving",
            "--between",
            source,
            target,
            "--format",
            "json",
            stdout=stdout,
        )
    assert raised.value.returncode == 1
    found = {model["model"]: model for model in json.loads(stdout.getvalue())["models"]}
    item, maker = found["moving.Item"], found["moving.Maker"]
    assert (item["missing"], item["extra"], item["missing_count"]) == ([keys[2]], [], 1)
    assert [(row["key"], row["columns"]) for row in item["different"]] == [
        (keys[4], ["data"]),
        (keys[5], ["name"]),
        (keys[9], ["made"]),
    ]
    assert item["different"][1]["second"] == [spaced.name + " "]
    assert (maker["extra"], maker["missing"], maker["different"]) == ([extra.pk], [], [])
    assert found["moving.Tag"]["different_count"] == 0
    assert found["moving.Item_tags"]["missing"] == [[keys[1], pair.tag_id]]
    text = StringIO()
    with pytest.raises(CommandError):
        call_command("fleet", "verify", "moving.Item", "--between", source, target, stdout=text)
    assert f"missing from {target}: {keys[2]}" in text.getvalue()


def test_decimals_keep_every_digit_in_normal_form() -> None:
    wide = Decimal("1234567890123456789012345678901.01")
    assert canonical(wide) != canonical(wide + Decimal("0.01"))
    assert canonical(Decimal("1.50")) == canonical(Decimal("1.5"))


def test_verify_refuses_one_database_twice() -> None:
    with pytest.raises(CommandError, match="names 'books' twice"):
        verify("moving", "--between", "books", "books")


# --- fleet dump / fleet load ---------------------------------------------------------------

#: The moving app on books, the suite's other routes as they are: none of it on default,
#: where dumpdata and loaddata look.
SUITE: dict[str, Any] = settings.DBFLEET
ROUTED = {
    **SUITE,
    "ROUTES": {
        **SUITE.get("ROUTES", {}),
        **{f"moving.{name}": "books" for name in ("Maker", "Item", "Tag")},
    },
}


@pytest.mark.parametrize("extension", [".json", ".jsonl", ".xml"])
def test_dump_then_load_round_trips_routed_models(extension: str, tmp_path: Path) -> None:
    fill("books")
    before = {model: rows("books", model) for model in MODELS}
    copy("moving", "--from", "books", "--to", "loans")  # To compare with after the load.
    fixture = str(tmp_path / f"fixture{extension}")
    with override_settings(DBFLEET=ROUTED):
        output = StringIO()
        call_command(
            "fleet", "dump", "moving", "--format", extension[1:], "-o", fixture, stdout=output
        )
        assert "moving.Item from books: 40" in output.getvalue()
        # Django's own dumpdata, of the database it is told: the routed models are not there.
        django_dump = StringIO()
        call_command("dumpdata", "moving", stdout=django_dump)
        assert json.loads(django_dump.getvalue()) == []
        delete_all("books")
        output = StringIO()
        call_command("fleet", "load", fixture, stdout=output)
        assert "moving.Item into books: 40" in output.getvalue()
    after = {model: rows("books", model) for model in MODELS}
    # A fixture has no many-to-many row ids: the pairs are what it keeps.
    pairs = [row[1:] for row in before.pop(Through)]
    assert [row[1:] for row in after.pop(Through)] == pairs
    assert after == before
    assert not Item.objects.using("default").exists()
    # fleet verify compares many-to-many rows by the pair they link, not by their new ids.
    assert verify("moving", "--between", "loans", "books").count(": the same") == len(MODELS)
    # Sequences past the loaded ids.
    assert Maker.objects.using("books").create(name="next").pk > max(r[0] for r in before[Maker])


def test_dump_of_everything_reads_each_model_where_it_lives(tmp_path: Path) -> None:
    fill("books", items=3)
    output = StringIO()
    with override_settings(DBFLEET=ROUTED):
        call_command("fleet", "dump", "-o", str(tmp_path / "all.json"), stdout=output)
    assert "moving.Item from books: 3" in output.getvalue()
    assert "contenttypes.ContentType from default" in output.getvalue()
    dumped = json.loads((tmp_path / "all.json").read_text())
    assert sum(row["model"] == "moving.item" for row in dumped) == 3


def test_a_failed_load_writes_nothing(tmp_path: Path) -> None:
    fixture = tmp_path / "bad.json"
    good = {"model": "moving.maker", "pk": 1, "fields": {"name": "kept?"}}
    bad = {"model": "moving.item", "pk": 1, "fields": {"maker": 1, "name": "x", "price": "oops"}}
    fixture.write_text(json.dumps([good, bad]))
    with override_settings(DBFLEET=ROUTED), pytest.raises(CommandError, match="bad.json"):
        call_command("fleet", "load", str(fixture), stdout=StringIO())
    assert not Maker.objects.using("books").exists()
    with pytest.raises(CommandError, match="No fixture file"):
        call_command("fleet", "load", str(tmp_path / "none.json"), stdout=StringIO())
    with pytest.raises(CommandError, match="reads a file by its extension"):
        call_command("fleet", "dump", "--format", "xml", "-o", str(tmp_path / "x.json"))
    assert not (tmp_path / "x.json").exists()
    # A dump that fails leaves the file that was there as it was.
    backup = tmp_path / "backup.json"
    backup.write_text("[]")
    with pytest.raises(CommandError, match="neither an installed app"):
        call_command("fleet", "dump", "nope", "-o", str(backup))
    assert backup.read_text() == "[]" and list(tmp_path.iterdir()) == [fixture, backup]
    # Many-to-many rows that point nowhere are found before anything commits.
    maker = {"model": "moving.maker", "pk": 1, "fields": {"name": "m", "flagship": None}}
    item = {
        "model": "moving.item",
        "pk": 1,
        "fields": {"maker": 1, "name": "x", "price": "1.00", "tags": [999]},
    }
    fixture.write_text(json.dumps([maker, item]))
    with override_settings(DBFLEET=ROUTED), pytest.raises(CommandError, match="constraint"):
        call_command("fleet", "load", str(fixture), stdout=StringIO())
    assert not Maker.objects.using("books").exists()


# --- Killed half-way ------------------------------------------------------------------------


def child_copy(*args: str) -> subprocess.Popen[str]:
    """``fleet copy`` in a process of its own, on this test run's databases."""
    databases = {alias: connections[alias].settings_dict for alias in ALIASES}
    return django_child("tests.moving.child_settings", databases, "fleet", "copy", *args)


@pytest.mark.skipif(
    "sqlite" in (ENGINES["default"], ENGINES["books"]),
    reason="an in-memory test database cannot be shared with another process",
)
@pytest.mark.timeout(6 * DEADLINE)
def test_a_copy_killed_at_random_moments_resumes_with_no_row_twice_and_none_missed() -> None:
    fill("default", items=3000)
    # Tags point to nothing: copied a batch at a time on every engine (on PostgreSQL the
    # items and makers, which point to each other, go in one transaction).
    Tag.objects.using("default").bulk_create(Tag(label=f"more {i}") for i in range(6000))
    partial = kill_and_resume("moving.Tag", lambda: Tag.objects.using("books").count())
    assert len(partial) == 3 and all(0 < count < 6004 for count in partial), partial
    kill_and_resume("moving", lambda: Item.objects.using("books").count())
    assert_same("default", "books")
    for model, rows in ((Item, 3000), (Tag, 6004)):
        checkpoint = read_checkpoint("books", model, "default")
        assert checkpoint is not None and checkpoint[1] == rows


def kill_and_resume(label: str, copied: Callable[[], int]) -> list[int]:
    """``fleet copy label`` killed (SIGKILL) up to 3 times at random, resumed until it ends;
    what ``copied()`` said after each kill."""
    # --resume from the start: on an empty target it starts at the first key.
    arguments = [label, "--from", "default", "--to", "books", "--batch-size", "50", "--resume"]
    # Killed after a random number of batches (each line: one committed), then a random
    # moment later, inside the next one.
    return killed_and_run_again(
        lambda: child_copy(*arguments, "-v", "2"), copied, lines=(2, 30), pause=0.01,
        deadline=DEADLINE,
    )  # fmt: skip
