"""The PostgreSQL server of the benchmarks that need one (``migrate``, ``transactions``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

import dj_database_url
import psycopg

from bench.timing import Unavailable

SERVER_URL = os.environ.get(
    "DBFLEET_BENCH_POSTGRES_URL",
    os.environ.get("DBFLEET_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432"),
)


def server_settings() -> dict[str, Any]:
    """HOST, PORT, USER and PASSWORD of the PostgreSQL server, from its URL."""
    config = dj_database_url.parse(f"{SERVER_URL}/postgres")
    return {key: config[key] for key in ("HOST", "PORT", "USER", "PASSWORD") if config.get(key)}


@contextmanager
def connect(name: str = "postgres") -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the server database ``name``."""
    config = server_settings()
    options = {"host": "HOST", "port": "PORT", "user": "USER", "password": "PASSWORD"}
    found = {option: config[key] for option, key in options.items() if key in config}
    with closing(psycopg.connect(dbname=name, autocommit=True, **found)) as connection:
        yield connection


def require_server(*, two_phase: bool = False) -> None:
    """Raise ``Unavailable``, saying how to fix it, unless the server can run the benchmark."""
    config = server_settings()
    where = f"{config.get('HOST', 'localhost')}:{config.get('PORT', 5432)}"
    try:
        with connect() as connection:
            row = connection.execute("SHOW max_prepared_transactions").fetchone()
    except psycopg.Error as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise Unavailable(
            f"needs PostgreSQL at {where} ({reason}); start it, or point "
            "DBFLEET_BENCH_POSTGRES_URL at one"
        ) from None
    if two_phase and row is not None and int(row[0]) == 0:
        raise Unavailable(
            f"two-phase commit needs prepared transactions, which PostgreSQL at {where} has "
            "off (max_prepared_transactions = 0): run ALTER SYSTEM SET "
            "max_prepared_transactions = 64 and restart the server"
        )
