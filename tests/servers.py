"""Direct DB-API connections to the test servers, for tests that work past Django."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

import dj_database_url

from tests.settings import MYSQL_URL, POSTGRES_URL

SERVER_URLS = {"postgres": POSTGRES_URL, "mysql": MYSQL_URL}


def server_connection(url: str, database: str | None = None) -> Any:
    """A DB-API connection to the server at ``url`` (a server URL, no database in it)."""
    config = dj_database_url.parse(url)
    options: dict[str, Any] = {
        "host": config.get("HOST"),
        "port": int(config.get("PORT") or 0) or None,
        "user": config.get("USER"),
        "password": config.get("PASSWORD"),
    }
    options = {key: value for key, value in options.items() if value}
    if url.startswith("postgres"):
        import psycopg

        return psycopg.connect(dbname=database or "postgres", autocommit=True, **options)
    import MySQLdb  # type: ignore[import-untyped]

    if database:
        options["database"] = database
    return MySQLdb.connect(charset="utf8mb4", autocommit=True, **options)


def recreate(engine: str, name: str, *, create: bool = True) -> None:
    """Drop the server database ``name`` if it exists, then create it unless told not to."""
    with closing(server_connection(SERVER_URLS[engine])) as connection:
        cursor = connection.cursor()
        cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        if create:
            charset = " CHARACTER SET utf8mb4" if engine == "mysql" else ""
            cursor.execute(f"CREATE DATABASE {name}{charset}")


@contextmanager
def scratch_postgres(port: int = 5499) -> Iterator[str]:
    """A new, empty PostgreSQL cluster with default settings; yields its server URL."""
    bindir = subprocess.check_output(["pg_config", "--bindir"], text=True).strip()
    # PostgreSQL refuses to run as root: run it as the postgres user then.
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    with tempfile.TemporaryDirectory() as directory:
        if as_owner:
            shutil.chown(directory, "postgres")
        data = os.path.join(directory, "data")
        subprocess.run(
            [*as_owner, f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres"],
            check=True, capture_output=True,
        )  # fmt: skip
        options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1"
        pg_ctl = [*as_owner, f"{bindir}/pg_ctl", "-D", data]
        subprocess.run(
            [*pg_ctl, "-o", options, "-l", os.path.join(directory, "log"), "-w", "start"],
            check=True, capture_output=True,
        )  # fmt: skip
        try:
            yield f"postgres://postgres@127.0.0.1:{port}"
        finally:
            subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
