"""SQLite: no prepared transactions, no replication."""

from __future__ import annotations

from typing import Any

from dbfleet.vendors.base import Vendor


class SQLite(Vendor):
    name = "sqlite"
    replicates = False

    @staticmethod
    def probe_options(options: dict[str, Any], seconds: float) -> dict[str, Any]:
        return {**options, "timeout": seconds}  # how long to wait for a lock
