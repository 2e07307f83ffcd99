"""fleet_ids: FleetIdField ids per second on PostgreSQL, against a sequence (BigAutoField's).

One process, ids alone: ``dbfleet.sharding.ids.new_ids()`` (one round trip for one id,
or for a batch of 1,000) against ``SELECT nextval(...)`` on one sequence (for a batch,
over ``generate_series(1, 1000)``). Then four processes at once, each inserting rows
into one table, one ``create()`` at a time or 100 per ``bulk_create()``: a table with a
``FleetIdField`` primary key against the same table with a ``BigAutoField``. Every
commit waits for the disk (PostgreSQL's defaults), as in production.
"""

from __future__ import annotations

import functools
import multiprocessing
import statistics
from collections.abc import Callable
from multiprocessing.pool import Pool
from multiprocessing.synchronize import Barrier

from django.db import connections, models
from rich.console import Group

from bench.postgres import connect, require_server
from bench.timing import NS, US, Case, Ratio, console, measure, report

#: The benchmark's database (the transactions benchmark's first; made and dropped here).
ALIAS = "tx_a"
PROCESSES = 4
BATCH = 1000
ROWS_PER_BULK = 100

ONE_ID = "ids.new_ids(): one id"
ONE_NEXTVAL = "SELECT nextval(): one id"
BATCH_IDS = f"ids.new_ids(): {BATCH:,} ids"
BATCH_NEXTVAL = f"SELECT nextval() FROM generate_series(1, {BATCH:,})"
CREATE_FLEET = f"{PROCESSES} processes, create(): FleetIdField"
CREATE_AUTO = f"{PROCESSES} processes, create(): BigAutoField"
BULK_FLEET = f"{PROCESSES} processes, bulk_create({ROWS_PER_BULK}): FleetIdField"
BULK_AUTO = f"{PROCESSES} processes, bulk_create({ROWS_PER_BULK}): BigAutoField"


@functools.cache
def row_models() -> tuple[type[models.Model], type[models.Model]]:
    """The two tables: made once Django is set up (in each process that uses them)."""
    from dbfleet import FleetIdField

    class FleetRow(models.Model):
        id = FleetIdField(primary_key=True)
        n = models.IntegerField()

        objects: models.Manager[FleetRow] = models.Manager()

        class Meta:
            app_label = "bookshop"
            db_table = "bench_fleet_row"

    class AutoRow(models.Model):
        id = models.BigAutoField(primary_key=True)
        n = models.IntegerField()

        objects: models.Manager[AutoRow] = models.Manager()

        class Meta:
            app_label = "bookshop"
            db_table = "bench_auto_row"

    return FleetRow, AutoRow


def database_name() -> str:
    return str(connections[ALIAS].settings_dict["NAME"])


def create_database() -> None:
    from dbfleet.sharding import ids

    drop_database()
    with connect() as server:
        server.execute(f"CREATE DATABASE {database_name()}")
    connection = connections[ALIAS]
    with connection.schema_editor() as editor:
        for model in row_models():
            editor.create_model(model)
    ids.install(connection)


def drop_database() -> None:
    connections[ALIAS].close()
    with connect() as server:
        server.execute(f"DROP DATABASE IF EXISTS {database_name()} WITH (FORCE)")


# --- One process: ids alone ---------------------------------------------------------------------


def one_process_cases() -> tuple[list[Case], list[Case]]:
    from dbfleet.sharding import ids

    fleet_row, _ = row_models()
    sequence = "bench_auto_row_id_seq"

    def fleet_ids(count: int) -> Callable[[int], None]:
        def run(n: int) -> None:
            for _ in range(n):
                ids.new_ids(fleet_row, count, using=ALIAS)

        return run

    def nextval(sql: str) -> Callable[[int], None]:
        def run(n: int) -> None:
            with connections[ALIAS].cursor() as cursor:
                for _ in range(n):
                    cursor.execute(sql)
                    cursor.fetchall()

        return run

    series = f"SELECT nextval('{sequence}') FROM generate_series(1, {BATCH})"
    singles = [
        Case(ONE_ID, fleet_ids(1)),
        Case(ONE_NEXTVAL, nextval(f"SELECT nextval('{sequence}')")),
    ]
    return singles, [Case(BATCH_IDS, fleet_ids(BATCH)), Case(BATCH_NEXTVAL, nextval(series))]


# --- Four processes inserting at once ---------------------------------------------------------

_barrier: Barrier | None = None


def _start_worker(barrier: Barrier) -> None:
    """A pool process: Django with the benchmark's settings, and the barrier all tasks meet at."""
    global _barrier
    from bench.run import setup

    setup()
    row_models()
    _barrier = barrier


def _insert(task: tuple[str, int]) -> int:
    """Insert ``rows`` rows as case ``name`` says, once every process has its task."""
    name, rows = task
    fleet_row, auto_row = row_models()
    model = fleet_row if "FleetIdField" in name else auto_row
    assert _barrier is not None
    _barrier.wait()  # Each process one task: all four insert at once.
    manager = model._default_manager.db_manager(ALIAS)
    if "bulk_create" in name:
        for start in range(0, rows, ROWS_PER_BULK):
            manager.bulk_create(model(n=n) for n in range(start, min(rows, start + ROWS_PER_BULK)))
    else:
        for n in range(rows):
            manager.create(n=n)
    return rows


def processes_cases(pool: Pool) -> list[Case]:
    def inserting(name: str) -> Case:
        def run(n: int) -> None:
            pool.map(_insert, [(name, n // PROCESSES)] * PROCESSES, chunksize=1)

        return Case(name, run)

    return [inserting(name) for name in (CREATE_FLEET, CREATE_AUTO, BULK_FLEET, BULK_AUTO)]


def count_rows() -> tuple[int, int, int]:
    """(rows, distinct FleetIdField ids, rows of the BigAutoField table)."""
    with connections[ALIAS].cursor() as cursor:
        cursor.execute("SELECT count(*), count(DISTINCT id) FROM bench_fleet_row")
        rows, distinct = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM bench_auto_row")
        (auto,) = cursor.fetchone()
    return int(rows), int(distinct), int(auto)


def per_second(samples: dict[str, list[float]], name: str) -> str:
    return f"{1e9 / statistics.median(samples[name]):,.0f} ids/s"


def run(quick: bool) -> bool:
    console.rule("fleet_ids")
    require_server()
    from django.test import override_settings

    with override_settings(DATABASE_ROUTERS=[], DBFLEET={}):
        create_database()
        try:
            singles, batched = one_process_cases()
            rounds = 5 if quick else 31
            one = measure(singles, rounds=rounds, batch=10 if quick else 100)
            # Each operation of these is a batch of 1,000 ids: timed per id.
            batches = {
                name: [ns / BATCH for ns in values]
                for name, values in measure(
                    batched, rounds=rounds, batch=2 if quick else 10
                ).items()
            }
            connections[ALIAS].close()  # Not inherited by the pool.
            context = multiprocessing.get_context("spawn")
            barrier = context.Barrier(PROCESSES)
            with context.Pool(PROCESSES, _start_worker, (barrier,)) as pool:
                four = measure(
                    processes_cases(pool),
                    rounds=3 if quick else 21,
                    batch=PROCESSES * (10 if quick else 100),
                    warmup=1 if quick else 2,
                )
            rows, distinct, auto = count_rows()
        finally:
            drop_database()
    met = report(
        "One process, ids alone (PostgreSQL): time per id",
        {**one, **batches},
        unit=NS,
        ratios=[Ratio(ONE_ID, ONE_NEXTVAL), Ratio(BATCH_IDS, BATCH_NEXTVAL)],
        note=Group(
            f"One at a time: {per_second(one, ONE_ID)} with FleetIdField, "
            f"{per_second(one, ONE_NEXTVAL)} with nextval(). In batches of {BATCH:,}: "
            f"{per_second(batches, BATCH_IDS)} and {per_second(batches, BATCH_NEXTVAL)}."
        ),
    )
    met &= report(
        f"{PROCESSES} processes inserting rows into one table at once (PostgreSQL): time per row",
        four,
        unit=US,
        ratios=[Ratio(CREATE_FLEET, CREATE_AUTO), Ratio(BULK_FLEET, BULK_AUTO)],
        note=Group(
            f"All {PROCESSES} together, create(): {per_second(four, CREATE_FLEET)} with "
            f"FleetIdField, {per_second(four, CREATE_AUTO)} with BigAutoField; "
            f"bulk_create({ROWS_PER_BULK}): {per_second(four, BULK_FLEET)} and "
            f"{per_second(four, BULK_AUTO)}. FleetIdField rows written: {rows:,}, distinct "
            f"ids among them: {distinct:,} (BigAutoField rows: {auto:,})."
        ),
    )
    if distinct != rows:
        console.print("[red]FleetIdField handed out an id twice.[/red]")
        return False
    return met
