"""What differs per engine, one module each; ``of(connection)`` picks it.

Everything that is spelt differently on PostgreSQL, MariaDB/MySQL and SQLite
(prepared transactions, in-doubt listings, replication positions, replica
status, error codes) lives here, so that the rest of dbfleet asks one question
and never tests a vendor itself.
"""

from __future__ import annotations

from django.db.backends.base.base import BaseDatabaseWrapper

from dbfleet.vendors.base import (
    CURRENT,
    ReplicaStatus,
    Vendor,
    literal,
    query,
    raw,
    raw_commit,
    raw_rollback,
)
from dbfleet.vendors.mysql import MySQL
from dbfleet.vendors.postgresql import PostgreSQL
from dbfleet.vendors.sqlite import SQLite

VENDORS: dict[str, type[Vendor]] = {vendor.name: vendor for vendor in (PostgreSQL, MySQL, SQLite)}


def of(connection: BaseDatabaseWrapper) -> type[Vendor]:
    """The vendor module of ``connection`` (the defaults for an engine dbfleet does not know)."""
    return VENDORS.get(connection.vendor, Vendor)


def of_engine(vendor: str) -> type[Vendor]:
    """The vendor called ``vendor`` (Django's ``connection.vendor``)."""
    return VENDORS.get(vendor, Vendor)


__all__ = [
    "CURRENT",
    "VENDORS",
    "ReplicaStatus",
    "Vendor",
    "literal",
    "of",
    "of_engine",
    "query",
    "raw",
    "raw_commit",
    "raw_rollback",
]
