"""Every ClickHouse problem dbfleet's system checks find, at once (tests/test_checks.py).

Run by ``python -m django check --tag dbfleet`` in a process of its own: reading
these settings loads django-clickhouse-backend, which the suite's own process
must not (it patches Django). Nothing connects.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

DIRECTORY = os.environ.get("DBFLEET_CHECK_DIR") or tempfile.gettempdir()


def chdb(path: str | None) -> dict[str, Any]:
    return {
        "ENGINE": "dbfleet.backends.chdb",
        "NAME": "analytics",
        "OPTIONS": {"path": os.path.join(DIRECTORY, path)} if path else {},
    }


def server(port: int) -> dict[str, Any]:
    return {"ENGINE": "dbfleet.backends.clickhouse", "HOST": "127.0.0.1", "PORT": port}


DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    "warehouse": chdb("one"),  # E045, a primary with a replica; E049 with "archive"
    "archive": chdb("two"),  # E046; E049
    "nopath": chdb(None),  # E048
    "mirror": server(1),  # E045, a replica
    "events": server(2),  # E047
}
DATABASE_ROUTERS = ["dbfleet.Router"]
DBFLEET = {
    "REPLICAS": {"warehouse": ["mirror"]},
    "SHARDS": {"logs": {"databases": ["archive"]}},
    "DEFAULT_DATABASE": "events",
}
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "dbfleet"]
SECRET_KEY = "dbfleet-tests"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
