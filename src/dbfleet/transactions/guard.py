"""The write guard: a write that runs on its own while another database's transaction is open.

A database without transactions (ClickHouse) has no transaction for another
database's writes to be outside of, and its own writes always take effect at once:
a write there while another database's transaction is open is flagged with what
that means (it stays, even if that transaction rolls back) and the two ways out
(write it in ``dbfleet.on_commit``, or include it in the ``dbfleet.atomic`` block to
say it is meant). Only a ``dbfleet.atomic`` block says so: Django opens nominal
blocks of its own there (``bulk_create``, ``save``), which mean nothing.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar, Token
from typing import Any

from django.conf import settings
from django.core import mail
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from dbfleet import vendors
from dbfleet.conf import fleet_settings
from dbfleet.exceptions import WriteOutsideTransaction, WriteOutsideTransactionError, names
from dbfleet.sql import is_write

_UNGUARDED: ContextVar[bool] = ContextVar("dbfleet_unguarded", default=False)
#: Databases without transactions that an open ``dbfleet.atomic`` block covers: writes
#: there are meant to take effect at once.
_COVERED: ContextVar[frozenset[str]] = ContextVar("dbfleet_covered", default=frozenset())


def cover(aliases: Iterable[str]) -> Token[frozenset[str]]:
    """Mark ``aliases`` (without transactions) as covered by a block; reset with the token."""
    return _COVERED.set(_COVERED.get() | frozenset(aliases))


def uncover(token: Token[frozenset[str]]) -> None:
    _COVERED.reset(token)


@contextlib.contextmanager
def unguarded() -> Iterator[None]:
    """Let writes through the write guard (dbfleet's own bookkeeping)."""
    token = _UNGUARDED.set(True)
    try:
        yield
    finally:
        _UNGUARDED.reset(token)


def write_guard_mode() -> str:
    """``"raise"``, ``"warn"`` or ``"off"``: what the write guard does now."""
    mode = fleet_settings().write_guard
    if mode is None:
        # On by default while developing and in tests (the test runner sets mail.outbox).
        return "warn" if settings.DEBUG or hasattr(mail, "outbox") else "off"
    return mode


def guard_writes(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """Execute wrapper: flag a write that runs outside the transaction open on another database."""
    connection = context["connection"]
    if vendors.of(connection).transactional:
        covered = connection.in_atomic_block
    else:
        covered = connection.alias in _COVERED.get()
    if not covered and is_write(sql) and not _UNGUARDED.get():
        others = [
            other.alias
            for other in connections.all(initialized_only=True)
            if other.in_atomic_block
            and other.alias != connection.alias
            and vendors.of(other).transactional  # A nominal block holds nothing.
        ]
        mode = write_guard_mode() if others else "off"
        if mode != "off":
            message = _message(connection, others)
            if mode == "raise":
                raise WriteOutsideTransactionError(message)
            warnings.warn(message, WriteOutsideTransaction, stacklevel=2)
    return execute(sql, params, many, context)


def _message(connection: BaseDatabaseWrapper, others: list[str]) -> str:
    if not vendors.of(connection).transactional:
        return (
            f"A write on database {connection.alias!r} ({connection.display_name}, which has "
            f"no transactions) ran while a transaction is open on {names(others)}: it takes "
            f"effect now and stays, even if that transaction rolls back. To write it only "
            f"once that transaction commits, write it in dbfleet.on_commit(...); if it is "
            f"meant to stay whatever happens, include {connection.alias!r} in the block: "
            f"dbfleet.atomic({names([*others, connection.alias])})."
        )
    return (
        f"A write on database {connection.alias!r} ran outside the transaction open on "
        f"{names(others)}: it commits on its own, now, even if that transaction rolls "
        f"back. Open the block on both: dbfleet.atomic(Model, ...) with the model "
        f"written here, or dbfleet.atomic({names([*others, connection.alias])})."
    )


def install_write_guard(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """``connection_created`` receiver: add the write guard where it is on."""
    if guard_writes not in connection.execute_wrappers and write_guard_mode() != "off":
        # First, under any wrapper a `with connection.execute_wrapper(...)` has
        # pushed: that one pops the last wrapper when it ends.
        connection.execute_wrappers.insert(0, guard_writes)
