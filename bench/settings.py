"""Settings for the benchmarks: every alias is an in-memory SQLite database.

The benchmarks install their own ``DATABASE_ROUTERS`` and ``DBFLEET`` (with
``override_settings``), so each one states the routing it measures.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import dj_database_url

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
#: The replicas benchmark: a primary, its replica and a plain alias, all on one SQLite
#: database in memory (shared cache), so every alias reads the same rows.
SHOP = {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": "file:dbfleet_bench_shop?mode=memory&cache=shared",
}
DATABASES.update({alias: dict(SHOP) for alias in ("shop", "shop_replica", "shop_plain")})
#: The transactions benchmark's PostgreSQL databases (connected to only when it runs).
POSTGRES_URL = os.environ.get(
    "DBFLEET_BENCH_POSTGRES_URL",
    os.environ.get("DBFLEET_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432"),
)
TRANSACTION_ALIASES = ("tx_a", "tx_b", "tx_c")
DATABASES.update(
    {
        alias: dict(dj_database_url.parse(f"{POSTGRES_URL}/dbfleet_bench_{alias}"))
        for alias in TRANSACTION_ALIASES
    }
)
#: The sharding benchmark's PostgreSQL databases: a shard group of eight, and one more
#: that holds every row of the group (created, filled and dropped by the benchmark).
#: The shards keep their connections (CONN_MAX_AGE), as in production; the same eight
#: databases under a second set of aliases have Django's default, CONN_MAX_AGE = 0.
SHARD_ALIASES = tuple(f"shard{index}" for index in range(8))
SHARD_ALIASES_AGE_0 = tuple(f"{alias}_age0" for alias in SHARD_ALIASES)
SHARD_ALL = "shard_all"
DATABASES.update(
    {
        alias: dict(
            dj_database_url.parse(f"{POSTGRES_URL}/dbfleet_bench_{alias}"), CONN_MAX_AGE=600
        )
        for alias in (*SHARD_ALIASES, SHARD_ALL)
    }
)
DATABASES.update(
    {
        again: dict(dj_database_url.parse(f"{POSTGRES_URL}/dbfleet_bench_{alias}"))
        for alias, again in zip(SHARD_ALIASES, SHARD_ALIASES_AGE_0, strict=True)
    }
)
#: The moving benchmark's databases: PostgreSQL source and target, MariaDB and SQLite targets.
MYSQL_URL = os.environ.get(
    "DBFLEET_BENCH_MYSQL_URL",
    os.environ.get("DBFLEET_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306"),
)
MOVE_ALIASES = ("move_a", "move_b")
DATABASES.update(
    {
        alias: dict(dj_database_url.parse(f"{POSTGRES_URL}/dbfleet_bench_{alias}"))
        for alias in MOVE_ALIASES
    }
)
DATABASES["move_mariadb"] = {
    **dj_database_url.parse(f"{MYSQL_URL}/dbfleet_bench_move"),
    "OPTIONS": {"charset": "utf8mb4"},
}
DATABASES["move_sqlite"] = {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": os.path.join(tempfile.gettempdir(), "dbfleet_bench_move.sqlite3"),
}
DATABASE_ROUTERS: list[str] = []
INSTALLED_APPS = ["dbfleet", "bench.bookshop", "bench.manymodels", "bench.shardshop"]
SECRET_KEY = "dbfleet-bench"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
