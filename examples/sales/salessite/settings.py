"""Settings for the sales example: orders in SQLite, their copy in embedded ClickHouse.

The files go to ``SALES_DATA_DIR`` (default: ``examples/sales/var/``): ``default`` is
a SQLite file, ``warehouse`` a ClickHouse database in chDB's data directory there.
Nothing here needs a server; chDB comes with ``pip install 'django-dbfleet[chdb]'``.
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("SALES_DATA_DIR", BASE_DIR / "var")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(DATA_DIR / "shop.sqlite3")},
    "warehouse": {
        "ENGINE": "dbfleet.backends.chdb",
        "NAME": "sales",
        # ALTER TABLE ... UPDATE/DELETE return once applied (ClickHouse's mutations).
        "OPTIONS": {"path": str(DATA_DIR / "chdb"), "settings": {"mutations_sync": 1}},
    },
}

DATABASE_ROUTERS = ["dbfleet.Router"]
DBFLEET = {"ROUTES": {"sales.OrderFact": "warehouse"}}

INSTALLED_APPS = ["dbfleet", "sales"]

SECRET_KEY = "sales-example-not-secret"
DEBUG = False
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
