"""Settings for the shop example: a shard group of four SQLite files, and ``default``.

The files go to ``SHOP_DATA_DIR`` (default: ``examples/shop/var/``); nothing
here needs a server. ``default`` holds what is not sharded (dbfleet's own
decision log); ``shop.Customer`` and ``shop.Order`` are spread over
``shard0`` ... ``shard3`` by the customer's id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("SHOP_DATA_DIR", BASE_DIR / "var")).resolve()
SHARDS = ["shard0", "shard1", "shard2", "shard3"]


def sqlite_file(alias: str) -> dict[str, Any]:
    # SQLite creates the file but not the directory it goes in.
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(DATA_DIR / f"{alias}.sqlite3")}


DATABASES = {alias: sqlite_file(alias) for alias in ("default", *SHARDS)}

DATABASE_ROUTERS = ["dbfleet.Router"]
DBFLEET = {
    "SHARDS": {
        "customers": {
            "databases": SHARDS,
            # A customer and its orders share a key, so they share a database.
            "keys": {"shop.Customer": "id", "shop.Order": "customer"},
            "slots": 1024,
        },
    },
}

INSTALLED_APPS = ["dbfleet", "shop"]

SECRET_KEY = "shop-example-not-secret"
DEBUG = False
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
