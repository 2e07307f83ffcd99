"""django-clickhouse-backend's backend for a ClickHouse server, as a member of the fleet.

It is that backend (settings, fields, migrations, queries: see its documentation),
with ``on_commit`` callbacks run at the end of an atomic block (see
``dbfleet.backends.nominal``), and a test database made without Django 6.1's
deprecation warning. Its ``vendor`` is ``"clickhouse"``, so dbfleet knows the
database has no transactions: never in a two-phase commit, never a replica, never
in a shard group.
"""

from __future__ import annotations

from dbfleet.backends import require

require("clickhouse", "clickhouse_backend")

from typing import Any  # noqa: E402

from clickhouse_backend.backend import base, creation  # noqa: E402
from django.db.backends.base.creation import BaseDatabaseCreation  # noqa: E402

from dbfleet.backends.nominal import NominalTransactions  # noqa: E402


class DatabaseCreation(creation.DatabaseCreation):  # type: ignore[misc]
    def create_test_db(
        self,
        verbosity: int = 1,
        autoclobber: bool = False,
        serialize: bool | None = None,
        keepdb: bool = False,
    ) -> Any:
        # As django-clickhouse-backend's, which passes `serialize` on whether Django gave
        # it or not: Django 6.1 deprecates it, and warns when it is given.
        given = {} if serialize is None else {"serialize": serialize}
        name = BaseDatabaseCreation.create_test_db(
            self, verbosity, autoclobber, keepdb=keepdb, **given
        )
        test_settings = self.connection.settings_dict["TEST"]
        if "fake_transaction" in test_settings:
            self.connection.fake_transaction = test_settings["fake_transaction"]
        self.mark_expected_failures_and_skips()
        return name


class DatabaseWrapper(NominalTransactions, base.DatabaseWrapper):  # type: ignore[misc]
    """A ClickHouse server."""

    creation_class = DatabaseCreation
