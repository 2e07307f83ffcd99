"""What differs per engine, one module each; ``of(connection)`` picks it.

Everything that is spelt differently on PostgreSQL, MariaDB/MySQL and SQLite
(prepared transactions, in-doubt listings, replication positions, replica
status, error codes) lives here, so that the rest of dbfleet asks one question
and never tests a vendor itself.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress

from django.db import DatabaseError, connections
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


@contextmanager
def probing(aliases: Iterable[str], seconds: float) -> Iterator[None]:
    """Within, ``connections[alias]`` of each alias gives up after ``seconds`` in this thread.

    dbfleet's own probes (replica health, recovery, status) run on these new
    connections, so that a server that accepts and never answers cannot hang
    them; each is closed at the end and the thread's own connection put back.
    """
    originals = {alias: connections[alias] for alias in dict.fromkeys(aliases)}
    try:
        for alias, original in originals.items():
            settings_dict = copy.deepcopy(original.settings_dict)
            # Not from the app's pool: Django keeps one per alias, which the probe's
            # timeouts would either miss or leak into.
            options = {k: v for k, v in (settings_dict.get("OPTIONS") or {}).items() if k != "pool"}
            settings_dict["OPTIONS"] = of(original).probe_options(options, seconds)
            connections[alias] = type(original)(settings_dict, alias)
        yield
    finally:
        for alias, original in originals.items():
            probe = connections[alias]
            connections[alias] = original
            if probe is not original:
                with suppress(DatabaseError):
                    probe.close()


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
    "probing",
    "query",
    "raw",
    "raw_commit",
    "raw_rollback",
]
