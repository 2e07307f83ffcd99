"""What differs per engine, one module each; ``of(connection)`` picks it.

Everything that is spelt differently on PostgreSQL, MariaDB/MySQL, SQLite and
ClickHouse (transactions or none, prepared transactions, in-doubt listings,
replication positions, replica status, error codes) lives here, so that the rest
of dbfleet asks one question and never tests a vendor itself.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from django.db import DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.utils import load_backend

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
from dbfleet.vendors.clickhouse import EMBEDDED_ENGINE, ClickHouse
from dbfleet.vendors.clickhouse import ENGINES as CLICKHOUSE_ENGINES
from dbfleet.vendors.mysql import MySQL
from dbfleet.vendors.postgresql import PostgreSQL
from dbfleet.vendors.sqlite import SQLite

VENDORS: dict[str, type[Vendor]] = {
    vendor.name: vendor for vendor in (PostgreSQL, MySQL, SQLite, ClickHouse)
}


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


def of_settings(settings_dict: dict[str, Any]) -> type[Vendor]:
    """The vendor of a ``DATABASES`` entry, from its ``ENGINE``, without connecting.

    A ClickHouse backend is known by name, unimported (django-clickhouse-backend
    patches Django when imported); any other is loaded, as Django would load it.
    """
    engine = str(settings_dict.get("ENGINE", ""))
    if engine in CLICKHOUSE_ENGINES:
        return ClickHouse
    return of_engine(load_backend(engine).DatabaseWrapper.vendor)


def embedded_data_directory(settings_dict: dict[str, Any]) -> str | None:
    """The chDB data directory of a ``DATABASES`` entry ("" when it names none); None: not chDB."""
    if settings_dict.get("ENGINE") != EMBEDDED_ENGINE:
        return None
    path = (settings_dict.get("OPTIONS") or {}).get("path")
    return os.path.abspath(os.fspath(path)) if path else ""


__all__ = [
    "CURRENT",
    "VENDORS",
    "ClickHouse",
    "ReplicaStatus",
    "Vendor",
    "embedded_data_directory",
    "literal",
    "of",
    "of_engine",
    "of_settings",
    "probing",
    "query",
    "raw",
    "raw_commit",
    "raw_rollback",
]
