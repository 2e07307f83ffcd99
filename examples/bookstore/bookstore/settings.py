"""Settings for the bookstore example.

Each database comes from an environment variable holding a URL
(``BOOKSTORE_DEFAULT_URL``, ``BOOKSTORE_BOOKS_URL``); unset, it is a SQLite
file in ``BOOKSTORE_DATA_DIR`` (default: ``examples/bookstore/var/``), so the
example runs with no server at all.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from dj_database_url import DBConfig

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("BOOKSTORE_DATA_DIR", BASE_DIR / "var")).resolve()


def database(alias: str) -> DBConfig:
    """The settings of ``alias``: from ``BOOKSTORE_<ALIAS>_URL``, else a SQLite file."""
    url = os.environ.get(f"BOOKSTORE_{alias.upper()}_URL")
    if not url:
        # SQLite creates the file but not the directory it goes in.
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(DATA_DIR / f"{alias}.sqlite3")}
    config = dj_database_url.parse(url)
    # A server that never answers fails the connection in seconds (dbfleet.W006).
    config["OPTIONS"] = {"connect_timeout": 5, **config.get("OPTIONS", {})}
    if config["ENGINE"] == "django.db.backends.mysql":
        # MySQL's "utf8" cannot store every character; utf8mb4 can.
        config["OPTIONS"] = {"charset": "utf8mb4", **config.get("OPTIONS", {})}
    return config


DATABASES = {"default": database("default"), "books": database("books")}
# A stand-in for a streaming replica of "default": the same database, under another
# alias, so that the demo can show where reads go without a second server.
DATABASES["replica"] = DBConfig(**DATABASES["default"])

# The whole router: Author is unrouted, so it stays in "default" (read from its replica).
DATABASE_ROUTERS = ["dbfleet.Router"]
# The write guard is on by itself when DEBUG is; the demo turns it on to show it.
DBFLEET = {
    "ROUTES": {"books.Book": "books"},
    "REPLICAS": {"default": ["replica"]},
    "WRITE_GUARD": "warn",
}
MIDDLEWARE = ["dbfleet.replicas.ReadYourWritesMiddleware"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "dbfleet",
    "books",
]

SECRET_KEY = "bookstore-example-not-secret"
DEBUG = False
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
