"""Settings for a ``fleet copy`` in a process of its own, on the test run's databases.

``DBFLEET_CHILD_DATABASES`` is the test process's ``DATABASES`` as JSON (with the
test databases' names): the child copies what the test wrote.
"""

from __future__ import annotations

import json
import os

from tests.settings import *  # noqa: F403

DATABASES = json.loads(os.environ["DBFLEET_CHILD_DATABASES"])
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "dbfleet", "tests.moving"]
DBFLEET = {}
