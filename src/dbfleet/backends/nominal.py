"""What both ClickHouse backends change in django-clickhouse-backend's ``DatabaseWrapper``."""

from __future__ import annotations

from django.db.backends.base.base import BaseDatabaseWrapper


class NominalTransactions(BaseDatabaseWrapper):
    """Atomic blocks that run their ``on_commit`` callbacks, though nothing is committed.

    ClickHouse has no transactions: a block over it is nominal, each statement
    takes effect as it runs. django-clickhouse-backend replaces Django's
    ``set_autocommit()`` and ``commit()`` with methods that only set a flag, so the
    callbacks of a block (``transaction.on_commit(func, using=...)``, and those
    ``dbfleet.on_commit`` waits for) never ran; Django's own methods run them, and
    have nothing to send the server.
    """

    def set_autocommit(
        self, autocommit: bool, force_begin_transaction_with_broken_autocommit: bool = False
    ) -> None:
        BaseDatabaseWrapper.set_autocommit(
            self, autocommit, force_begin_transaction_with_broken_autocommit
        )

    def commit(self) -> None:
        BaseDatabaseWrapper.commit(self)

    def _set_autocommit(self, autocommit: bool) -> None:
        pass  # Every statement commits itself.
