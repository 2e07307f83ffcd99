"""django-clickhouse-backend's backend on ClickHouse embedded in the process (chDB).

``NAME`` is a ClickHouse database in the data directory ``OPTIONS["path"]`` (created
on first connection, as SQLite creates its file), so the test database,
``test_NAME``, sits beside the development one. ``OPTIONS["settings"]`` are session
settings (``{"mutations_sync": 1}``: an UPDATE or DELETE returns once it is done).
Everything else is django-clickhouse-backend's (fields, engines, migrations,
queries), on the connection of ``dbfleet.backends.chdb.dbapi``. chDB itself is
imported only when the first connection opens.
"""

from __future__ import annotations

import os
from typing import Any

from dbfleet.backends import require

require("chdb", "clickhouse_backend")

from clickhouse_backend.backend import base  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.db.utils import NotSupportedError  # noqa: E402
from django.utils.asyncio import async_unsafe  # noqa: E402

from dbfleet.backends.chdb import dbapi  # noqa: E402
from dbfleet.backends.clickhouse.base import DatabaseCreation as ServerCreation  # noqa: E402
from dbfleet.backends.nominal import NominalTransactions  # noqa: E402

#: The keys of ``OPTIONS`` this backend reads.
OPTIONS = ("path", "settings")


class DatabaseCreation(ServerCreation):
    def _clone_test_db(self, suffix: str, verbosity: int, keepdb: bool = False) -> None:
        raise NotSupportedError(
            f"Database {self.connection.alias!r} is on chDB, which runs in one process: the "
            "processes of a parallel test run cannot share it. Run the tests without "
            "--parallel (or with --parallel 1), or point this database at a ClickHouse server "
            "(ENGINE 'dbfleet.backends.clickhouse') for parallel runs."
        )


class DatabaseWrapper(NominalTransactions, base.DatabaseWrapper):  # type: ignore[misc]
    """ClickHouse in this process: a database of the chDB data directory ``OPTIONS["path"]``."""

    display_name = "ClickHouse (chDB)"
    Database = dbapi
    creation_class = DatabaseCreation

    def get_connection_params(self) -> dict[str, Any]:
        options = dict(self.settings_dict.get("OPTIONS") or {})
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ImproperlyConfigured(
                f"DATABASES[{self.alias!r}]['OPTIONS'] has {', '.join(map(repr, unknown))}, "
                f"which 'dbfleet.backends.chdb' does not read; it reads {OPTIONS!r}."
            )
        path = options.get("path")
        if not path:
            raise ImproperlyConfigured(
                f"DATABASES[{self.alias!r}] is on chDB and needs its data directory: set "
                f"DATABASES[{self.alias!r}]['OPTIONS']['path'] (say BASE_DIR / 'var' / "
                "'warehouse'); NAME is a database inside it."
            )
        settings = options.get("settings") or {}
        if not isinstance(settings, dict):
            raise ImproperlyConfigured(
                f"DATABASES[{self.alias!r}]['OPTIONS']['settings'] must be a dict of ClickHouse "
                f"settings, such as {{'mutations_sync': 1}}, not {settings!r}."
            )
        return {
            "path": os.path.abspath(os.fspath(path)),
            "database": self.settings_dict["NAME"] or "default",
            "settings": settings,
        }

    @async_unsafe
    def get_new_connection(self, conn_params: dict[str, Any]) -> dbapi.Connection:
        return dbapi.connect(**conn_params)

    def _close(self) -> None:
        # Not a no-op, as django-clickhouse-backend's (its server connections are shared):
        # the last connection closed stops the embedded server and frees the directory.
        if self.connection is not None:
            self.connection.close()
