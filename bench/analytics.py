"""analytics: a report on the chDB copy vs PostgreSQL, the initial sync's rows/s, --follow's lag.

``Sale`` (ten columns) lives in PostgreSQL (``dbfleet_bench_sales``, 5 million rows made
by ``generate_series``; ``--quick`` 50,000) and ``SaleFact``, its synced model, in
embedded ClickHouse (chDB). It runs in a process of its own (``bench/analytics_settings.py``):
chDB allows one data directory per process, and the other benchmarks fork.

1. The initial sync (``sync_copy(full=True)``): rows/s, against the loop people write
   without dbfleet (ORM reads in batches, ``bulk_create`` of the copy's rows).
2. The report, through the ORM on each side: revenue and sales by day and status, and the
   top 10 customers. ``SaleFact.objects.live()`` (``FINAL``, deleted rows left out) against
   the same queries on ``Sale`` in PostgreSQL.
3. ``follow()`` under a steady write load on the source: each turn's lag (seconds from
   the oldest change it copied being logged to its being written).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from bench.postgres import connect, require_server
from bench.timing import SECONDS, Case, Ratio, Unavailable, console, measure, report

ROWS, QUICK_ROWS = 5_000_000, 50_000
#: Rows the hand-written loop copies (it is slow: a full run would take minutes).
LOOP_ROWS, QUICK_LOOP_ROWS = 100_000, 10_000
DATABASE = "dbfleet_bench_sales"
#: The benchmark process's exit status when it ran but missed a target (1: it failed).
MISSED = 3


def run(quick: bool) -> bool:
    """Run the benchmark in a process of its own, with chDB in a new data directory."""
    console.rule("analytics")
    require_server()
    try:
        import chdb  # noqa: F401  (only to know it is there: the child imports it)
    except ImportError:
        raise Unavailable(
            "needs chDB: pip install 'django-dbfleet[chdb]' (the dev venv has it)"
        ) from None
    with tempfile.TemporaryDirectory(prefix="dbfleet_bench_chdb_") as directory:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "bench.analytics_settings",
            "DBFLEET_BENCH_CHDB_DIR": directory,
        }
        command = [sys.executable, "-m", "bench.analytics", *(["--quick"] if quick else [])]
        done = subprocess.run(command, env=env, check=False, timeout=1800)
    if done.returncode not in (0, MISSED):
        raise RuntimeError(f"the analytics benchmark's process failed (exit {done.returncode})")
    return done.returncode == 0


# --- In the benchmark's own process ---------------------------------------------------------


def fill(rows: int) -> None:
    """The sales, made by the server (deterministic), with fresh planner statistics."""
    from django.db import connections

    with connections["default"].cursor() as cursor:
        cursor.execute(
            "INSERT INTO sales_sale (customer, status, total, quantity, paid, day, created, "
            "token, weight) SELECT (g * 7919) %% 50000, (ARRAY['new', 'paid', 'sent', "
            "'returned', 'void'])[1 + g %% 5], ((g * 104729) %% 100000) / 100.0, g %% 13, "
            "g %% 3 = 0, DATE '2025-01-01' + (g %% 365)::int, TIMESTAMPTZ '2025-01-01 00:00:00+00' "
            "+ (g %% 31536000) * INTERVAL '1 second', md5(g::text)::uuid, g / 7.0 "
            "FROM generate_series(1::bigint, %s) AS g",
            [rows],
        )
        cursor.execute("VACUUM ANALYZE sales_sale")


def by_day(queryset: Any) -> list[dict[str, Any]]:
    from django.db.models import Count, Sum

    return list(
        queryset.values("day", "status")
        .annotate(revenue=Sum("total"), sales=Count("id"))
        .order_by("day", "status")
    )


def top_customers(queryset: Any) -> list[dict[str, Any]]:
    from django.db.models import Sum

    return list(
        queryset.values("customer")
        .annotate(revenue=Sum("total"))
        .order_by("-revenue", "customer")[:10]
    )


def hand_written_copy(limit: int) -> float:
    """Rows/s of the loop people write: read through the ORM in batches, bulk_create each."""
    from bench.sales.models import Sale, SaleFact

    names = [field.attname for field in Sale._meta.concrete_fields]
    started = time.perf_counter()
    batch: list[Any] = []
    for values in Sale.objects.order_by("id").values_list(*names)[:limit].iterator(10_000):
        batch.append(SaleFact(**dict(zip(names, values, strict=True)), sync_version=1))
        if len(batch) >= 10_000:
            SaleFact.objects.bulk_create(batch)
            batch = []
    SaleFact.objects.bulk_create(batch)
    return limit / (time.perf_counter() - started)


def steady_writes(stop: threading.Event, per_second: int, errors: list[BaseException]) -> None:
    """Update ``per_second`` sales a second, in small transactions, until ``stop``."""
    from django.db import connections, transaction

    from bench.sales.models import Sale

    try:
        step = 0
        while not stop.is_set():
            began = time.monotonic()
            with transaction.atomic():
                Sale.objects.filter(id__in=range(step, step + per_second // 10)).update(
                    status="late"
                )
            step += per_second // 10
            stop.wait(max(0.0, 0.1 - (time.monotonic() - began)))
    except BaseException as error:  # Reported by the caller: a worker's error fails the run.
        errors.append(error)
    finally:
        connections.close_all()


def main(quick: bool) -> bool:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections

    from bench.sales.models import Sale, SaleFact
    from dbfleet.analytics.sync import Copy, follow, sync_copy

    rows = QUICK_ROWS if quick else ROWS
    with connect() as server:
        server.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        server.execute(f"CREATE DATABASE {DATABASE}")
    try:
        for alias in ("default", "warehouse"):
            call_command("migrate", database=alias, verbosity=0)
        fill(rows)
        # 1. The initial sync, then the loop people write (into the emptied copy).
        copy = Copy(SaleFact)
        started = time.perf_counter()
        result = sync_copy(copy, full=True)
        seconds = time.perf_counter() - started
        if result.error or result.loaded != rows:
            raise RuntimeError(f"the sync loaded {result.loaded} of {rows} rows: {result.error}")
        loaded = SaleFact.objects.live()
        expected = {
            "rows": rows,
            "by_day": by_day(Sale.objects),
            "top": top_customers(Sale.objects),
        }
        found = {"rows": loaded.count(), "by_day": by_day(loaded), "top": top_customers(loaded)}
        if found != expected:
            raise RuntimeError("the copy's report differs from PostgreSQL's.")
        sync_rate = rows / seconds
        # 2. The report on both sides.
        cases = [
            Case(
                "by day and status, PostgreSQL", lambda n: [by_day(Sale.objects) for _ in range(n)]
            ),
            Case("by day and status, chDB", lambda n: [by_day(loaded) for _ in range(n)]),
            Case(
                "top 10 customers, PostgreSQL",
                lambda n: [top_customers(Sale.objects) for _ in range(n)],
            ),
            Case("top 10 customers, chDB", lambda n: [top_customers(loaded) for _ in range(n)]),
        ]
        samples = measure(cases, rounds=3 if quick else 7, batch=1, warmup=1)
        report_met = report(
            f"The report over {rows:,} sales, through the ORM: the chDB copy against PostgreSQL",
            samples,
            unit=SECONDS,
            ratios=[
                Ratio("by day and status, chDB", "by day and status, PostgreSQL", at_most=0.1),
                Ratio("top 10 customers, chDB", "top 10 customers, PostgreSQL", at_most=0.1),
            ],
            note="Both answers are checked equal first. chDB reads SaleFact.objects.live(): "
            "FINAL (the latest version of each row) without the deleted rows.",
        )
        with connections["warehouse"].cursor() as cursor:
            cursor.execute(f"TRUNCATE TABLE {SaleFact._meta.db_table}")
        loop_rows = QUICK_LOOP_ROWS if quick else LOOP_ROWS
        loop_rate = hand_written_copy(loop_rows)
        # 3. --follow under writes: 1,000 updates a second, in 10 transactions.
        stop, errors = threading.Event(), list[BaseException]()
        lags: list[float] = []
        writer = threading.Thread(target=steady_writes, args=(stop, 1000, errors))
        turns = 20 if quick else 50
        stopped = threading.Event()

        def on_sync(result: Any) -> None:
            if result.error:
                errors.append(RuntimeError(result.error))
            elif result.changes:
                lags.append(result.lag)
            if len(lags) >= turns or errors:
                stopped.set()

        sync_copy(copy, full=True)
        with connections["default"].cursor() as cursor:
            # The log held a row for each sale written, all deleted by the loads: what
            # autovacuum would clear before long, cleared now.
            cursor.execute("VACUUM ANALYZE dbfleet_changes")
        writer.start()
        deadline = threading.Timer(300, stopped.set)
        deadline.start()
        try:
            follow([copy.label], interval=0.2, stop=stopped, on_sync=on_sync)
        finally:
            deadline.cancel()
            stop.set()
            writer.join(30)
        if errors:
            raise errors[0]
        if len(lags) < turns:
            raise RuntimeError(f"--follow copied changes {len(lags)} times in 300 s, not {turns}.")
        sync_met = sync_rate >= 300_000 and sync_rate / loop_rate >= 20
        lags.sort()
        p99 = lags[min(len(lags) - 1, round(0.99 * (len(lags) - 1)))]
        console.print(
            f"Initial sync PostgreSQL → chDB, {rows:,} rows of 10 columns: {seconds:.2f} s, "
            f"[bold]{sync_rate:,.0f} rows/s[/bold] (target ≥ 300,000); the hand-written loop "
            f"(ORM reads, bulk_create of 10,000, {loop_rows:,} rows): {loop_rate:,.0f} rows/s; "
            f"ratio [bold]{sync_rate / loop_rate:.1f}×[/bold] (target ≥ 20)."
        )
        console.print(
            f"--follow (interval 0.2 s) under 1,000 updates a second: lag p50 "
            f"[bold]{statistics.median(lags):.2f} s[/bold], p99 [bold]{p99:.2f} s[/bold] over "
            f"{len(lags)} turns that copied changes."
        )
        console.print()
        return report_met and sync_met
    finally:
        connections.close_all()
        with connect() as server:
            server.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


if __name__ == "__main__":
    sys.exit(0 if main("--quick" in sys.argv) else MISSED)
