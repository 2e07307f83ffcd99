"""Direct DB-API connections to the test servers, for tests that work past Django."""

from __future__ import annotations

from contextlib import closing
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
