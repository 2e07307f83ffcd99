"""Two-phase commit over PostgreSQL and MariaDB/MySQL, with a decision log and recovery.

The protocol, for a ``dbfleet.atomic(..., two_phase=True)`` block that wrote
to more than one database:

1. Each database that wrote, except ``DEFAULT_DATABASE``, prepares its
   transaction (PostgreSQL ``PREPARE TRANSACTION``, MariaDB ``XA PREPARE``).
   A database that only read is not prepared; it commits at the end.
2. The decision to commit is recorded in ``dbfleet_decision`` on
   ``DEFAULT_DATABASE``. When that database wrote too, the record is part of
   its own transaction, and committing it is the decision.
3. Each prepared transaction is committed (``COMMIT PREPARED`` / ``XA COMMIT``).

A crash anywhere leaves prepared transactions that :func:`recover` settles:
commit where the decision was recorded; roll back where it was not and the
transaction is older than the grace period. Before it rolls back, recovery
records that decision too (``committed = false``), so a coordinator that was
only slow cannot record "commit" afterwards: its insert collides.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Sequence
from typing import Any

from django.db import DatabaseError, IntegrityError, connections
from django.db.transaction import TransactionManagementError
from django.dispatch import Signal

from dbfleet import vendors
from dbfleet.conf import fleet_settings
from dbfleet.exceptions import CommitError, InDoubtError, names
from dbfleet.sql import is_write
from dbfleet.transactions.two_phase.decisions import (
    INSERT,
    decide_rollback,
    decision_connection,
    execute,
    forget_sql,
    new_transaction_id,
    now_ms,
)
from dbfleet.vendors import raw_commit, raw_rollback

logger = logging.getLogger("dbfleet.two_phase")

#: Sent at each step of the protocol, with ``step`` ("prepare", "decide",
#: "commit", "done"), ``transaction_id`` and, for per-database steps, ``alias``.
two_phase_step = Signal()


class State(enum.Enum):
    """Where one participant's transaction is."""

    ACTIVE = "active"
    PREPARED = "prepared"
    DONE = "done"


def check_engines(aliases: Sequence[str]) -> None:
    """Raise if a database in ``aliases`` cannot take part in a two-phase commit."""
    for alias in aliases:
        connection = connections[alias]
        if not vendors.of(connection).two_phase:
            raise TransactionManagementError(
                f"Database {alias!r} ({connection.vendor}) cannot take part in a two-phase "
                "commit: only PostgreSQL and MariaDB/MySQL can prepare a transaction. Leave it "
                "out of the block, or use dbfleet.atomic(...) without two_phase (best effort)."
            )


def _step(step: str, transaction_id: str, alias: str | None = None) -> None:
    two_phase_step.send(sender=Protocol, step=step, transaction_id=transaction_id, alias=alias)


def _overtaken(transaction_id: str) -> CommitError:
    return CommitError(
        f"Two-phase transaction {transaction_id} was rolled back everywhere: `fleet recover` had "
        "already decided to roll it back, as it stayed prepared longer than the grace period "
        '(DBFLEET["RECOVERY_GRACE"]). Run it again.'
    )


class Protocol:
    """The two-phase commit of one outermost ``dbfleet.atomic(two_phase=True)`` block."""

    def __init__(self, aliases: Sequence[str]) -> None:
        self.transaction_id = new_transaction_id()
        self.aliases = list(aliases)
        self.written: set[str] = set()  # by the statements' first keywords
        self.executed: set[str] = set()
        self.state = dict.fromkeys(self.aliases, State.ACTIVE)
        self._wrappers: dict[str, Any] = {}

    @classmethod
    def begin(cls, aliases: Sequence[str]) -> Protocol:
        protocol = cls(aliases)
        for alias in aliases:
            connection = connections[alias]

            def track(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
                alias = context["connection"].alias
                protocol.executed.add(alias)
                if is_write(sql):
                    protocol.written.add(alias)
                return execute(sql, params, many, context)

            try:
                vendors.of(connection).begin(connection, protocol.transaction_id)
            except BaseException:
                protocol.state[alias] = State.DONE
                protocol.abort()
                raise
            protocol._wrappers[alias] = track
            connection.execute_wrappers.append(track)
        return protocol

    def _stop_tracking(self) -> None:
        for alias, wrapper in self._wrappers.items():
            with contextlib.suppress(ValueError):
                connections[alias].execute_wrappers.remove(wrapper)
        self._wrappers.clear()

    def _do(self, alias: str, action: str, *args: Any) -> None:
        connection = connections[alias]
        getattr(vendors.of(connection), action)(connection, self.transaction_id, *args)

    def _ask(self, alias: str, question: str) -> Any:
        connection = connections[alias]
        return getattr(vendors.of(connection), question)(connection)

    def abort(self) -> None:
        """Roll back every participant; what cannot be reached is left to recovery."""
        self._stop_tracking()
        for alias, state in self.state.items():
            try:
                if state == State.ACTIVE:
                    self._do(alias, "rollback_active")
                elif state == State.PREPARED:
                    self._do(alias, "finish_prepared", False)
            except DatabaseError:
                logger.warning(
                    "Could not roll back %s on %r; `fleet recover` will.",
                    self.transaction_id,
                    alias,
                    exc_info=True,
                )
            self.state[alias] = State.DONE

    def commit(self) -> None:
        """Commit every participant, in two phases when more than one wrote."""
        self._stop_tracking()
        default = fleet_settings().default_database
        try:
            # The statements' first keywords said these only read, but a function
            # may have written: PostgreSQL knows; for MariaDB, any statement counts.
            for alias in self.aliases:
                if alias not in self.written:
                    wrote = self._ask(alias, "wrote")
                    if wrote or (wrote is None and alias in self.executed):
                        self.written.add(alias)
        except BaseException:
            self.abort()
            raise
        writers = [alias for alias in self.aliases if alias in self.written]
        readers = [alias for alias in self.aliases if alias not in self.written]
        if len(writers) > 1:
            self._commit_two_phase(writers, coordinator=default if default in writers else None)
        elif writers:
            try:
                self._do(writers[0], "commit_one_phase")
            except BaseException:
                self.abort()
                raise
            self.state[writers[0]] = State.DONE
        for alias in readers:
            # They changed nothing: committing only ends their transactions
            # (and releases their locks), so a failure here loses no data.
            try:
                self._do(alias, "commit_one_phase")
            except DatabaseError:
                logger.warning(
                    "Ending the read-only transaction on %r failed.", alias, exc_info=True
                )
            self.state[alias] = State.DONE

    def _commit_two_phase(self, writers: Sequence[str], coordinator: str | None) -> None:
        xid = self.transaction_id
        try:
            for alias in writers:
                if alias == coordinator:
                    continue
                _step("prepare", xid, alias)
                try:
                    self._do(alias, "prepare")
                except BaseException:
                    # Whether it got prepared is unknown if the connection broke;
                    # then recovery rolls it back, as no decision gets recorded.
                    self.state[alias] = State.DONE
                    raise
                self.state[alias] = State.PREPARED
            _step("decide", xid)
        except BaseException:
            self.abort()
            raise
        self._decide(coordinator)

        pending: list[str] = []
        for alias in writers:
            if alias == coordinator:
                continue
            _step("commit", xid, alias)
            try:
                self._do(alias, "finish_prepared", True)
            except DatabaseError as error:
                # Gone means committed: with the decision recorded, `fleet recover`
                # may have committed it meanwhile, and nothing rolls it back.
                if not vendors.of(connections[alias]).is_gone(error):
                    logger.warning("COMMIT PREPARED %s failed on %r.", xid, alias, exc_info=True)
                    pending.append(alias)
            self.state[alias] = State.DONE
        if pending:
            committed = [alias for alias in writers if alias not in pending]
            raise InDoubtError(
                xid,
                f"the decision to commit is recorded and {names(committed)} committed, but "
                f"{names(pending)} could not be told and still hold(s) it prepared.",
            )
        self._forget(coordinator)
        _step("done", xid)

    def _decide(self, coordinator: str | None) -> None:
        """Record the decision to commit; on return it is recorded, else this raised."""
        xid = self.transaction_id
        if coordinator is not None and connections[coordinator].closed_in_transaction:
            coordinator = None  # Closed after an error while deciding.
        if coordinator is None:
            try:
                with decision_connection() as connection:
                    execute(connection, INSERT, (xid, True, now_ms()))
            except BaseException as error:
                self._settle_unknown_decision(error, collided=isinstance(error, IntegrityError))
            return
        connection = connections[coordinator]
        try:
            execute(connection, INSERT, (xid, True, now_ms()))
        except IntegrityError as error:
            self.abort()
            raise _overtaken(xid) from error
        except BaseException:
            self.abort()  # COMMIT was never sent: nothing is decided.
            raise
        try:
            self._do(coordinator, "commit_one_phase")
        except BaseException as error:
            # Whether that commit happened is unknown. Free the key its insert
            # holds (a rollback, or closing the session), then settle the question.
            with contextlib.suppress(DatabaseError):
                self._do(coordinator, "rollback_active")
            connection.close()
            self.state[coordinator] = State.DONE
            self._settle_unknown_decision(error, collided=False)
        self.state[coordinator] = State.DONE

    def _settle_unknown_decision(self, error: BaseException, collided: bool) -> None:
        """After ``error`` while recording the decision: find out what was decided.

        Recording "roll back" waits for an insert of "commit" that is still in
        flight, and collides with one that committed: either way the decision
        is then known for good. Returns if it is "commit", else raises.
        """
        xid = self.transaction_id
        try:
            committed = decide_rollback(xid)
        except DatabaseError:
            committed = None
        if committed is False:
            self.abort()
            if collided:  # With the record of a recovery that decided first.
                raise _overtaken(xid) from error
            raise error
        if committed is None:
            if not isinstance(error, Exception):
                raise error  # KeyboardInterrupt, SystemExit: recovery finishes the job.
            raise InDoubtError(
                xid,
                "recording the decision failed, and the decision log cannot be read to tell "
                "whether it was recorded; the prepared transactions stay until recovery.",
            ) from error
        if not isinstance(error, Exception):
            raise error
        logger.warning("Recording decision %s raised, but it was recorded.", xid, exc_info=error)

    def _forget(self, coordinator: str | None) -> None:
        """Delete the decision once nobody needs it; recovery purges it if this is lost.

        So the deletion need not be durable at once: on PostgreSQL its commit
        does not wait for the disk, which saves a flush per transaction.
        """
        if coordinator is not None and connections[coordinator].closed_in_transaction:
            coordinator = None  # Closed after an error while deciding.
        if coordinator is None:
            try:
                with decision_connection() as connection:
                    execute(connection, forget_sql(connection, self.transaction_id))
            except DatabaseError:
                logger.warning("Could not delete decision %s.", self.transaction_id, exc_info=True)
            return
        connection = connections[coordinator]
        try:
            # Committed here, so that the block's own commit has nothing left to do.
            execute(connection, forget_sql(connection, self.transaction_id))
            raw_commit(connection)
        except DatabaseError:
            logger.warning("Could not delete decision %s.", self.transaction_id, exc_info=True)
            try:
                raw_rollback(connection)
            except DatabaseError:
                # The transaction is committed everywhere; only this connection
                # broke. Closing it lets the block end without an error, but
                # Django then drops the on_commit callbacks it held for it.
                logger.warning("Closing %r: its on_commit callbacks are dropped.", coordinator)
                connection.close()
