"""Settings for a ``fleet copy`` in a process of its own, on the test run's databases.

The test process's ``DATABASES`` (with the test databases' names) come as JSON in
``tests.children.DATABASES_VARIABLE``: the child copies what the test wrote.
"""

from __future__ import annotations

import json
import os

from tests.children import DATABASES_VARIABLE
from tests.settings import *  # noqa: F403

DATABASES = json.loads(os.environ[DATABASES_VARIABLE])
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "dbfleet", "tests.moving"]
DBFLEET = {}
