"""``tests.fleet_settings`` with the routes changed, as a user changes them once data exists.

Environment (besides those of ``tests.fleet_settings``):
``DBFLEET_FLEET_ROUTES``: ``"bank.Vault=loans,library.Book="``: set each route, or remove
it when nothing follows the ``=``;
``DBFLEET_FLEET_DEFAULT_DATABASE``: ``DBFLEET["DEFAULT_DATABASE"]``.
"""

from __future__ import annotations

import os

from tests.fleet_settings import *  # noqa: F403
from tests.fleet_settings import DBFLEET, ROUTES

ROUTES = dict(ROUTES)
for entry in filter(None, os.environ.get("DBFLEET_FLEET_ROUTES", "").split(",")):
    key, _, alias = entry.partition("=")
    if alias:
        ROUTES[key] = alias
    else:
        ROUTES.pop(key, None)
DBFLEET = {**DBFLEET, "ROUTES": ROUTES}
if default := os.environ.get("DBFLEET_FLEET_DEFAULT_DATABASE"):
    DBFLEET["DEFAULT_DATABASE"] = default
