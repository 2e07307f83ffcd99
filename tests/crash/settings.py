"""Settings for the crash tests' child processes: four databases on two servers.

``default`` (PostgreSQL) keeps the decision log; ``pg2`` and ``pg3`` are more
PostgreSQL databases and ``maria`` a MariaDB one. Each holds a ``ledger`` table.
"""

from __future__ import annotations

from typing import Any

import dj_database_url

from tests.settings import MYSQL_URL, POSTGRES_URL
from tests.settings import PREFIX as TEST_PREFIX

#: ``dbfleet_crash`` unless DBFLEET_TEST_PREFIX says otherwise, so that two runs keep apart.
PREFIX = f"{TEST_PREFIX}_crash"
ENGINES = {"default": "postgres", "pg2": "postgres", "pg3": "postgres", "maria": "mysql"}


def database(alias: str) -> dict[str, Any]:
    url = POSTGRES_URL if ENGINES[alias] == "postgres" else MYSQL_URL
    return dict(dj_database_url.parse(f"{url}/{PREFIX}_{alias}"))


DATABASES = {alias: database(alias) for alias in ENGINES}
DATABASE_ROUTERS = ["dbfleet.Router"]
DBFLEET: dict[str, Any] = {}
INSTALLED_APPS = ["dbfleet"]
SECRET_KEY = "dbfleet-crash-tests"
USE_TZ = True
