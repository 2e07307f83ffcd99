"""Transactions over several databases: ``atomic``, ``on_commit`` and the write guard.

Django's ``transaction.atomic()`` and ``on_commit()`` act on one database, and
``default`` unless told otherwise. ``dbfleet.atomic(Book)`` opens the block
where ``Book`` is written; ``dbfleet.atomic(Author, Book)`` opens one on each
database and commits them together: one after the other (best effort, and a
:class:`PartialCommitError` says exactly what committed when a later commit
fails), or with ``two_phase=True`` through prepared transactions and a decision
log, so that nothing is left half-done (see :mod:`dbfleet.transactions.two_phase`).

A database without transactions (ClickHouse) may be a target of a plain block:
its block is nominal. Each write there takes effect as it runs, is visible at
once and stays whatever the block then does; its ``on_commit`` callbacks wait for
the group as usual. When the group rolls back after such writes, a warning on
the ``dbfleet.transactions`` logger says how many stay, and where. A two-phase
block over it is refused: nothing can make its writes all-or-nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import ContextDecorator
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any, TypeVar, overload

from django.conf import settings
from django.db import connections, models, transaction
from django.db.transaction import TransactionManagementError

from dbfleet import vendors
from dbfleet.conf import did_you_mean, fleet_settings, get_topology
from dbfleet.exceptions import PartialCommitError, names
from dbfleet.routing import database_for
from dbfleet.sql import is_write
from dbfleet.transactions.guard import cover, uncover
from dbfleet.transactions.two_phase.protocol import Protocol, check_engines
from dbfleet.vendors import raw_commit

logger = logging.getLogger("dbfleet.transactions")

Target = str | type[models.Model] | models.Model
F = TypeVar("F", bound=Callable[..., Any])


def resolve(target: Target) -> str:
    """The database alias a target means: an alias, or where a model or instance is written."""
    if isinstance(target, str):
        if target not in settings.DATABASES:
            raise ValueError(
                f"{target!r} is not a database alias in DATABASES."
                + did_you_mean(target, settings.DATABASES)
            )
        alias = target
    elif isinstance(target, models.Model) or (
        isinstance(target, type) and issubclass(target, models.Model)
    ):
        alias = database_for(target, write=True)
    else:
        raise TypeError(
            f"A transaction target is a database alias, a model or a model instance, "
            f"not {target!r}."
        )
    topology = get_topology()
    if topology.is_replica(alias):
        raise ValueError(
            f"{alias!r} is a replica and is never written to; "
            f"use its primary, {topology.primary_of(alias)!r}."
        )
    return alias


def resolve_all(targets: Iterable[Target]) -> list[str]:
    """Aliases of ``targets`` (none: ``DEFAULT_DATABASE``), once each, in ``DATABASES`` order."""
    found = {resolve(target) for target in targets} or {fleet_settings().default_database}
    return [alias for alias in settings.DATABASES if alias in found]


@dataclass
class _Frame:
    """One entry into an :class:`Atomic` block."""

    aliases: list[str]
    two_phase: bool
    blocks: dict[str, transaction.Atomic] = field(default_factory=dict)  # entered, in order
    outermost: list[str] = field(default_factory=list)
    protocol: Protocol | None = None  # when this frame runs the two-phase protocol
    token: Any = None
    #: Writes run in the block on each database without transactions: they stay.
    applied: dict[str, int] = field(default_factory=dict)
    #: The execute wrapper counting them, per database.
    counters: dict[str, Callable[..., Any]] = field(default_factory=dict)
    #: What tells the write guard the block covers them.
    covering: Any = None


# Every dbfleet.atomic block open in this context, innermost last. The state of
# a block lives here, not on the Atomic object, so that one object can be
# entered by several threads or tasks at once.
_FRAMES: ContextVar[tuple[_Frame, ...]] = ContextVar("dbfleet_atomic_blocks", default=())
# While a block commits, callbacks that became due wait here for the whole group.
_DUE: ContextVar[list[tuple[Callable[[], Any], bool]] | None] = ContextVar(
    "dbfleet_due_callbacks", default=None
)


class _GroupRollback(Exception):
    """Passed to Django's blocks to roll them back when the group must not commit."""


class Atomic(ContextDecorator):
    """An atomic block on each target's database, committed together.

    Reentrant and thread-safe like Django's ``Atomic``: the state of each entry
    lives in a context variable, not on the object.
    """

    def __init__(
        self, targets: Sequence[Target], savepoint: bool, durable: bool, two_phase: bool
    ) -> None:
        self.targets = tuple(targets)
        self.savepoint = savepoint
        self.durable = durable
        self.two_phase = two_phase

    def __enter__(self) -> None:
        aliases = resolve_all(self.targets)
        frame = _Frame(aliases, self.two_phase)
        starts_two_phase = self.two_phase and _starts_two_phase(aliases)
        for alias in frame.aliases:
            connection = connections[alias]
            if not connection.in_atomic_block:
                frame.outermost.append(alias)
            block = transaction.atomic(alias, savepoint=self.savepoint, durable=self.durable)
            try:
                block.__enter__()
            except BaseException as error:
                _exit_blocks(list(frame.blocks.values()), error)
                raise
            frame.blocks[alias] = block
        if starts_two_phase:
            try:
                frame.protocol = Protocol.begin(frame.outermost)
            except BaseException as error:
                _exit_blocks(list(frame.blocks.values()), error)
                raise
        _count_applied(frame)
        frame.token = _FRAMES.set((*_FRAMES.get(), frame))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        frame = _FRAMES.get()[-1]
        _FRAMES.reset(frame.token)
        _stop_counting(frame)
        if exc_value is not None:
            try:
                _abandon(frame, list(frame.blocks.values()), exc_value)
            finally:
                _warn_applied(frame)
            return
        due: list[tuple[Callable[[], Any], bool]] = []
        due_token = _DUE.set(due) if _DUE.get() is None else None
        try:
            committed = _commit(frame)
        except BaseException:
            _warn_applied(frame)
            raise
        finally:
            if due_token is not None:
                _DUE.reset(due_token)
        if not committed:
            _warn_applied(frame)
        for func, robust in due:
            _call(func, robust)


def _count_applied(frame: _Frame) -> None:
    """Count the writes the block runs on each of its databases without transactions."""
    for alias in frame.aliases:
        connection = connections[alias]
        if vendors.of(connection).transactional:
            continue
        frame.applied[alias] = 0

        def count(
            execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
        ) -> Any:
            alias = context["connection"].alias
            if is_write(sql):
                frame.applied[alias] += 1
            return execute(sql, params, many, context)

        frame.counters[alias] = count
        connection.execute_wrappers.append(count)
    if frame.applied:
        frame.covering = cover(frame.applied)


def _stop_counting(frame: _Frame) -> None:
    if frame.covering is not None:
        uncover(frame.covering)
    for alias, count in frame.counters.items():
        wrappers = connections[alias].execute_wrappers
        if count in wrappers:
            wrappers.remove(count)
    frame.counters.clear()


def _warn_applied(frame: _Frame) -> None:
    """Say which writes stay, on databases without transactions, when the group did not commit."""
    applied = [
        f"{count} write statement{'s' * (count > 1)} on {alias!r} "
        f"({connections[alias].display_name})"
        for alias, count in frame.applied.items()
        if count
    ]
    if applied:
        logger.warning(
            "dbfleet.atomic(%s) did not commit, and these writes stay: %s. That database has "
            "no transactions: each write took effect as it ran. To write there only what "
            "commits, write in dbfleet.on_commit(...).",
            names(frame.aliases),
            ", ".join(applied),
        )


def _starts_two_phase(aliases: Sequence[str]) -> bool:
    """Whether a ``two_phase=True`` block over ``aliases`` runs the protocol itself.

    Inside an enclosing two-phase block, or inside the transaction a test case
    wraps around each test, it is a plain nested block.
    """
    for alias in aliases:
        connection = connections[alias]
        if not vendors.of(connection).transactional:
            raise TransactionManagementError(
                f"dbfleet.atomic(two_phase=True) cannot cover {alias!r} "
                f"({connection.display_name}): it has no transactions, so its writes take "
                "effect as they run and cannot be prepared or rolled back, and no commit "
                "with it could be all-or-nothing. Leave it out of the block and write to it "
                "once the others have committed (dbfleet.on_commit), or use "
                "dbfleet.atomic(...) without two_phase (best effort)."
            )
    check_engines(aliases)
    enclosing = {alias for frame in _FRAMES.get() if frame.two_phase for alias in frame.aliases}
    nested = [alias for alias in aliases if connections[alias].in_atomic_block]
    if not nested:
        return True
    if len(nested) == len(aliases) and all(
        alias in enclosing
        or all(
            getattr(block, "_from_testcase", False) for block in connections[alias].atomic_blocks
        )
        for alias in nested
    ):
        return False
    raise TransactionManagementError(
        f"dbfleet.atomic(two_phase=True) must be the outermost block on every database it "
        f"covers, or be nested in a two-phase block over all of them; a transaction is "
        f"already open on {names(nested)}."
    )


def _exit_blocks(blocks: Sequence[transaction.Atomic], error: BaseException | None = None) -> None:
    """Leave Django's blocks, last entered first, rolling each back if ``error`` is given.

    Every block is left even when one raises (an on_commit callback may). When
    rolling back for ``error``, a failure to clean up is logged: the caller
    raises ``error``. Otherwise the first exception is raised once all blocks
    are left, an interruption (KeyboardInterrupt, SystemExit) before any other.
    """
    first: BaseException | None = None
    for block in reversed(blocks):
        try:
            if error is None:
                block.__exit__(None, None, None)
            else:
                block.__exit__(type(error), error, error.__traceback__)
        except BaseException as raised:
            if error is not None and isinstance(raised, Exception):
                logger.warning("Rolling back after %r failed too.", error, exc_info=raised)
            elif first is None or (
                isinstance(first, Exception) and not isinstance(raised, Exception)
            ):
                first = raised
    if first is not None:
        raise first


def _abandon(frame: _Frame, blocks: Sequence[transaction.Atomic], error: BaseException) -> None:
    """Roll back the frame's protocol, if any, and its ``blocks``, whatever happens."""
    try:
        if frame.protocol is not None:
            frame.protocol.abort()
    finally:
        _exit_blocks(blocks, error)


def _commit(frame: _Frame) -> bool:
    """Leave the frame's blocks: release the nested ones, commit the outermost ones together.

    False when the group rolled back without an error (as Django's block does when
    marked for rollback).
    """
    for alias in frame.aliases:
        connection = connections[alias]
        if not vendors.of(connection).transactional:
            # Without savepoints, a block inside that failed (or a failed statement)
            # marks it for rollback, which has nothing to undo there: the databases with
            # transactions decide, and its on_commit callbacks must not be dropped.
            connection.needs_rollback = False
    if any(
        connections[alias].needs_rollback or connections[alias].closed_in_transaction
        for alias in frame.aliases
    ):
        # Django rolls such a block back without an error; the group follows it.
        _abandon(frame, list(frame.blocks.values()), _GroupRollback())
        return False
    outermost = [frame.blocks[alias] for alias in frame.outermost]
    nested = [alias for alias in frame.aliases if alias not in frame.outermost]
    released: list[str] = []
    while nested:
        alias = nested.pop()
        try:
            frame.blocks[alias].__exit__(None, None, None)
        except BaseException as error:
            # The savepoints already released merged into their transactions:
            # those must now roll back as a whole, as this one does.
            for done in released:
                connections[done].needs_rollback = True
            _abandon(frame, outermost + [frame.blocks[alias] for alias in nested], error)
            raise
        released.append(alias)
    if frame.protocol is not None:
        try:
            frame.protocol.commit()
        except BaseException as error:
            _exit_blocks(outermost, error)
            raise
    elif len(outermost) > 1:
        _commit_one_by_one(frame.outermost, outermost)
        return True
    # Every outermost transaction is settled (or there is one): Django's own
    # exit commits what is left and runs its on_commit callbacks.
    _exit_blocks(outermost)
    return True


def _commit_one_by_one(aliases: Sequence[str], blocks: Sequence[transaction.Atomic]) -> None:
    for index, alias in enumerate(aliases):
        try:
            raw_commit(connections[alias])
        except BaseException as error:
            _exit_blocks(blocks[index:], error)
            if index == 0:
                raise
            # The earlier databases committed: leave their blocks (which runs
            # their Django on_commit callbacks, as their data is in) and say so.
            try:
                _exit_blocks(blocks[:index])
            except Exception:
                logger.exception("An on_commit callback failed after a partial commit.")
            raise PartialCommitError(aliases[:index], alias, aliases[index + 1 :]) from error
    _exit_blocks(blocks)


def atomic_targets() -> frozenset[str]:
    """Every database an open ``dbfleet.atomic`` block in this context covers."""
    return frozenset(alias for frame in _FRAMES.get() for alias in frame.aliases)


@overload
def atomic(
    *targets: Target, savepoint: bool = True, durable: bool = False, two_phase: bool = False
) -> Atomic: ...


@overload
def atomic(func: F, /) -> F: ...


def atomic(
    *targets: Any, savepoint: bool = True, durable: bool = False, two_phase: bool = False
) -> Any:
    """A transaction on each target's database (``DEFAULT_DATABASE`` without targets)."""
    if len(targets) == 1 and _is_plain_callable(targets[0]):
        return Atomic((), savepoint, durable, two_phase)(targets[0])
    return Atomic(targets, savepoint, durable, two_phase)


def _is_plain_callable(value: object) -> bool:
    return callable(value) and not (isinstance(value, type) and issubclass(value, models.Model))


def on_commit(func: Callable[[], Any], *targets: Target, robust: bool = False) -> None:
    """Run ``func`` once every target's database has committed; never on rollback.

    Inside ``dbfleet.atomic`` blocks it also waits for every database those
    blocks cover, so it runs after the whole group has committed.
    """
    aliases = set(resolve_all(targets)) | atomic_targets()
    waiting = {alias for alias in aliases if connections[alias].in_atomic_block}
    if not waiting:
        _call(func, robust)
        return

    def committed(alias: str) -> None:
        waiting.discard(alias)
        if not waiting:
            due = _DUE.get()
            if due is None:
                _call(func, robust)
            else:
                due.append((func, robust))

    for alias in sorted(waiting):
        transaction.on_commit(partial(committed, alias), using=alias)


def _call(func: Callable[[], Any], robust: bool) -> None:
    if not robust:
        func()
        return
    try:
        func()
    except Exception as error:
        name = getattr(func, "__qualname__", func)
        logger.error("Error calling %s in on_commit() (%s).", name, error, exc_info=True)
