"""Settings for the test suite.

``DBFLEET_TEST_DATABASES`` picks the engines behind the aliases:

- ``sqlite`` (default): every alias on SQLite; no server needed.
- ``postgres`` / ``mysql``: every alias on that server.
- ``mixed``: ``default`` on PostgreSQL, ``books`` on MariaDB, ``loans`` on SQLite.
- ``replication``: ``default`` on a PostgreSQL cluster the run creates, with a real
  streaming replica ``replica1``; ``books`` and ``loans`` on SQLite. Only
  ``tests/replication`` runs in it.
- ``analytics``: ``default`` on PostgreSQL, ``books`` and ``loans`` on SQLite, and
  ``warehouse`` on embedded ClickHouse (chDB) with the ``tests.warehouse`` app routed
  to it. Its data directory is ``DBFLEET_TEST_CHDB_DIR`` (default: ``PREFIX_chdb`` in the
  temporary directory). Only the ClickHouse tests run in it: chDB must not be loaded in
  a process that forks, as the crash tests do.

Servers are found at ``DBFLEET_TEST_POSTGRES_URL`` (default
``postgres://postgres@127.0.0.1:5432``) and ``DBFLEET_TEST_MYSQL_URL`` (default
``mysql://root@127.0.0.1:3306``). ``DBFLEET_TEST_PREFIX`` (default ``dbfleet``) names the
databases, so that two runs on one server keep apart.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from typing import Any

import dj_database_url
import pytest

CONFIGURATION = os.environ.get("DBFLEET_TEST_DATABASES", "sqlite")
POSTGRES_URL = os.environ.get("DBFLEET_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
MYSQL_URL = os.environ.get("DBFLEET_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306")
PREFIX = os.environ.get("DBFLEET_TEST_PREFIX", "dbfleet")
#: Ports of the primary and the streaming replica the replication configuration creates.
STREAMING_PORTS = (5497, 5498)
if CONFIGURATION == "replication":
    POSTGRES_URL = f"postgres://postgres@127.0.0.1:{STREAMING_PORTS[0]}"
ENGINES = {
    "sqlite": {"default": "sqlite", "books": "sqlite", "loans": "sqlite"},
    "postgres": {"default": "postgres", "books": "postgres", "loans": "postgres"},
    "mysql": {"default": "mysql", "books": "mysql", "loans": "mysql"},
    "mixed": {"default": "postgres", "books": "mysql", "loans": "sqlite"},
    "replication": {"default": "postgres", "books": "sqlite", "loans": "sqlite"},
    "analytics": {"default": "postgres", "books": "sqlite", "loans": "sqlite", "warehouse": "chdb"},
}[CONFIGURATION]
#: chDB's data directory (one per process): the analytics configuration's ClickHouse databases.
CHDB_DIR = os.environ.get("DBFLEET_TEST_CHDB_DIR") or os.path.join(
    tempfile.gettempdir(), f"{PREFIX}_chdb"
)


def database(alias: str, prefix: str = PREFIX, directory: str = "") -> dict[str, Any]:
    """Settings for ``alias`` on its configured engine, named ``{prefix}_{alias}``."""
    engine = ENGINES[alias]
    if engine == "sqlite":
        name = os.path.join(directory, f"{prefix}_{alias}.sqlite3")
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": name}
    if engine == "chdb":
        # A database in chDB's data directory; UPDATE and DELETE return once applied.
        path = os.path.join(directory, "chdb") if directory else CHDB_DIR
        options = {"path": path, "settings": {"mutations_sync": 1}}
        return {"ENGINE": "dbfleet.backends.chdb", "NAME": f"{prefix}_{alias}", "OPTIONS": options}
    url = POSTGRES_URL if engine == "postgres" else MYSQL_URL
    config: dict[str, Any] = dict(dj_database_url.parse(f"{url}/{prefix}_{alias}"))
    # A server that never answers fails a connection in seconds (dbfleet.W006).
    config["OPTIONS"] = {"connect_timeout": 10}
    if engine == "mysql":
        config["OPTIONS"]["charset"] = "utf8mb4"
        config["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
    return config


if "mysql" in ENGINES.values() and importlib.util.find_spec("MySQLdb") is None:
    # pytest-django sets Django up before any conftest could skip: say it in one line.
    raise pytest.UsageError(
        f"The {CONFIGURATION!r} configuration needs mysqlclient, which is not installed: "
        "apt-get install libmariadb-dev pkg-config gcc, then run python3 dev.py test again "
        "(it builds mysqlclient once the headers are there)."
    )
DATABASES = {alias: database(alias) for alias in ENGINES}
if CONFIGURATION == "replication":
    # It reads the primary's test database, which streaming replication copies.
    REPLICA = "replica1"
    DATABASES[REPLICA] = {
        **DATABASES["default"],
        "NAME": f"test_{PREFIX}_default",
        "PORT": STREAMING_PORTS[1],
        "TEST": {"MIRROR": "default"},
    }
else:
    REPLICA = "replica"
    DATABASES[REPLICA] = {**DATABASES["default"], "TEST": {"MIRROR": "default"}}

DATABASE_ROUTERS = ["dbfleet.Router"]
ROUTES = {
    "library.Book": "books",
    "library.Review": "books",
    "loans": "loans",
    "bank.Vault": "books",
}
if "warehouse" in ENGINES:
    from tests.synced import ROUTES as SYNCED_ROUTES

    ROUTES["warehouse"] = "warehouse"
    ROUTES.update(SYNCED_ROUTES)
DBFLEET = {"ROUTES": ROUTES, "REPLICAS": {"default": [REPLICA]}, "WRITE_GUARD": "raise"}

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.admin",
    "dbfleet",
    "tests.library",
    "tests.loans",
    "tests.bank",
    "tests.shop",
    "tests.moving",
    *(["tests.warehouse", "tests.synced"] if "warehouse" in ENGINES else []),
]
SECRET_KEY = "dbfleet-tests"
# What the admin needs (tests/test_admin.py drives it through its views).
ROOT_URLCONF = "tests.admin_urls"
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
