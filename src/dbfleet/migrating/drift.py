"""Each database's real tables and columns, against what its recorded migrations made there.

For every database the project state at the migrations recorded there is
rendered, keeping only the models routed to that database, and its tables and
columns are compared with those the database reports (Django's introspection).
A difference is explained where it can be:

- a pending migration whose first operations' effects are there stopped
  half-way (MariaDB/MySQL commit each DDL statement at once, so a failure
  after an ``AddField`` leaves the column and no record): ``fleet migrate
  --resume`` runs its remaining operations and records it (``resume.py``);
- a table that holds rows of a model now routed to another database: those
  rows must be moved, and the table is never called droppable;
- a table that is missing although its migration is recorded (it was recorded
  while routing sent the model elsewhere).

A command is suggested only once a replay of what it would run, on the tables
and columns the database really has, succeeds: ``migrate --fake`` that would
lead ``fleet migrate`` into ``relation already exists`` is never suggested.
Types, indexes and constraints are not compared: only tables and columns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast

from django.apps import apps
from django.db import connections, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.migrations import Migration
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.graph import MigrationGraph
from django.db.migrations.operations import (
    AddField,
    AlterField,
    AlterModelTable,
    CreateModel,
    RenameField,
    RenameModel,
    RunPython,
    RunSQL,
)
from django.db.migrations.operations.base import Operation
from django.db.migrations.state import ProjectState

from dbfleet.conf import get_topology
from dbfleet.migrating.lint import describe, operations
from dbfleet.migrating.plan import decide
from dbfleet.routing import route_source
from dbfleet.values import orders_as_python

Key = tuple[str, str]
#: table -> its columns.
Schema = dict[str, frozenset[str]]
#: Rows are counted up to this many: enough to tell an empty table from a used one.
ROW_LIMIT = 10_000


class Drift(StrEnum):
    """What is wrong with a table or a column; one kind per explanation."""

    #: A pending migration whose first operations' effects are there.
    HALF_APPLIED = "half-applied"
    #: A table a recorded migration creates is not there.
    MISSING_TABLE = "missing-table"
    #: A column a recorded migration adds is not there.
    MISSING_COLUMN = "missing-column"
    #: A column no recorded migration makes (nor a half-applied one).
    EXTRA_COLUMN = "extra-column"
    #: A table of a model routed here, that no recorded migration creates.
    UNRECORDED_TABLE = "unrecorded-table"
    #: A table holding rows of a model that now lives in another database.
    ROWS_ELSEWHERE = "rows-elsewhere"
    #: An empty table of a model that lives in another database.
    STRAY = "stray"


@dataclass(frozen=True)
class Discrepancy:
    """A table or column that disagrees with the migration records or with the routes."""

    database: str
    model: str
    table: str
    problem: str
    kind: Drift
    column: str | None = None
    #: Rows in the table (at most ``ROW_LIMIT + 1``), where counted.
    rows: int | None = None
    #: The migration concerned ("app.name"), where there is one.
    migration: str | None = None


@dataclass(frozen=True)
class Fix:
    """Commands that put a database right, to run in this order, each checked to work."""

    database: str
    commands: tuple[str, ...]
    #: What to do first, or what the commands do not do.
    note: str


@dataclass(frozen=True)
class HalfApplied:
    """A pending migration that stopped after operation ``done`` of ``total`` on ``database``."""

    database: str
    app_label: str
    name: str
    done: int
    total: int
    #: Whether the effects seen are a prefix of its operations (then it can be resumed).
    resumable: bool
    #: What shows it ("column `library_book.weight` exists").
    evidence: str
    #: Where it may have failed (1-based positions), when more than one is possible.
    candidates: tuple[int, ...] = ()
    #: Operation positions whose effect is there, and those whose effect is not.
    present: tuple[int, ...] = ()
    absent: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.app_label}.{self.name}"


@dataclass(frozen=True)
class Change:
    """What one operation does to the tables and columns of one database."""

    added_tables: Mapping[str, frozenset[str]] = field(default_factory=dict)
    removed_tables: frozenset[str] = frozenset()
    added_columns: frozenset[tuple[str, str]] = frozenset()
    removed_columns: frozenset[tuple[str, str]] = frozenset()

    def __bool__(self) -> bool:
        return bool(
            self.added_tables or self.removed_tables or self.added_columns or self.removed_columns
        )

    def evidence(self, present: bool = True) -> str:
        """What the database shows when this change is there (or, ``present=False``, is not)."""
        exists, gone = ("exists", "is gone") if present else ("is missing", "is still there")
        for table in sorted(self.added_tables):
            return f"table `{table}` {exists}"
        for table, column in sorted(self.added_columns):
            return f"column `{table}.{column}` {exists}"
        for table in sorted(self.removed_tables):
            return f"table `{table}` {gone}"
        for table, column in sorted(self.removed_columns):
            return f"column `{table}.{column}` {gone}"
        return ""


def change(before: Schema, after: Schema) -> Change:
    common = before.keys() & after.keys()
    return Change(
        added_tables={table: after[table] for table in after.keys() - before.keys()},
        removed_tables=frozenset(before.keys() - after.keys()),
        added_columns=frozenset(
            (table, column) for table in common for column in after[table] - before[table]
        ),
        removed_columns=frozenset(
            (table, column) for table in common for column in before[table] - after[table]
        ),
    )


class Effect(StrEnum):
    """Whether a database shows an operation's change."""

    PRESENT = "present"
    ABSENT = "absent"
    #: The operation changes no table or column here (RunPython, RunSQL, an index, a type).
    NONE = "none"
    MIXED = "mixed"


class Actual:
    """A database's tables, and the columns and rows of those asked about (each asked once)."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        self.connection = connection
        with connection.cursor() as cursor:
            self.tables = frozenset(connection.introspection.table_names(cursor))
        self._columns: dict[str, frozenset[str]] = {}
        self._rows: dict[str, int] = {}

    def columns(self, table: str) -> frozenset[str]:
        """The table's columns; none when it is not there."""
        if table not in self.tables:
            return frozenset()
        if table not in self._columns:
            introspection = self.connection.introspection
            with self.connection.cursor() as cursor:
                described = introspection.get_table_description(cursor, table)
            self._columns[table] = frozenset(column.name for column in described)
        return self._columns[table]

    def rows(self, table: str) -> int:
        """How many rows the table holds, counted up to ``ROW_LIMIT + 1``."""
        if table not in self._rows:
            quoted = self.connection.ops.quote_name(table)
            with self.connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT COUNT(*) FROM (SELECT 1 FROM {quoted} LIMIT {ROW_LIMIT + 1}) counted"
                )
                self._rows[table] = int(cursor.fetchone()[0])
        return self._rows[table]

    def effect(self, done: Change) -> Effect:
        if not done:
            return Effect.NONE
        seen = [
            *(table in self.tables for table in done.added_tables),
            *(column in self.columns(table) for table, column in done.added_columns),
            *(table not in self.tables for table in done.removed_tables),
            *(column not in self.columns(table) for table, column in done.removed_columns),
        ]
        if all(seen):
            return Effect.PRESENT
        return Effect.MIXED if any(seen) else Effect.ABSENT


class Replay:
    """The tables and columns of a database as they would be after some operations ran."""

    def __init__(self, actual: Actual) -> None:
        self.actual = actual
        self.tables = set(actual.tables)
        self.changed: dict[str, frozenset[str]] = {}

    def columns(self, table: str) -> frozenset[str]:
        if table in self.changed:
            return self.changed[table]
        return self.actual.columns(table) if table in self.tables else frozenset()

    def run(self, done: Change) -> str:
        """Apply ``done``; or, when it would fail on this database, say why (nothing applied)."""
        for table in sorted(done.removed_tables):
            if table not in self.tables:
                return f"table `{table}` is not there to remove"
        for table, column in sorted(done.removed_columns):
            if column not in self.columns(table):
                return f"column `{table}.{column}` is not there to remove"
        for table in sorted(done.added_tables):
            if table in self.tables - done.removed_tables:
                return f"table `{table}` already exists"
        for table, column in sorted(done.added_columns):
            if table not in self.tables:
                return f"table `{table}` is not there to add `{column}` to"
            if column in self.columns(table) - {c for t, c in done.removed_columns if t == table}:
                return f"column `{table}.{column}` already exists"
        for table in done.removed_tables:
            self.tables.discard(table)
            self.changed.pop(table, None)
        for table, columns in done.added_tables.items():
            self.tables.add(table)
            self.changed[table] = columns
        for table in {table for table, _ in done.removed_columns | done.added_columns}:
            removed = {column for t, column in done.removed_columns if t == table}
            added = {column for t, column in done.added_columns if t == table}
            self.changed[table] = (self.columns(table) - removed) | added
        return ""


def routed_here(model: Any, alias: str) -> bool:
    """Whether ``model`` (installed or historical) has its table on ``alias``, as migrate says."""
    return bool(model._meta.can_migrate(alias) and router.allow_migrate_model(alias, model))


def has_table(model: Any) -> bool:
    opts = model._meta
    return bool(opts.managed and not opts.proxy and not opts.swapped)


@dataclass
class Database:
    """What one database has, and what the migrations recorded there should have made."""

    alias: str
    executor: MigrationExecutor
    actual: Actual
    recorded: frozenset[Key]
    #: The rendered state at the recorded migrations (shared: never changed in place).
    state: ProjectState
    convert: Callable[[str], str]
    half: HalfApplied | None = None
    #: What the records (and a half-applied migration's done operations) say should be here.
    expected: Schema = field(default_factory=dict)
    #: table -> the historical model that has it, in ``expected``.
    owners: dict[str, Any] = field(default_factory=dict)

    @property
    def graph(self) -> MigrationGraph:
        graph: MigrationGraph = self.executor.loader.graph
        return graph

    def migration(self, key: Key) -> Migration:
        return cast(Migration, self.graph.nodes[key])

    def schema(self, state: ProjectState) -> tuple[Schema, dict[str, Any]]:
        """The tables and columns ``state`` has on this database, and the model of each table."""
        skip = self.executor.loader.unmigrated_apps
        found: Schema = {}
        owners: dict[str, Any] = {}
        for model in state.apps.get_models(include_auto_created=True):
            if model._meta.app_label in skip or not routed_here(model, self.alias):
                continue
            table = self.convert(model._meta.db_table)
            owners[table] = model
            found[table] = frozenset(
                self.convert(f.column) for f in model._meta.local_fields if f.column
            )
        return found, owners

    def steps(
        self, state: ProjectState, migration: Migration
    ) -> Iterator[tuple[int, Operation, Change]]:
        """Each operation of ``migration`` and its change here; moves ``state`` past each."""
        before, _ = self.schema(state)
        for position, operation in enumerate(migration.operations, 1):
            operation.state_forwards(migration.app_label, state)
            after, _ = self.schema(state)
            yield position, operation, change(before, after)
            before = after

    def order(self) -> list[Key]:
        """Every migration, in the order migrate applies them."""
        graph = self.graph
        return list(
            dict.fromkeys(key for leaf in graph.leaf_nodes() for key in graph.forwards_plan(leaf))
        )

    def state_at(self, keys: Iterable[Key]) -> ProjectState:
        """The project state once exactly ``keys`` (closed under dependencies) are applied."""
        keys = set(keys)
        graph = self.graph
        leaves = [
            key
            for key in keys
            if not any(child.key in keys for child in graph.node_map[key].children)
        ]
        return self.executor.loader.project_state(sorted(leaves), at_end=True)


#: Rendered states by the set of migrations recorded: most databases have the same records.
StateCache = dict[frozenset[Key], ProjectState]


def inspect(
    alias: str, cache: StateCache | None = None, executor: MigrationExecutor | None = None
) -> Database:
    """Read ``alias``'s records, tables and columns; raises DatabaseError if it cannot."""
    connection = connections[alias]
    executor = executor or MigrationExecutor(connection)
    graph = executor.loader.graph
    recorded = frozenset(key for key in executor.loader.applied_migrations if key in graph.nodes)
    actual = Actual(connection)
    cache = {} if cache is None else cache
    database = Database(
        alias,
        executor,
        actual,
        recorded,
        cache.get(recorded, ProjectState()),
        connection.introspection.identifier_converter,
    )
    if recorded not in cache:
        database.state = cache[recorded] = database.state_at(recorded)
    database.expected, database.owners = database.schema(database.state)
    if differs(database):
        database.half = half_applied(database)
    return database


def differs(database: Database) -> bool:
    """Whether any table or column routed here disagrees with the records."""
    actual, expected = database.actual, database.expected
    for table, columns in expected.items():
        if table not in actual.tables or actual.columns(table) != columns:
            return True
    return any(
        table not in expected for table in current_tables(database.alias) if table in actual.tables
    )


def current_tables(alias: str, here: bool = True) -> dict[str, Any]:
    """table -> installed model with a table, for models routed to ``alias`` (or, not routed)."""
    from django.apps import apps

    return {
        model._meta.db_table: model
        for model in apps.get_models(include_auto_created=True)
        if has_table(model) and routed_here(model, alias) == here
    }


def half_applied(database: Database) -> HalfApplied | None:
    """The pending migration that stopped half-way here, if the database shows one."""
    executor, recorded = database.executor, database.recorded
    plan = executor.migration_plan(database.graph.leaf_nodes())
    for migration, _ in plan:
        key = (migration.app_label, migration.name)
        if not all(parent.key in recorded for parent in database.graph.node_map[key].parents):
            continue
        steps = list(database.steps(database.state.clone(), migration))
        effects = [database.actual.effect(done) for _, _, done in steps]
        present = [i for i, effect in enumerate(effects) if effect is Effect.PRESENT]
        if not present:
            continue
        last = present[-1]
        absent = [i for i, effect in enumerate(effects) if effect is Effect.ABSENT]
        resumable = all(e in {Effect.PRESENT, Effect.NONE} for e in effects[:last]) and all(
            e in {Effect.ABSENT, Effect.NONE} for e in effects[last + 1 :]
        )
        # It failed at one of the operations after the last one seen done, up to the
        # first one seen not done: those in between leave no trace to tell.
        end = next((i for i in absent if i > last), len(steps) - 1)
        candidates = tuple(range(last + 2, end + 2)) if last + 1 < len(steps) else ()
        return HalfApplied(
            database.alias,
            migration.app_label,
            migration.name,
            done=last + 1,
            total=len(steps),
            resumable=resumable,
            evidence=steps[present[0]][2].evidence(),
            candidates=candidates if len(candidates) > 1 else (),
            present=tuple(i + 1 for i in present),
            absent=tuple(i + 1 for i in absent),
        )
    return None


def state_after(database: Database, half: HalfApplied) -> ProjectState:
    """The project state once the recorded migrations and the half-applied one's done part ran."""
    state = database.state.clone()
    migration = database.migration((half.app_label, half.name))
    for operation in migration.operations[: half.done]:
        operation.state_forwards(half.app_label, state)
    return state


# --- The audit ------------------------------------------------------------------------


@dataclass
class Audit:
    findings: list[Discrepancy] = field(default_factory=list)
    fixes: list[Fix] = field(default_factory=list)


def audit(databases: list[Database], unreachable: Iterable[str] = ()) -> Audit:
    """Every table and column of ``databases`` that disagrees with their records or routes."""
    unreachable = set(unreachable)
    result = Audit()
    for database in databases:
        if database.half and database.half.resumable:
            database.expected, database.owners = database.schema(
                state_after(database, database.half)
            )
    # table -> alias -> rows, of tables holding a model routed elsewhere.
    leftovers: dict[str, dict[str, int]] = {}
    for database in databases:
        for table in current_tables(database.alias, here=False):
            if table in database.actual.tables and table not in database.expected:
                leftovers.setdefault(table, {})[database.alias] = database.actual.rows(table)
    by_alias = {database.alias: database for database in databases}
    for database in databases:
        audit_one(database, leftovers, by_alias, unreachable, result)
    result.fixes = list(dict.fromkeys(result.fixes))  # Two columns one migration adds: one fix.
    return result


def audit_one(
    database: Database,
    leftovers: dict[str, dict[str, int]],
    by_alias: dict[str, Database],
    unreachable: set[str],
    result: Audit,
) -> None:
    alias, actual, expected = database.alias, database.actual, database.expected
    found: list[Discrepancy] = []
    half = database.half
    if half is not None:
        found.append(half_applied_finding(database, half))
    missing: list[str] = []
    for table in sorted(expected):
        model = database.owners[table]
        label = model._meta.label
        if table not in actual.tables:
            missing.append(table)
            found.append(missing_table(database, table, leftovers))
            continue
        columns = actual.columns(table)
        for column in sorted(expected[table] - columns):
            creator = column_creator(database, model, column)
            found.append(
                Discrepancy(
                    alias,
                    label,
                    table,
                    f"column `{table}.{column}` is missing, but "
                    + (f"`{creator[0]}.{creator[1]}`, which adds it, is recorded" if creator else
                       "the recorded migrations make it")
                    + ": it was dropped by hand, or by a RunSQL without state_operations.",
                    Drift.MISSING_COLUMN,
                    column=column,
                    migration=f"{creator[0]}.{creator[1]}" if creator else None,
                )
            )  # fmt: skip
            if creator:
                result.fixes.append(
                    Fix(
                        alias,
                        (f"manage.py sqlmigrate {creator[0]} {creator[1]} --database {alias}",),
                        f"prints the SQL of {creator[0]}.{creator[1]} on {alias!r}: run the "
                        f"statement that adds `{table}.{column}` in `manage.py dbshell "
                        f"--database {alias}`.",
                    )
                )
        for column in sorted(columns - expected[table]):
            found.append(
                Discrepancy(
                    alias,
                    label,
                    table,
                    f"column `{table}.{column}` exists, but no migration recorded here makes it "
                    "(nor one that stopped half-way): it was added by hand, or by a RunSQL "
                    "without state_operations. A migration that adds it will fail.",
                    Drift.EXTRA_COLUMN,
                    column=column,
                )
            )
    for table, model in sorted(current_tables(alias).items()):
        if table in actual.tables and table not in expected:
            creator = table_creator(database, model, recorded_only=False)
            found.append(
                Discrepancy(
                    alias,
                    model._meta.label,
                    table,
                    f"table `{table}` exists ({rows_text(actual.rows(table))}), but no migration "
                    "recorded here creates it"
                    + (f" (`{creator[0]}.{creator[1]}` does)" if creator else "")
                    + ": migrate will fail to create it. It was made by hand, or by a "
                    "migration whose record was removed.",
                    Drift.UNRECORDED_TABLE,
                    rows=actual.rows(table),
                    migration=f"{creator[0]}.{creator[1]}" if creator else None,
                )
            )
    elsewhere = sorted(current_tables(alias, here=False).items())
    # The models whose rows are here and should be in each other database: copied together,
    # so that their foreign keys find what they point to.
    # Not those whose table there holds rows already: `fleet copy` refuses them.
    stranded: dict[str, list[str]] = {}
    for table, model in elsewhere:
        home = get_topology().database_for_model(model)
        there = by_alias.get(home)
        fresh = there is not None and not (
            table in there.actual.tables and there.actual.rows(table)
        )
        if leftovers.get(table, {}).get(alias) and not model._meta.auto_created and fresh:
            stranded.setdefault(home, []).append(model._meta.label)
    for table, model in elsewhere:
        rows = leftovers.get(table, {}).get(alias)
        if rows is not None:
            found.append(leftover(database, table, model, rows, by_alias, unreachable, stranded))
    result.findings += found
    fix = missing_tables_fix(database, missing) if missing else None
    if fix is not None:
        result.fixes.append(fix)
    if half is None or (fix is not None and "--resume" in fix.commands[-1]):
        return
    if half.resumable:
        failed = (
            f"operation {half.done + 1}"
            if not half.candidates
            else f"one of operations {half.candidates[0]}-{half.candidates[-1]}"
        )
        result.fixes.append(
            Fix(
                alias,
                (f"manage.py fleet migrate --resume --database {alias}",),
                f"first fix what made {failed} of {half.label} fail; the command then runs "
                f"{remaining(half)} of it, records it, and migrates the rest.",
            )
        )
    else:
        result.fixes.append(
            Fix(
                alias,
                (f"manage.py sqlmigrate {half.app_label} {half.name} --database {alias}",),
                f"prints the SQL of {half.label} on {alias!r}: compare it with the database "
                "and finish the migration by hand.",
            )
        )


def remaining(half: HalfApplied) -> str:
    """``operation 2``, ``operations 2-4``, or ``nothing`` (when only the record is missing)."""
    if half.done == half.total:
        return "nothing"
    if half.done + 1 == half.total:
        return f"operation {half.total}"
    return f"operations {half.done + 1}-{half.total}"


def rows_text(rows: int) -> str:
    if rows > ROW_LIMIT:
        return f"more than {ROW_LIMIT} rows"
    return f"{rows} row" + ("" if rows == 1 else "s")


def half_applied_finding(database: Database, half: HalfApplied) -> Discrepancy:
    migration = database.migration((half.app_label, half.name))
    ops = migration.operations

    def named(position: int) -> str:
        return f"{position} ({describe(ops[position - 1])})"

    table, column = evidence_location(half.evidence)
    if not half.resumable:
        problem = (
            f"{half.evidence}, but `{half.label}` is not recorded, and its operations' effects "
            f"are there out of order (done: {', '.join(map(str, half.present))}; not done: "
            f"{', '.join(map(str, half.absent))}): it cannot be resumed. Finish it by hand."
        )
    elif half.done == half.total:
        problem = (
            f"{half.evidence}, but `{half.label}` is not recorded: every one of its "
            f"{half.total} operation(s) is done, only its record is missing. "
            f"`manage.py fleet migrate --resume --database {database.alias}` records it."
        )
    else:
        where = (
            f"operation {named(half.done + 1)} failed"
            if not half.candidates
            else f"it failed at one of operations {half.candidates[0]}-{half.candidates[-1]}; "
            + ", ".join(named(p) for p in half.candidates[:-1])
            + " leave no trace to tell whether they ran: if one did, resuming runs it again"
        )
        problem = (
            f"{half.evidence}, but `{half.label}` is not recorded: it stopped after operation "
            f"{half.done} of {half.total} ({describe(ops[half.done - 1])}); {where}. Fix the "
            f"cause, then `manage.py fleet migrate --resume --database {database.alias}` runs "
            f"{remaining(half)} and records it."
        )
    owner = database.owners.get(table) if table else None
    return Discrepancy(
        database.alias,
        owner._meta.label if owner is not None else half.app_label,
        table or "",
        problem,
        Drift.HALF_APPLIED,
        column=column,
        migration=half.label,
    )


def evidence_location(evidence: str) -> tuple[str | None, str | None]:
    """(table, column) named in an evidence text."""
    if "`" not in evidence:
        return None, None
    name = evidence.split("`")[1]
    table, _, column = name.partition(".")
    return table, column or None


def missing_table(
    database: Database, table: str, leftovers: dict[str, dict[str, int]]
) -> Discrepancy:
    model = database.owners[table]
    label = model._meta.label
    creator = table_creator(database, model)
    elsewhere = {alias: rows for alias, rows in leftovers.get(table, {}).items() if rows}
    if creator:
        problem = (
            f"table `{table}` is missing, but `{creator[0]}.{creator[1]}`, which creates it, is "
            "recorded: it was recorded while routing sent "
            f"{label} elsewhere, or the table was dropped."
        )
    else:
        problem = f"table `{table}` is missing, but the recorded migrations make it."
    if elsewhere:
        where = ", ".join(f"{alias!r} ({rows_text(rows)})" for alias, rows in elsewhere.items())
        problem += (
            f" Its rows are in {where}; {label} now lives here "
            f"({route_source(label)}): they must be moved here by hand (`fleet move` is "
            "planned), or the route set back."
        )
    return Discrepancy(
        database.alias,
        label,
        table,
        problem,
        Drift.MISSING_TABLE,
        migration=f"{creator[0]}.{creator[1]}" if creator else None,
    )


def leftover(
    database: Database,
    table: str,
    model: Any,
    rows: int,
    by_alias: dict[str, Database],
    unreachable: set[str],
    stranded: dict[str, list[str]],
) -> Discrepancy:
    label = model._meta.label
    home = get_topology().database_for_model(model)
    source = route_source(label)
    if not rows:
        return Discrepancy(
            database.alias,
            label,
            table,
            f"table `{table}` exists here but {label} lives in {home!r} ({source}): an empty "
            "stray copy (0 rows), which nothing reads or writes here.",
            Drift.STRAY,
            rows=0,
        )
    there = by_alias.get(home)
    labels = " ".join(stranded.get(home) or [label])
    copy = (
        f"`manage.py fleet move {labels} --from {database.alias} --to {home}` (it copies "
        f"them, applies what is written to {database.alias!r} meanwhile and compares), then "
        f"`manage.py fleet move {labels} --finish`"
    )
    verify = f"`manage.py fleet verify {labels} --between {database.alias} {home}`"
    mysql = "mysql" in {connections[alias].vendor for alias in (database.alias, home)}
    if not all(
        orders_as_python(apps.get_model(name)._meta.pk, mysql)
        for name in stranded.get(home) or [label]
    ):
        # fleet move and fleet verify compare in key order: not these keys.
        copy = f"`manage.py fleet copy {labels} --from {database.alias} --to {home}`"
        verify = "a comparison of both sides (fleet verify compares integer and UUID keys)"
        copy += f", then {verify}"
    if there is None:
        state = "could not be looked at" + (" (unreachable)" if home in unreachable else "")
        how = f"once it can be reached, with {copy}"
    elif table not in there.actual.tables:
        state = "is missing"
        how = f"once its table is made there, with {copy}"
    elif there_rows := there.actual.rows(table):
        state = f"holds {rows_text(there_rows)}"
        how = f"by hand: {verify} names the rows that are on one side only or differ"
    else:
        state = "holds 0 rows"
        how = f"with {copy}"
    return Discrepancy(
        database.alias,
        label,
        table,
        f"table `{table}` holds {rows_text(rows)} of {label}, but {label} now lives in "
        f"{home!r} ({source}), where its table {state}. These rows must be moved to {home!r} "
        f"({how}; stop writes first), or ROUTES changed to send {label} to "
        f"{database.alias!r}; until then {label} does not see them. Keep this table until "
        "they are moved.",
        Drift.ROWS_ELSEWHERE,
        rows=rows,
    )


# --- Who made a table or a column -----------------------------------------------------


def _recorded_in_order(database: Database, recorded_only: bool) -> list[Migration]:
    keys = database.order()
    return [
        database.migration(key) for key in keys if not recorded_only or key in database.recorded
    ]


def table_creator(database: Database, model: Any, recorded_only: bool = True) -> Key | None:
    """The last migration that creates (or renames to) ``model``'s table."""
    opts = model._meta
    owner = opts.auto_created
    through_field = None
    if owner:
        through_field = next(
            (f.name for f in owner._meta.local_many_to_many if f.remote_field.through is model),
            None,
        )
        opts = owner._meta
    found: Key | None = None
    for migration in _recorded_in_order(database, recorded_only):
        if migration.app_label != opts.app_label:
            continue
        for _, operation in operations(migration):
            if makes_table(operation, opts.model_name, through_field):
                found = (migration.app_label, migration.name)
    return found


def makes_table(operation: Operation, model_name: str, through_field: str | None) -> bool:
    if isinstance(operation, CreateModel) and operation.name_lower == model_name:
        return through_field is None or any(name == through_field for name, _ in operation.fields)
    if through_field is not None:
        return (
            isinstance(operation, AddField)
            and operation.model_name_lower == model_name
            and operation.name == through_field
        )
    if isinstance(operation, RenameModel):
        return bool(operation.new_name_lower == model_name)
    return isinstance(operation, AlterModelTable) and operation.name_lower == model_name


def column_creator(database: Database, model: Any, column: str) -> Key | None:
    """The last recorded migration that adds the field behind ``column`` (or renames to it)."""
    opts = model._meta
    if opts.auto_created:
        return table_creator(database, model)
    name = next((f.name for f in opts.local_fields if f.column == column), None)
    found: Key | None = None
    for migration in _recorded_in_order(database, recorded_only=True):
        if migration.app_label != opts.app_label:
            continue
        for _, operation in operations(migration):
            if (
                (isinstance(operation, CreateModel) and operation.name_lower == opts.model_name
                 and any(field_name == name for field_name, _ in operation.fields))
                or (isinstance(operation, AddField | AlterField)
                    and operation.model_name_lower == opts.model_name and operation.name == name)
                or (isinstance(operation, RenameField)
                    and operation.model_name_lower == opts.model_name
                    and operation.new_name == name)
            ):  # fmt: skip
                found = (migration.app_label, migration.name)
    return found


# --- Commands that make missing tables, checked by a replay ---------------------------


def previous(database: Database, key: Key) -> str:
    """The migration before ``key`` in its app ("zero" for the first)."""
    parents = sorted(p.key[1] for p in database.graph.node_map[key].parents if p.key[0] == key[0])
    return parents[0] if parents else "zero"


def missing_tables_fix(database: Database, missing: list[str]) -> Fix | None:
    """``migrate APP PREVIOUS --fake`` for each creator, then ``fleet migrate``; if that works."""
    alias = database.alias
    order = database.order()
    creators = {table: table_creator(database, database.owners[table]) for table in missing}
    unmade = sorted(table for table, creator in creators.items() if creator is None)
    chosen = sorted({c for c in creators.values() if c is not None}, key=order.index)
    unrecorded: set[Key] = set()
    commands: list[str] = []
    for creator in chosen:
        if creator in unrecorded:
            continue  # Unrecorded by an earlier command already.
        before = previous(database, creator)
        target = (creator[0], None if before == "zero" else before)
        plan = database.executor.migration_plan([target])
        if not all(backwards for _, backwards in plan):
            return None
        unrecorded |= {(migration.app_label, migration.name) for migration, _ in plan}
        commands.append(f"manage.py migrate {creator[0]} {before} --fake --database {alias}")
    why = "" if not unmade else f"no migration recorded here creates {', '.join(unmade)}"
    again: list[str] = []
    if not why:
        why, again = replay_from(database, database.recorded - unrecorded, missing, unrecorded)
    resume = "--resume " if database.half is not None and database.half.resumable else ""
    if not why:
        note = (
            "creates the missing tables, empty: unrecords the migrations that create them, "
            "then runs them (rows kept elsewhere are not moved)."
        )
        if again:
            note += " These run again here too: " + ", ".join(again) + "."
        return Fix(alias, (*commands, f"manage.py fleet migrate {resume}--database {alias}"), note)
    sql = tuple(
        f"manage.py sqlmigrate {creator[0]} {creator[1]} --database {alias}" for creator in chosen
    )
    return Fix(
        alias,
        sql,
        f"`migrate --fake` then `fleet migrate` would fail here ({why}): create "
        f"{', '.join(f'`{table}`' for table in missing)} by hand, with the CREATE TABLE "
        f"statements these print, in `manage.py dbshell --database {alias}`.",
    )


def does_something(alias: str, key: Key, operation: Operation) -> bool:
    """Whether ``operation`` is a RunPython or RunSQL that does something on ``alias``."""
    if isinstance(operation, RunPython):
        idle = operation.code is RunPython.noop
    elif isinstance(operation, RunSQL):
        idle = operation.sql in (RunSQL.noop, "", [], ())
    else:
        return False
    return not idle and decide(alias, key[0], operation)[0]


def replay_from(
    database: Database, kept: Iterable[Key], missing: list[str], unrecorded: set[Key]
) -> tuple[str, list[str]]:
    """Replay every migration not in ``kept``: (why it would fail or "", traceless ones rerun)."""
    kept = set(kept)
    state = database.state_at(kept)
    replay = Replay(database.actual)
    half = database.half
    again: list[str] = []
    for key in database.order():
        if key in kept:
            continue
        migration = database.migration(key)
        skip = half.done if half and half.resumable and (half.app_label, half.name) == key else 0
        for position, operation, done in database.steps(state, migration):
            if position <= skip:
                continue
            why = replay.run(done)
            if why:
                return f"{key[0]}.{key[1]} operation {position} ({describe(operation)}): {why}", []
            if not done and key in unrecorded and does_something(database.alias, key, operation):
                again.append(f"{key[0]}.{key[1]} operation {position} ({describe(operation)})")
    unmade = [table for table in missing if table not in replay.tables]
    if unmade:
        return f"the migrations would not create {', '.join(unmade)}", []
    return "", again
