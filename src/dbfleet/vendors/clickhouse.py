"""ClickHouse (a server, or embedded through chDB): no transactions, no two-phase, no replicas."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any

from django.db import DatabaseError
from django.db.backends.base.base import BaseDatabaseWrapper

from dbfleet.vendors.base import Vendor

#: How ClickHouse reads PostgreSQL's COPY text: ``TabSeparated`` with its booleans, and
#: timestamps with their offset (``2026-01-01 10:00:00+00``).
TEXT_SETTINGS = (
    "date_time_input_format = 'best_effort', "
    "bool_true_representation = 't', bool_false_representation = 'f'"
)

#: The embedded engine's backend: ``OPTIONS["path"]`` is its data directory.
EMBEDDED_ENGINE = "dbfleet.backends.chdb"
#: Backends of ClickHouse, known without importing them: django-clickhouse-backend
#: patches Django when it is imported, which a project with no ClickHouse database
#: (or a check reading its settings) must not pay for.
ENGINES = frozenset({EMBEDDED_ENGINE, "dbfleet.backends.clickhouse", "clickhouse_backend.backend"})


class ClickHouse(Vendor):
    name = "clickhouse"
    #: Each statement takes effect as it runs; an atomic block over it is nominal.
    transactional = False
    #: A ClickHouse database is never one of dbfleet's replicas: it replicates on its own
    #: terms (ReplicatedMergeTree), table by table.
    replicates = False
    nulls_first = False

    @staticmethod
    def probe_options(options: dict[str, Any], seconds: float) -> dict[str, Any]:
        if "path" in options:
            return dict(options)  # Embedded: nothing to wait for but the engine itself.
        # clickhouse-driver's: connecting, each send and receive, and pings.
        timeouts = ("connect_timeout", "send_receive_timeout", "sync_request_timeout")
        return {**options, **dict.fromkeys(timeouts, seconds)}

    @staticmethod
    def insert_text(
        connection: BaseDatabaseWrapper,
        table: str,
        columns: Sequence[str],
        text: bytes,
        fixed: dict[str, Any],
    ) -> int | None:
        # chDB reads a local file in its own process, at its parser's speed; a server
        # cannot read this process's files (its backend inserts rows, as native blocks).
        if connection.settings_dict["ENGINE"] != EMBEDDED_ENGINE:
            return None
        if not text:
            return 0
        quote = connection.ops.quote_name
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT name, type FROM system.columns WHERE database = currentDatabase() "
                "AND table = %s",
                [table],
            )
            types = dict(cursor.fetchall())
            if missing := [name for name in columns if name not in types]:
                raise DatabaseError(
                    f"Table {table!r} on {connection.alias!r} has no column "
                    f"{missing[0]!r}: is it migrated (manage.py fleet migrate)?"
                )
            structure = ", ".join(f"{quote(name)} {types[name]}" for name in columns)
            names = ", ".join(quote(name) for name in [*columns, *fixed])
            selected = ", ".join([*(quote(name) for name in columns), *("%s" for _ in fixed)])
            with tempfile.NamedTemporaryFile(prefix="dbfleet-", suffix=".tsv") as file:
                file.write(text)
                file.flush()
                cursor.execute(
                    f"INSERT INTO {quote(table)} ({names}) SELECT {selected} "
                    f"FROM file(%s, 'TabSeparated', %s) SETTINGS {TEXT_SETTINGS}",
                    [*fixed.values(), file.name, structure],
                )
                written: int = cursor.rowcount
        return written
