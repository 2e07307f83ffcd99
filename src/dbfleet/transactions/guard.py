"""The write guard: a write that runs on its own while another database's transaction is open."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from django.conf import settings
from django.core import mail
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from dbfleet.conf import fleet_settings
from dbfleet.exceptions import WriteOutsideTransaction, WriteOutsideTransactionError, names
from dbfleet.sql import is_write

_UNGUARDED: ContextVar[bool] = ContextVar("dbfleet_unguarded", default=False)


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
    if not connection.in_atomic_block and is_write(sql) and not _UNGUARDED.get():
        others = [
            other.alias
            for other in connections.all(initialized_only=True)
            if other.in_atomic_block and other.alias != connection.alias
        ]
        mode = write_guard_mode() if others else "off"
        if mode != "off":
            message = (
                f"A write on database {connection.alias!r} ran outside the transaction open on "
                f"{names(others)}: it commits on its own, now, even if that transaction rolls "
                f"back. Open the block on both: dbfleet.atomic(Model, ...) with the model "
                f"written here, or dbfleet.atomic({names([*others, connection.alias])})."
            )
            if mode == "raise":
                raise WriteOutsideTransactionError(message)
            warnings.warn(message, WriteOutsideTransaction, stacklevel=2)
    return execute(sql, params, many, context)


def install_write_guard(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """``connection_created`` receiver: add the write guard where it is on."""
    if guard_writes not in connection.execute_wrappers and write_guard_mode() != "off":
        # First, under any wrapper a `with connection.execute_wrapper(...)` has
        # pushed: that one pops the last wrapper when it ends.
        connection.execute_wrappers.insert(0, guard_writes)
