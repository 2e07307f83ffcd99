"""Settings for a ``fleet sync`` in a process of its own, on the test run's databases.

The test process's ``DATABASES`` (with the test databases' names) come as JSON in
``tests.children.DATABASES_VARIABLE``: the child syncs what the test wrote. The test process
closes its chDB connections first, so that the child can open the data directory.
"""

from __future__ import annotations

import json
import os

from tests.children import DATABASES_VARIABLE
from tests.settings import *  # noqa: F403
from tests.synced import ROUTES as SYNCED_ROUTES

DATABASES = json.loads(os.environ[DATABASES_VARIABLE])
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "dbfleet", "tests.synced"]
DBFLEET = {"ROUTES": SYNCED_ROUTES}
