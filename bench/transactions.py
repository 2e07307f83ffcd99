"""transactions: commit latency of a small write to two PostgreSQL databases.

Each timed operation is one transaction that inserts one row in each database
it covers: ``dbfleet.atomic("tx_a")`` alone; ``dbfleet.atomic("tx_a", "tx_b")``
committing one database after the other (best effort); and the same with
``two_phase=True``, once with the decision log (``DEFAULT_DATABASE``) among
the two databases and once on a third one. Every commit waits for the server
to flush its log to disk (PostgreSQL's defaults), as in production.
"""

from __future__ import annotations

import statistics

from django.core.management import call_command
from django.db import connections
from django.test import override_settings
from rich.console import Group

import dbfleet
from bench.postgres import connect, require_server
from bench.timing import US, Case, Ratio, console, measure, report

ONE = "one database"
BEST_EFFORT = "two databases, best effort"
TWO_PHASE = "two databases, two-phase (decision log in one of them)"
TWO_PHASE_ELSEWHERE = "two databases, two-phase (decision log on a third)"
ALIASES = ("tx_a", "tx_b", "tx_c")


def database_name(alias: str) -> str:
    return str(connections[alias].settings_dict["NAME"])


def create_databases() -> None:
    drop_databases()
    with connect() as server:
        for alias in ALIASES:
            server.execute(f"CREATE DATABASE {database_name(alias)}")
    for alias in ALIASES:
        with connections[alias].cursor() as cursor:
            cursor.execute("CREATE TABLE bench_write (id bigserial PRIMARY KEY, n integer)")
    call_command("migrate", "dbfleet", database="tx_a", verbosity=0)  # The decision log.


def drop_databases() -> None:
    for alias in ALIASES:
        connections[alias].close()
    with connect() as server:
        for alias in ALIASES:
            server.execute(f"DROP DATABASE IF EXISTS {database_name(alias)} WITH (FORCE)")


def transaction(*aliases: str, two_phase: bool = False) -> Case:
    def run(n: int) -> None:
        for number in range(n):
            with dbfleet.atomic(*aliases, two_phase=two_phase):
                for alias in aliases:
                    with connections[alias].cursor() as cursor:
                        cursor.execute("INSERT INTO bench_write (n) VALUES (%s)", [number])

    return Case(
        {
            ("tx_a",): ONE,
            ("tx_a", "tx_b"): TWO_PHASE if two_phase else BEST_EFFORT,
            ("tx_b", "tx_c"): TWO_PHASE_ELSEWHERE,
        }[aliases],
        run,
    )


def run(quick: bool) -> bool:
    console.rule("transactions")
    require_server(two_phase=True)
    with override_settings(
        DATABASE_ROUTERS=["dbfleet.Router"], DBFLEET={"DEFAULT_DATABASE": "tx_a"}
    ):
        create_databases()
        try:
            cases = [
                transaction("tx_a"),
                transaction("tx_a", "tx_b"),
                transaction("tx_a", "tx_b", two_phase=True),
                transaction("tx_b", "tx_c", two_phase=True),
            ]
            samples = measure(cases, rounds=5 if quick else 41, batch=5 if quick else 20)
            with connections["tx_a"].cursor() as cursor:
                cursor.execute("SELECT count(*) FROM dbfleet_decision")
                (left,) = cursor.fetchone()
            with connections["tx_c"].cursor() as cursor:
                cursor.execute("SELECT count(*) FROM bench_write")
                (written,) = cursor.fetchone()
        finally:
            drop_databases()
    per_commit = statistics.median(samples[TWO_PHASE]) - statistics.median(samples[BEST_EFFORT])
    return report(
        "Commit latency: one INSERT in each database, then commit (PostgreSQL, same server)",
        samples,
        unit=US,
        ratios=[
            Ratio(BEST_EFFORT, ONE),
            Ratio(TWO_PHASE, BEST_EFFORT, at_most=2.5),
            Ratio(TWO_PHASE_ELSEWHERE, BEST_EFFORT),
        ],
        note=Group(
            f"Two-phase commit adds {US.format(per_commit)} a transaction here. "
            f"Decision records left behind: {left} (each is deleted once its transaction "
            f"is committed everywhere); rows written on tx_c: {written}."
        ),
    )
