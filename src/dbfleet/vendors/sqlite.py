"""SQLite: no prepared transactions, no replication."""

from __future__ import annotations

from dbfleet.vendors.base import Vendor


class SQLite(Vendor):
    name = "sqlite"
