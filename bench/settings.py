"""Settings for the benchmarks: every alias is an in-memory SQLite database.

The benchmarks install their own ``DATABASE_ROUTERS`` and ``DBFLEET`` (with
``override_settings``), so each one states the routing it measures.
"""

from __future__ import annotations

from typing import Any

#: The primaries of the large fleet in the router-cost benchmark; each has a replica.
FLEET_PRIMARIES = tuple(f"fleet{index}" for index in range(10))


def memory_database(**extra: Any) -> dict[str, Any]:
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:", **extra}


DATABASES = {
    "default": memory_database(),
    "books": memory_database(),
    **{primary: memory_database() for primary in FLEET_PRIMARIES},
    **{
        f"{primary}_replica": memory_database(TEST={"MIRROR": primary})
        for primary in FLEET_PRIMARIES
    },
}
DATABASE_ROUTERS: list[str] = []
INSTALLED_APPS = ["dbfleet", "bench.bookshop", "bench.manymodels"]
SECRET_KEY = "dbfleet-bench"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
