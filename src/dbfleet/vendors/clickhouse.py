"""ClickHouse (a server, or embedded through chDB): no transactions, no two-phase, no replicas."""

from __future__ import annotations

from typing import Any

from dbfleet.vendors.base import Vendor

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
