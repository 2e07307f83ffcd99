"""An app whose migrations use most of Django's operations, for tests/test_migrate_worker.py.

Installed only in the `fleet` subprocess tests (``DBFLEET_FLEET_APPS``), routed to
one database, so that every other database skips all of it. With
``DBFLEET_SPEED_SIGNALS`` set to a file, each ``pre_migrate`` and ``post_migrate``
it receives is appended to that file as a line of JSON.
"""
