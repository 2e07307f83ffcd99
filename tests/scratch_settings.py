"""The test settings plus ``scratch``: a database on the server at ``DBFLEET_SCRATCH_URL``."""

import os

import dj_database_url

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

DATABASES = {
    **DATABASES,
    "scratch": dict(dj_database_url.parse(os.environ["DBFLEET_SCRATCH_URL"] + "/postgres")),
}
