"""dbfleet's migrate worker against Django's ``migrate``, on real databases.

Two sets of the fleet's databases (SQLite files, or ``<prefix>_dj_*`` and
``<prefix>_wk_*`` on the servers) are migrated, one by ``python -m django migrate
--database X`` and one by ``python -m dbfleet.migrating.worker --database X``,
each in its own process as ``fleet migrate`` starts them; then everything
Django's introspection sees in each database (tables, columns, constraints and
indexes), the ``django_migrations`` rows, the rows migrations and
``post_migrate`` write, and the arguments ``pre_migrate``/``post_migrate``
received must be equal. The project is the test project plus
``tests.migration_cases.speedapp`` (routed to ``books``), whose migrations use
most of Django's operations, a squashed migration and an operation class of its own.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import django
import pytest
from django.core.management import call_command
from django.core.management.commands import migrate
from django.db.migrations.state import ProjectState
from django.db.utils import ConnectionHandler

from dbfleet.migrating import internals
from dbfleet.migrating.runner import worker_command
from dbfleet.migrating.worker import PROGRESS, worker_class
from tests.fleet_settings import PREFIX
from tests.servers import recreate
from tests.settings import ENGINES, database

ROOT = Path(__file__).resolve().parent.parent
ALIASES = ("default", "books", "loans")
SERVERS = {alias: engine for alias, engine in ENGINES.items() if engine != "sqlite"}
SPEEDAPP = "tests.migration_cases.speedapp=books"
WORKER = ("-m", "dbfleet.migrating.worker")
DJANGO = ("-m", "django", "migrate")
#: Every subprocess here starts Django and migrates: several of them per test.
pytestmark = pytest.mark.timeout(600)


@dataclass
class Fleet:
    """One set of databases (``prefix``), and the commands run on them."""

    directory: Path
    prefix: str
    blocker: Any
    outputs: list[str] = field(default_factory=list)

    def run(self, *args: str, signals: str = "signals", **env: str) -> str:
        """``python *args`` with the fleet's settings; the output; fail if it fails."""
        environment = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.fleet_settings",
            "DBFLEET_FLEET_DIR": str(self.directory),
            "DBFLEET_FLEET_PREFIX": self.prefix,
            "DBFLEET_FLEET_APPS": SPEEDAPP,
            "DBFLEET_SPEED_SIGNALS": str(self.directory / f"{signals}.jsonl"),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            "PYTHONWARNINGS": "error::DeprecationWarning",
            **env,
        }
        finished = subprocess.run(
            [sys.executable, *args],
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        output = finished.stdout + finished.stderr
        assert finished.returncode == 0, f"{' '.join(args)}:\n{output}"
        self.outputs.append(output)
        return output

    def migrate_each(
        self, command: tuple[str, ...], *options: str, signals: str = "signals"
    ) -> None:
        for alias in ALIASES:
            self.run(*command, "--database", alias, "--noinput", *options, signals=signals)

    def signals(self, name: str = "signals") -> list[dict[str, Any]]:
        path = self.directory / f"{name}.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines]

    def connections(self) -> ConnectionHandler:
        return ConnectionHandler(
            {alias: database(alias, self.prefix, str(self.directory)) for alias in ALIASES}
        )

    def inspect(self) -> dict[str, dict[str, Any]]:
        """Per database: each table's columns and constraints, the records, the rows made."""
        handler = self.connections()
        found: dict[str, dict[str, Any]] = {}
        with self.blocker.unblock():
            for alias in ALIASES:
                connection = handler[alias]
                introspection = connection.introspection
                with connection.cursor() as cursor:
                    tables = {
                        table: {
                            "columns": [
                                tuple(column)
                                for column in introspection.get_table_description(cursor, table)
                            ],
                            "constraints": introspection.get_constraints(cursor, table),
                        }
                        for table in introspection.table_names(cursor)
                    }
                    cursor.execute("SELECT app, name FROM django_migrations")
                    recorded = set(cursor.fetchall())
                    rows = {}
                    for table, query in {
                        "speedapp_shelf": "SELECT name FROM speedapp_shelf",
                        "django_content_type": "SELECT app_label, model FROM django_content_type",
                        "auth_permission": "SELECT p.codename, t.app_label FROM auth_permission p "
                        "JOIN django_content_type t ON t.id = p.content_type_id",
                    }.items():
                        if table in tables:
                            cursor.execute(query)
                            rows[table] = sorted(cursor.fetchall())
                found[alias] = {"tables": tables, "recorded": recorded, "rows": rows}
                connection.close()
        return found

    def forget(self, app_label: str) -> None:
        """Delete an app's migration records everywhere (its tables stay)."""
        handler = self.connections()
        with self.blocker.unblock():
            for alias in ALIASES:
                with handler[alias].cursor() as cursor:
                    cursor.execute("DELETE FROM django_migrations WHERE app = %s", [app_label])
                handler[alias].close()


def fresh_fleet(directory: Path, blocker: Any, prefix: str) -> Iterator[Fleet]:
    for alias, engine in SERVERS.items():
        recreate(engine, f"{prefix}_{alias}")
    directory.mkdir(parents=True, exist_ok=True)
    yield Fleet(directory, prefix, blocker)
    for alias, engine in SERVERS.items():
        recreate(engine, f"{prefix}_{alias}", create=False)


def without_pid(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in entry.items() if key != "pid"} for entry in entries]


@dataclass
class Pair:
    """The same project migrated by Django (``django``) and by the worker (``worker``)."""

    django: Fleet
    worker: Fleet
    migrated: tuple[dict[str, Any], dict[str, Any]]
    fleet_output: str
    faked_initial: tuple[dict[str, Any], dict[str, Any]]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, django_db_blocker: Any) -> Iterator[Pair]:
    """Both sets migrated, then migrated again with nothing to apply, then ``--fake-initial``.

    What each step left is read in between: the tests only compare.
    """
    base = tmp_path_factory.mktemp("worker")
    django_fleets = fresh_fleet(base / "django", django_db_blocker, f"{PREFIX}_dj")
    worker_fleets = fresh_fleet(base / "worker", django_db_blocker, f"{PREFIX}_wk")
    by_django, by_worker = next(django_fleets), next(worker_fleets)
    try:
        by_django.migrate_each(DJANGO)
        by_worker.migrate_each(WORKER, "--progress")
        migrated = by_django.inspect(), by_worker.inspect()
        # Nothing to apply: Django's migrate again, and `fleet migrate`, which then starts
        # no worker and sends the signals itself.
        by_django.migrate_each(DJANGO, signals="again")
        fleet_output = by_worker.run("-m", "django", "fleet", "migrate", signals="again")
        # bank has one (initial) migration; its tables exist: --fake-initial fakes it there.
        for fleet in (by_django, by_worker):
            fleet.forget("bank")
        by_django.migrate_each(DJANGO, "--fake-initial", signals="fake_initial")
        by_worker.migrate_each(WORKER, "--fake-initial", signals="fake_initial")
        faked_initial = by_django.inspect(), by_worker.inspect()
        yield Pair(by_django, by_worker, migrated, fleet_output, faked_initial)
    finally:
        for fleets in (django_fleets, worker_fleets):
            next(fleets, None)


def assert_same(by_django: dict[str, Any], by_worker: dict[str, Any]) -> None:
    for alias in ALIASES:
        django_db, worker_db = by_django[alias], by_worker[alias]
        assert sorted(worker_db["tables"]) == sorted(django_db["tables"]), alias
        for table, described in django_db["tables"].items():
            assert worker_db["tables"][table] == described, f"{alias}: {table}"
        assert worker_db["recorded"] == django_db["recorded"], alias
        assert worker_db["rows"] == django_db["rows"], alias


def test_same_schema_records_and_rows_as_django(pair: Pair) -> None:
    by_django, by_worker = pair.migrated
    assert_same(by_django, by_worker)
    # The comparison sees what it should: each database got its own part.
    books = by_worker["books"]
    assert {"speedapp_shelf", "speedapp_article", "library_book"} <= set(books["tables"])
    assert "speedapp_shelf" not in by_worker["default"]["tables"]
    assert "note" in {column[0] for column in books["tables"]["speedapp_shelf"]["columns"]}
    constraints = books["tables"]["speedapp_article"]["constraints"]
    assert "speedapp_title_idx" in constraints
    assert books["rows"]["speedapp_shelf"] == [("first",)]
    # A squashed migration: recorded with the migrations it replaces, as Django does.
    for alias in ALIASES:
        assert {
            ("speedapp", "0002_item_code"),
            ("speedapp", "0003_item_count"),
            ("speedapp", "0002_squashed_0003_item_count"),
        } <= by_worker[alias]["recorded"]
    permissions = by_worker["default"]["rows"]["auth_permission"]
    assert ("view_shelf", "speedapp") in permissions
    assert ("add_article", "speedapp") in permissions


def test_same_signals_as_django(pair: Pair) -> None:
    sent = without_pid(pair.worker.signals())
    assert sent == without_pid(pair.django.signals())
    assert [(entry["signal"], entry["using"]) for entry in sent] == [
        (signal, alias) for alias in ALIASES for signal in ("pre_migrate", "post_migrate")
    ]
    post = sent[1]
    assert "speedapp.article" in post["models"]
    assert ["speedapp.0002_squashed_0003_item_count", False] in post["plan"]


def test_up_to_date_databases_get_the_signals_too(pair: Pair) -> None:
    sent = pair.worker.signals("again")
    assert without_pid(sent) == without_pid(pair.django.signals("again"))
    assert [(entry["signal"], entry["using"], entry["plan"]) for entry in sent] == [
        (signal, alias, []) for alias in ALIASES for signal in ("pre_migrate", "post_migrate")
    ]
    # All from fleet migrate's own process: no worker was started.
    assert len({entry["pid"] for entry in sent}) == 1
    for alias in ALIASES:
        assert f"up to date {alias}" in pair.fleet_output


def test_fake_initial_as_django(pair: Pair) -> None:
    by_django, by_worker = pair.faked_initial
    assert_same(by_django, by_worker)
    for alias in ALIASES:
        assert ("bank", "0001_initial") in by_worker[alias]["recorded"]
    assert without_pid(pair.worker.signals("fake_initial")) == without_pid(
        pair.django.signals("fake_initial")
    )
    assert "Applying bank.0001_initial... FAKED" in "".join(pair.worker.outputs[-3:])


def test_progress_lines(pair: Pair) -> None:
    output = pair.worker.outputs[len(ALIASES) - 1]  # loans, the last one migrated
    lines = [line for line in output.splitlines() if line.startswith(PROGRESS)]
    applying = [line for line in output.splitlines() if line.strip().startswith("Applying")]
    pending = len(applying)
    assert pending > 20
    expected = [f"{PROGRESS} 0/{pending}"]
    for done, line in enumerate(applying):
        name = line.split()[1].rstrip(".")
        expected += [f"{PROGRESS} {done}/{pending} {name}", f"{PROGRESS} {done + 1}/{pending}"]
    assert lines == expected


def test_fake_as_django(tmp_path: Path, django_db_blocker: Any) -> None:
    fleets = [
        fresh_fleet(tmp_path / name, django_db_blocker, f"{PREFIX}_{name}")
        for name in ("djf", "wkf")
    ]
    by_django, by_worker = (next(fleets[0]), next(fleets[1]))
    try:
        by_django.migrate_each(DJANGO, "--fake")
        by_worker.migrate_each(WORKER, "--fake")
        assert_same(by_django.inspect(), by_worker.inspect())
        assert without_pid(by_worker.signals()) == without_pid(by_django.signals())
        assert set(by_worker.inspect()["books"]["tables"]) == {"django_migrations"}
    finally:
        for fleets_ in fleets:
            next(fleets_, None)


#: Runs ``migrate`` on one database with ModelState.render counted, per migration applied.
COUNT_RENDERS = textwrap.dedent(
    """
    import json, sys

    import django

    django.setup()
    from django.core.management import call_command
    from django.core.management.commands import migrate
    from django.db.migrations.state import ModelState

    from dbfleet.migrating.worker import worker_class

    renders = 0
    render = ModelState.render


    def counted(self, apps):
        global renders
        renders += 1
        return render(self, apps)


    ModelState.render = counted
    per_migration = {}
    base = worker_class(migrate.Command) if sys.argv[1] == "worker" else migrate.Command


    class Counting(base):
        def migration_progress_callback(self, action, migration=None, fake=False):
            if action == "apply_start":
                self.before = renders
            elif action == "apply_success":
                label = f"{migration.app_label}.{migration.name}"
                per_migration[label] = renders - self.before
            super().migration_progress_callback(action, migration, fake)


    call_command(Counting(), database=sys.argv[2], verbosity=0, interactive=False)
    print(json.dumps({"renders": renders, "per_migration": per_migration}))
    """
)


def test_migrations_routed_elsewhere_are_recorded_without_rendering(
    tmp_path: Path, django_db_blocker: Any
) -> None:
    fleets = [
        fresh_fleet(tmp_path / name, django_db_blocker, f"{PREFIX}_{name}")
        for name in ("djr", "wkr")
    ]
    by_django, by_worker = (next(fleets[0]), next(fleets[1]))
    try:
        stock = json.loads(by_django.run("-c", COUNT_RENDERS, "django", "loans").splitlines()[-1])
        fast = json.loads(by_worker.run("-c", COUNT_RENDERS, "worker", "loans").splitlines()[-1])
    finally:
        for fleets_ in fleets:
            next(fleets_, None)
    assert list(fast["per_migration"]) == list(stock["per_migration"])
    # Django renders models for migrations whose every operation it then skips here...
    assert stock["per_migration"]["library.0001_initial"] > 0
    assert stock["per_migration"]["speedapp.0001_initial"] > 0
    # ...the worker none, except where something runs: loans' own migrations, and the
    # project's own operation class, which it cannot know to be harmless.
    runs_here = {"loans.0001_initial", "loans.0002_favourite", "speedapp.0007_custom"}
    for label, renders in fast["per_migration"].items():
        if label in runs_here:
            continue
        assert renders == 0, label
    assert fast["per_migration"]["loans.0002_favourite"] > 0
    assert fast["renders"] < stock["renders"] / 2


def test_internals_are_the_ones_vetted() -> None:
    """Fails when this Django's migrate internals differ from those the worker was built on.

    Read the functions named against dbfleet/migrating/internals.py (and the
    worker), adapt them if needed, then add this version's fingerprints to VETTED:
    ``python -c 'from dbfleet.migrating import internals as i; print({i.key(m, q):
    i.fingerprint(m, q) for m, q in i.MIRRORED})'`` (with Django set up).
    """
    assert internals.changed() == (), (
        f"Django {django.get_version()}: the worker runs Django's migrate unchanged "
        f"(slowly) until these are read again: {internals.changed()}"
    )


def test_internals_behave_as_relied_on() -> None:
    state = ProjectState()
    assert not internals.is_rendered(state)
    state.apps  # noqa: B018
    assert internals.is_rendered(state)
    internals.drop_rendered(state)
    assert not internals.is_rendered(state)
    from django.core.management.commands import migrate as migrate_module

    with internals.fast_executor(lambda migration: True, lambda migration: False):
        executor = migrate_module.MigrationExecutor  # type: ignore[attr-defined]
        assert issubclass(executor, internals.FleetExecutor)
    assert migrate_module.MigrationExecutor is not executor  # type: ignore[attr-defined]


def test_fingerprints_ignore_comments_and_see_code(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    versions = {
        "speed_a": "class C:\n    def f(self, x):\n        '''Doc.'''\n        return x + 1\n",
        "speed_b": "class C:\n    def f(self, x):  # a comment\n\n        return (x\n + 1)\n",
        "speed_c": "class C:\n    def f(self, x):\n        return x + 2\n",
    }
    for name, source in versions.items():
        (tmp_path / f"{name}.py").write_text(source)
    prints = {name: internals.fingerprint(name, "C.f") for name in versions}
    assert prints["speed_a"] == prints["speed_b"] != prints["speed_c"]


@pytest.mark.django_db(databases=["default"])
def test_unvetted_django_runs_its_migrate_unchanged(monkeypatch: Any) -> None:
    monkeypatch.setitem(internals.VETTED, internals.feature_version(), {})
    internals.changed.cache_clear()
    out = io.StringIO()
    try:
        call_command(worker_class(migrate.Command)(), database="default", stdout=out)
    finally:
        internals.changed.cache_clear()
    assert "not vetted for dbfleet's worker" in out.getvalue()
    assert "No migrations to apply." in out.getvalue()


def test_worker_command() -> None:
    command = worker_command(
        "books",
        fake=True,
        verbosity=2,
        skip_checks=True,
        fake_initial=True,
        progress=True,
        checked=True,
    )
    assert command == [
        sys.executable, "-m", "dbfleet.migrating.worker", "--database", "books", "--noinput",
        "--verbosity", "2", "--fake", "--fake-initial", "--skip-checks",
        "--database-checks-only", "--internals-vetted", "--progress",
    ]  # fmt: skip
    plain = worker_command("books", fake=False, verbosity=1, skip_checks=False)
    assert "--database-checks-only" not in plain
    assert "--progress" not in plain


def test_database_checks_only() -> None:
    worker = worker_class(migrate.Command)()
    options = {"database": "books", "database_checks_only": False}
    assert worker.get_check_kwargs(options) == {"databases": ["books"]}
    options["database_checks_only"] = True
    assert worker.get_check_kwargs(options) == {"databases": ["books"], "tags": ["database"]}
