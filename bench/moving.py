"""moving: ``fleet copy`` and ``fleet verify`` rows/s, against the tools a user has otherwise.

A table of six columns (``bench_move_row``) is filled on PostgreSQL (``move_a``) with
1,000,000 rows by ``generate_series`` (``--quick``: 20,000). Timed, interleaved, each
round starting from an empty target:

1. ``fleet copy`` (``copy_models``) PostgreSQL → PostgreSQL (``move_b``): binary COPY;
2. the pipe a user would write: ``psql -c "\\copy ... to stdout" | psql -c "\\copy ... from
   stdin"``;
3. ``dumpdata | loaddata`` (Django's JSON fixtures) on the first 20,000 rows (``--quick``:
   2,000): rows/s from that part, the whole would take most of an hour;
4. ``fleet copy`` into MariaDB (``move_mariadb``, when the server is there) and SQLite
   (a file): reported, one round;
5. ``fleet verify`` of the two equal PostgreSQL tables, against reading both once: a
   cursor's ``SELECT * ... ORDER BY id``, fetched as the driver returns it;
6. ``fleet move`` PostgreSQL → PostgreSQL, once: its start (the copy from one snapshot, the
   comparison), then one catch-up after an UPDATE of 5% of the rows on the source, against
   what a user without it does to bring the target up to date: ``fleet copy --replace``.

Times are per row; the ratios are of those times (``fleet copy / psql`` ≤ 2 is rows/s
≥ 0.5× the pipe's).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable

from django.core.management import call_command
from django.db import connections, models

from bench.postgres import connect, require_server, server_settings
from bench.timing import NS, Ratio, console, report

ROWS, QUICK_ROWS = 1_000_000, 20_000
DUMP_ROWS, QUICK_DUMP_ROWS = 20_000, 2_000
SOURCE, TARGET, MARIADB, SQLITE = "move_a", "move_b", "move_mariadb", "move_sqlite"
TABLE = "bench_move_row"

COPY = "fleet copy, PostgreSQL → PostgreSQL"
PIPE = "psql \\copy to stdout | psql \\copy from stdin"
DUMP = "dumpdata | loaddata (JSON)"
INTO_MARIADB = "fleet copy, PostgreSQL → MariaDB"
INTO_SQLITE = "fleet copy, PostgreSQL → SQLite"
VERIFY = "fleet verify, two equal tables"
MOVE = "fleet move, its start (copy, compare)"
CATCH_UP = "fleet move, a catch-up of 5% of the rows changed"
RECOPY = "fleet copy --replace, the whole table again"
READ = "read both tables once (a cursor, in key order)"


@functools.cache
def model() -> type[models.Model]:
    """The benchmark's table, made once Django is set up."""

    class MoveRow(models.Model):
        id = models.BigAutoField(primary_key=True)
        sensor = models.IntegerField()
        reading = models.FloatField()
        label = models.CharField(max_length=20)
        amount = models.DecimalField(max_digits=12, decimal_places=2)
        at = models.DateTimeField()

        objects: models.Manager[MoveRow] = models.Manager()

        class Meta:
            app_label = "bookshop"
            db_table = TABLE

    return MoveRow


def psql(database: str) -> list[str]:
    config = server_settings()
    return [
        "psql",
        "-X",
        "-q",
        "-h",
        str(config.get("HOST") or "localhost"),
        "-p",
        str(config.get("PORT") or 5432),
        "-U",
        str(config.get("USER") or "postgres"),
        "-d",
        database,
    ]


def mariadb_available() -> str | None:
    """Why the MariaDB target cannot be used, or None (its database made, empty)."""
    try:
        import MySQLdb  # type: ignore[import-untyped]
    except ImportError:
        return "mysqlclient is not installed"
    settings = connections[MARIADB].settings_dict
    try:
        server = MySQLdb.connect(
            host=settings["HOST"] or "127.0.0.1",
            port=int(settings["PORT"] or 3306),
            user=settings["USER"],
            password=settings["PASSWORD"] or "",
        )
    except MySQLdb.Error as error:
        return f"MariaDB cannot be reached ({error})"
    with server.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {settings['NAME']}")
        cursor.execute(f"CREATE DATABASE {settings['NAME']} CHARACTER SET utf8mb4")
    server.close()
    return None


def drop_mariadb() -> None:
    with connections[MARIADB].cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {connections[MARIADB].settings_dict['NAME']}")


def create(alias: str) -> None:
    with connections[alias].schema_editor() as editor:
        editor.create_model(model())


def empty(alias: str) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE}")
        cursor.execute("DELETE FROM dbfleet_copy_checkpoint")


def fill(rows: int) -> None:
    with connections[SOURCE].cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} (sensor, reading, label, amount, at) SELECT g %% 977, "
            "g / 7.0, 'sensor-' || (g %% 977), ((g * 7919) %% 1000000) / 100.0, "
            "TIMESTAMPTZ '2026-01-01 00:00:00+00' + g * INTERVAL '1 second' "
            "FROM generate_series(1::bigint, %s) AS g",
            [rows],
        )
        cursor.execute(f"VACUUM ANALYZE {TABLE}")


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def fleet_copy(target: str) -> None:
    from dbfleet.moving.copy import copy_models

    copy_models(["bookshop.MoveRow"], target, SOURCE)


def pipe() -> None:
    out = subprocess.Popen(
        [*psql("dbfleet_bench_move_a"), "-c", f"\\copy {TABLE} to stdout"],
        stdout=subprocess.PIPE,
    )
    subprocess.run(
        [*psql("dbfleet_bench_move_b"), "-c", f"\\copy {TABLE} from stdin"],
        stdin=out.stdout,
        check=True,
        timeout=600,
    )
    assert out.stdout is not None
    out.stdout.close()
    if out.wait(60) != 0:
        raise RuntimeError("psql \\copy to stdout failed")


def dump_and_load(rows: int, directory: str) -> None:
    fixture = os.path.join(directory, "rows.json")
    with open(fixture, "w") as file:
        call_command(
            "dumpdata",
            "bookshop.MoveRow",
            database=SOURCE,
            pks=",".join(str(pk) for pk in range(1, rows + 1)),
            stdout=file,
        )
    call_command("loaddata", fixture, database=TARGET, verbosity=0)


def read_both() -> None:
    """Every row of both tables, in key order, as the driver returns them (no ORM)."""
    for alias in (SOURCE, TARGET):
        with connections[alias].cursor() as cursor:
            cursor.execute(f"SELECT * FROM {TABLE} ORDER BY id")
            while cursor.fetchmany(10_000):
                pass


def verify() -> None:
    from dbfleet.moving.verify import verify_models

    report = verify_models(["bookshop.MoveRow"], SOURCE, TARGET)
    if report.differs:
        raise RuntimeError(f"fleet verify found the copy different: {report}")


def run(quick: bool) -> bool:
    console.rule("moving")
    require_server()
    if shutil.which("psql") is None:
        from bench.timing import Unavailable

        raise Unavailable("needs psql (the PostgreSQL client) for the baseline pipe")
    rows, dump_rows = (QUICK_ROWS, QUICK_DUMP_ROWS) if quick else (ROWS, DUMP_ROWS)
    rounds = 1 if quick else 3
    with connect() as server:
        for alias in (SOURCE, TARGET):
            server.execute(f"DROP DATABASE IF EXISTS dbfleet_bench_{alias} WITH (FORCE)")
            server.execute(f"CREATE DATABASE dbfleet_bench_{alias}")
    sqlite_file = connections[SQLITE].settings_dict["NAME"]
    if os.path.exists(sqlite_file):
        os.remove(sqlite_file)
    no_mariadb = mariadb_available()
    samples: dict[str, list[float]] = {COPY: [], PIPE: [], DUMP: [], VERIFY: [], READ: []}
    once: dict[str, float] = {}
    try:
        from dbfleet.moving.copy import ensure_checkpoints

        targets = [SOURCE, TARGET, SQLITE, *([] if no_mariadb else [MARIADB])]
        for alias in targets:
            create(alias)
            ensure_checkpoints(alias)
        fill(rows)
        with tempfile.TemporaryDirectory(prefix="dbfleet_bench_move_") as directory:
            for _ in range(rounds):
                empty(TARGET)
                samples[PIPE].append(timed(pipe) / rows * 1e9)
                empty(TARGET)
                samples[DUMP].append(
                    timed(lambda: dump_and_load(dump_rows, directory)) / dump_rows * 1e9
                )
                empty(TARGET)
                samples[COPY].append(timed(lambda: fleet_copy(TARGET)) / rows * 1e9)
                samples[READ].append(timed(read_both) / rows * 1e9)
                samples[VERIFY].append(timed(verify) / rows * 1e9)
        for name, alias in ((INTO_SQLITE, SQLITE), (INTO_MARIADB, MARIADB)):
            if alias in targets:
                started = time.perf_counter()
                fleet_copy(alias)
                once[name] = (time.perf_counter() - started) / rows * 1e9
        times, catch_up = moved(rows)
        once |= times
    finally:
        connections.close_all()
        with connect() as server:
            for alias in (SOURCE, TARGET):
                server.execute(f"DROP DATABASE IF EXISTS dbfleet_bench_{alias} WITH (FORCE)")
        if os.path.exists(sqlite_file):
            os.remove(sqlite_file)
        if not no_mariadb:
            drop_mariadb()
            connections[MARIADB].close()
    met = report(
        f"fleet copy and fleet verify, {rows:,} rows of 6 columns (dumpdata | loaddata: the "
        f"first {dump_rows:,}); {rounds} interleaved round(s), time per row",
        samples,
        unit=NS,
        ratios=[
            Ratio(COPY, PIPE, at_most=2.0),
            Ratio(COPY, DUMP, at_most=0.02),
            Ratio(VERIFY, READ, at_most=2.0),
        ],
        note=rates(samples, once, no_mariadb) + "\n" + catch_up,
    )
    return met


def moved(rows: int) -> tuple[dict[str, float], str]:
    """``fleet move``'s start and a catch-up of 5% of the rows, ns per row (the catch-up's
    per changed row), and the full copy again that it saves."""
    from dbfleet.moving import move
    from dbfleet.moving.copy import copy_models

    empty(TARGET)
    started = time.perf_counter()
    report = move.start(
        ["bookshop.MoveRow"], TARGET, SOURCE, batch_size=10_000, progress=lambda copy: None
    )
    result = {MOVE: (time.perf_counter() - started) / rows * 1e9}
    changed = rows // 20
    with connections[SOURCE].cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET reading = reading + 1 WHERE id % 20 = 0")
    started = time.perf_counter()
    if len(move.catch_up(report.move)) != changed:
        raise RuntimeError("the catch-up did not apply one change per updated row")
    result[CATCH_UP] = (time.perf_counter() - started) / changed * 1e9
    move.check(report, exact=True)
    move.abort(["bookshop.MoveRow"])
    started = time.perf_counter()
    copy_models(["bookshop.MoveRow"], TARGET, SOURCE, replace=True)
    result[RECOPY] = (time.perf_counter() - started) / rows * 1e9
    return result, (
        f"{CATCH_UP}: {result[CATCH_UP] * changed / 1e9:.2f} s for {changed:,} changes, "
        f"{result[CATCH_UP] * changed / (result[RECOPY] * rows):.3f}x the time of {RECOPY}"
    )


def rates(samples: dict[str, list[float]], once: dict[str, float], no_mariadb: str | None) -> str:
    import statistics

    lines = [
        f"{name}: {1e9 / statistics.median(values):,.0f} rows/s" for name, values in samples.items()
    ]
    lines += [f"{name} (one run): {1e9 / ns:,.0f} rows/s" for name, ns in once.items()]
    if no_mariadb:
        lines.append(f"{INTO_MARIADB}: not run: {no_mariadb}")
    return "\n".join(lines)
