"""Settings for the `fleet` subprocess tests: dedicated databases, migrated by workers.

Environment:
``DBFLEET_FLEET_DIR``: where the SQLite files go;
``DBFLEET_FLEET_PREFIX``: how the server databases are named (``dbfleet_fleet``);
``DBFLEET_FLEET_APPS``: extra apps and their database, ``"tests.broken=loans"``;
``DBFLEET_FLEET_DOWN``: an alias whose server is made unreachable (a closed port);
``DBFLEET_FLEET_MIGRATION_MODULES``: ``"library=tests.migration_cases.db_hint"``.
"""

from __future__ import annotations

import os

from tests.settings import *  # noqa: F403
from tests.settings import DBFLEET, ENGINES, INSTALLED_APPS, ROUTES, database

PREFIX = os.environ.get(
    "DBFLEET_FLEET_PREFIX", os.environ.get("DBFLEET_TEST_PREFIX", "dbfleet") + "_fleet"
)
#: Nothing listens here: connecting is refused at once.
CLOSED_PORT = 1

DATABASES = {
    alias: database(alias, PREFIX, os.environ.get("DBFLEET_FLEET_DIR", "")) for alias in ENGINES
}
DATABASES["replica"] = {**DATABASES["default"], "TEST": {"MIRROR": "default"}}
if down := os.environ.get("DBFLEET_FLEET_DOWN"):
    DATABASES[down] = {**DATABASES[down], "HOST": "127.0.0.1", "PORT": CLOSED_PORT}

INSTALLED_APPS = list(INSTALLED_APPS)
ROUTES = dict(ROUTES)
for entry in filter(None, os.environ.get("DBFLEET_FLEET_APPS", "").split(",")):
    app, _, alias = entry.partition("=")
    INSTALLED_APPS.append(app)
    ROUTES[app.rpartition(".")[2]] = alias
DBFLEET = {**DBFLEET, "ROUTES": ROUTES}
MIGRATION_MODULES = {
    app: module
    for app, _, module in (
        entry.partition("=")
        for entry in filter(None, os.environ.get("DBFLEET_FLEET_MIGRATION_MODULES", "").split(","))
    )
}
