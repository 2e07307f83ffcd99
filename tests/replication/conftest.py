"""The replication configuration: a primary and a real streaming replica.

The root ``conftest`` creates both clusters when the run starts. The test
database is created on the primary only; streaming replication copies it to
the replica, which ``replica1`` reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import DatabaseError, connections

from tests.conftest import CLUSTERS
from tests.settings import REPLICA


@pytest.fixture(scope="session")
def django_db_setup(django_db_blocker: Any) -> Iterator[None]:
    with django_db_blocker.unblock():
        for alias in ("default", "books", "loans"):
            connections[alias].creation.create_test_db(verbosity=0, autoclobber=True)
        deadline = time.monotonic() + 30
        while True:  # Until the replica has replayed the new database and its tables.
            try:
                with connections[REPLICA].cursor() as cursor:
                    cursor.execute("SELECT 1 FROM django_migrations LIMIT 1")
                break
            except DatabaseError:
                connections[REPLICA].close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    yield
    with django_db_blocker.unblock():
        connections.close_all()


@pytest.fixture
def clusters(request: pytest.FixtureRequest) -> Any:
    """(primary, replica): the two clusters, to stop and start."""
    return request.config.stash[CLUSTERS]
