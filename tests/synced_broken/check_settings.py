"""Every problem of synced models that dbfleet's system checks find, at once (tests/test_checks.py).

Run by ``python -m django check --tag dbfleet`` in a process of its own: these models
load django-clickhouse-backend, which the suite's own process must not. Nothing connects.
"""

from __future__ import annotations

import os
import tempfile

DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    "warehouse": {
        "ENGINE": "dbfleet.backends.chdb",
        "NAME": "analytics",
        "OPTIONS": {"path": os.path.join(tempfile.gettempdir(), "dbfleet_synced_broken")},
    },
}
DATABASE_ROUTERS = ["dbfleet.Router"]
DBFLEET = {
    "ROUTES": {
        "synced_broken": "warehouse",
        "synced_broken.Thing": "default",
        "synced_broken.Misplaced": "default",
    }
}
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "dbfleet",
    "tests.synced_broken",
]
SECRET_KEY = "dbfleet-tests"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
