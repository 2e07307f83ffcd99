"""Settings of the analytics benchmark (``bench/analytics.py`` runs it in a process of its own).

``default`` is PostgreSQL (``dbfleet_bench_sales``), ``warehouse`` embedded ClickHouse
(chDB) in ``DBFLEET_BENCH_CHDB_DIR``. A process of its own: chDB allows one data
directory per process and must not be loaded where the other benchmarks fork.
"""

from __future__ import annotations

import os
import tempfile

import dj_database_url

from bench.settings import POSTGRES_URL

DATABASES = {
    "default": dict(dj_database_url.parse(f"{POSTGRES_URL}/dbfleet_bench_sales")),
    "warehouse": {
        "ENGINE": "dbfleet.backends.chdb",
        "NAME": "dbfleet_bench_sales",
        "OPTIONS": {
            "path": os.environ.get("DBFLEET_BENCH_CHDB_DIR")
            or os.path.join(tempfile.gettempdir(), "dbfleet_bench_chdb"),
            "settings": {"mutations_sync": 1},
        },
    },
}
DATABASE_ROUTERS = ["dbfleet.Router"]
DBFLEET = {"ROUTES": {"sales.SaleFact": "warehouse", "sales.Sale": "default"}}
INSTALLED_APPS = ["dbfleet", "bench.sales"]
SECRET_KEY = "dbfleet-bench"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
