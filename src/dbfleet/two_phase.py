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
import logging
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, IntegrityError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.transaction import TransactionManagementError
from django.dispatch import Signal

from dbfleet.conf import fleet_settings, get_topology
from dbfleet.replicas import is_write
from dbfleet.transactions import CommitError, raw_commit, raw_rollback, unguarded

logger = logging.getLogger("dbfleet.two_phase")

ENGINES = ("postgresql", "mysql")
PREFIX = "dbfleet:"
XA_FORMAT = 0x64626674  # "dbft": marks dbfleet's XA transactions in XA RECOVER
TABLE = "dbfleet_decision"
TOMBSTONE_SECONDS = 24 * 3600

#: Sent at each step of the protocol, with ``step`` ("prepare", "decide",
#: "commit", "done"), ``transaction_id`` and, for per-database steps, ``alias``.
two_phase_step = Signal()


class InDoubtError(CommitError):
    """A two-phase transaction could not be finished; ``fleet recover`` will."""

    def __init__(self, transaction_id: str, message: str) -> None:
        self.transaction_id = transaction_id
        super().__init__(
            f"Two-phase transaction {transaction_id}: {message} "
            "Run `python manage.py fleet recover` once the databases are reachable; "
            "it settles the transaction the same way on every database."
        )


def check_engines(aliases: Sequence[str]) -> None:
    """Raise if a database in ``aliases`` cannot take part in a two-phase commit."""
    for alias in aliases:
        vendor = connections[alias].vendor
        if vendor not in ENGINES:
            raise TransactionManagementError(
                f"Database {alias!r} ({vendor}) cannot take part in a two-phase commit: "
                "only PostgreSQL and MariaDB/MySQL can prepare a transaction. Leave it out "
                "of the block, or use dbfleet.atomic(...) without two_phase (best effort)."
            )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_transaction_id() -> str:
    """``dbfleet:<milliseconds>:<random>``; the time lets recovery tell its age."""
    return f"{PREFIX}{_now_ms()}:{secrets.token_hex(6)}"


def started_ms(transaction_id: str) -> int:
    return int(transaction_id.split(":")[1])


def _execute(connection: BaseDatabaseWrapper, sql: str, params: Sequence[Any] | None = None) -> Any:
    with unguarded(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else None


def _raw(connection: BaseDatabaseWrapper, sql: str, params: Sequence[Any] | None = None) -> str:
    """Run a protocol statement on the DB-API connection; return the server's status message.

    Not through Django's cursor: that refuses to run anything in a transaction
    it has marked for rollback, and these statements are how it gets rolled back.
    """
    with connection.wrap_database_errors:
        cursor = connection.connection.cursor()
        try:
            cursor.execute(sql, params)
            return str(getattr(cursor, "statusmessage", "") or "")
        finally:
            cursor.close()


def _literal(value: str) -> str:
    # PREPARE TRANSACTION and COMMIT PREPARED take no bound parameters.
    return "'" + value.replace("'", "''") + "'"


class _Postgres:
    """A PostgreSQL participant: ``PREPARE TRANSACTION`` / ``COMMIT PREPARED``."""

    @staticmethod
    def begin(connection: BaseDatabaseWrapper, xid: str) -> None:
        pass

    @staticmethod
    def prepare(connection: BaseDatabaseWrapper, xid: str) -> None:
        status = _raw(connection, f"PREPARE TRANSACTION {_literal(_pg_gid(xid, connection))}")
        if status != "PREPARE TRANSACTION":
            # An error earlier in the block, caught without a savepoint, aborted
            # the transaction: PostgreSQL then rolls back instead of preparing.
            raise TransactionManagementError(
                f"The transaction on {connection.alias!r} was aborted by an earlier error "
                f"(PREPARE TRANSACTION answered {status!r}); nothing is committed. Catch "
                "database errors inside a nested atomic block, which rolls back to a savepoint."
            )

    @staticmethod
    def commit_one_phase(connection: BaseDatabaseWrapper, xid: str) -> None:
        raw_commit(connection)

    @staticmethod
    def rollback_active(connection: BaseDatabaseWrapper, xid: str) -> None:
        raw_rollback(connection)

    @staticmethod
    def finish_prepared(connection: BaseDatabaseWrapper, xid: str, commit: bool) -> None:
        _pg_finish(connection, _pg_gid(xid, connection), commit)

    @staticmethod
    def wrote(connection: BaseDatabaseWrapper) -> bool | None:
        # A transaction gets an id when it first writes (or locks a row).
        rows = _execute(connection, "SELECT pg_current_xact_id_if_assigned() IS NOT NULL")
        return bool(rows[0][0])


def _pg_gid(xid: str, connection: BaseDatabaseWrapper) -> str:
    # Global ids are unique per server, and two databases of one server may
    # take part: the alias keeps them apart.
    return f"{xid}:{connection.alias}"


def _pg_finish(connection: BaseDatabaseWrapper, gid: str, commit: bool) -> None:
    # COMMIT/ROLLBACK PREPARED cannot run inside a transaction block.
    raw = connection.connection
    outside = raw.autocommit
    with connection.wrap_database_errors:
        raw.autocommit = True
    try:
        _raw(connection, f"{'COMMIT' if commit else 'ROLLBACK'} PREPARED {_literal(gid)}")
    finally:
        # On a broken connection this fails too; the error above is the one to see.
        with contextlib.suppress(DatabaseError), connection.wrap_database_errors:
            raw.autocommit = outside


class _MySQL:
    """A MariaDB/MySQL participant: ``XA START`` ... ``XA PREPARE`` / ``XA COMMIT``."""

    @staticmethod
    def _xid(connection: BaseDatabaseWrapper, xid: str) -> tuple[str, str, int]:
        # The server lists every XA transaction on it, whatever the database:
        # the database's name in the branch qualifier tells this one's apart,
        # and the alias two aliases of one database.
        return (xid, f"{_xa_branch(connection)}@{connection.alias}"[:64], XA_FORMAT)

    @staticmethod
    def wrote(connection: BaseDatabaseWrapper) -> bool | None:
        # Unknown: information_schema.innodb_trx is refreshed only every 0.1 s,
        # and the session's Handler_* counters move with temporary tables too.
        return None

    @staticmethod
    def begin(connection: BaseDatabaseWrapper, xid: str) -> None:
        _raw(connection, "XA START %s, %s, %s", _MySQL._xid(connection, xid))

    @staticmethod
    def prepare(connection: BaseDatabaseWrapper, xid: str) -> None:
        _raw(connection, "XA END %s, %s, %s", _MySQL._xid(connection, xid))
        _raw(connection, "XA PREPARE %s, %s, %s", _MySQL._xid(connection, xid))

    @staticmethod
    def commit_one_phase(connection: BaseDatabaseWrapper, xid: str) -> None:
        _raw(connection, "XA END %s, %s, %s", _MySQL._xid(connection, xid))
        _raw(connection, "XA COMMIT %s, %s, %s ONE PHASE", _MySQL._xid(connection, xid))

    @staticmethod
    def rollback_active(connection: BaseDatabaseWrapper, xid: str) -> None:
        with contextlib.suppress(DatabaseError):  # already ended after a failed XA END
            _raw(connection, "XA END %s, %s, %s", _MySQL._xid(connection, xid))
        _raw(connection, "XA ROLLBACK %s, %s, %s", _MySQL._xid(connection, xid))

    @staticmethod
    def finish_prepared(connection: BaseDatabaseWrapper, xid: str, commit: bool) -> None:
        verb = "COMMIT" if commit else "ROLLBACK"
        _raw(connection, f"XA {verb} %s, %s, %s", _MySQL._xid(connection, xid))


def _xa_branch(connection: BaseDatabaseWrapper) -> str:
    return str(connection.settings_dict["NAME"])


def _engine(connection: BaseDatabaseWrapper) -> type[_Postgres] | type[_MySQL]:
    return _Postgres if connection.vendor == "postgresql" else _MySQL


def _step(step: str, transaction_id: str, alias: str | None = None) -> None:
    two_phase_step.send(sender=Protocol, step=step, transaction_id=transaction_id, alias=alias)


class Protocol:
    """The two-phase commit of one outermost ``dbfleet.atomic(two_phase=True)`` block."""

    def __init__(self, aliases: Sequence[str]) -> None:
        self.transaction_id = new_transaction_id()
        self.aliases = list(aliases)
        self.written: set[str] = set()  # by the statements' first keywords
        self.executed: set[str] = set()
        self.state = dict.fromkeys(self.aliases, "active")
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
                _engine(connection).begin(connection, protocol.transaction_id)
            except BaseException:
                protocol.state[alias] = "done"
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
        getattr(_engine(connection), action)(connection, self.transaction_id, *args)

    def _ask(self, alias: str, question: str) -> Any:
        connection = connections[alias]
        return getattr(_engine(connection), question)(connection)

    def abort(self) -> None:
        """Roll back every participant; what cannot be reached is left to recovery."""
        self._stop_tracking()
        for alias, state in self.state.items():
            try:
                if state == "active":
                    self._do(alias, "rollback_active")
                elif state == "prepared":
                    self._do(alias, "finish_prepared", False)
            except DatabaseError:
                logger.warning(
                    "Could not roll back %s on %r; `fleet recover` will.",
                    self.transaction_id,
                    alias,
                    exc_info=True,
                )
            self.state[alias] = "done"

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
            self.state[writers[0]] = "done"
        for alias in readers:
            # They changed nothing: committing only ends their transactions
            # (and releases their locks), so a failure here loses no data.
            try:
                self._do(alias, "commit_one_phase")
            except DatabaseError:
                logger.warning(
                    "Ending the read-only transaction on %r failed.", alias, exc_info=True
                )
            self.state[alias] = "done"

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
                    self.state[alias] = "done"
                    raise
                self.state[alias] = "prepared"
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
                if not gone(error):
                    logger.warning("COMMIT PREPARED %s failed on %r.", xid, alias, exc_info=True)
                    pending.append(alias)
            self.state[alias] = "done"
        if pending:
            committed = [alias for alias in writers if alias not in pending]
            raise InDoubtError(
                xid,
                f"the decision to commit is recorded and {_names(committed)} committed, but "
                f"{_names(pending)} could not be told and still hold(s) it prepared.",
            )
        self._forget(coordinator)
        _step("done", xid)

    def _decide(self, coordinator: str | None) -> None:
        """Record the decision to commit; on return it is recorded, else this raised."""
        xid = self.transaction_id
        record = _decision_insert()
        if coordinator is not None and connections[coordinator].closed_in_transaction:
            coordinator = None  # Closed after an error while deciding.
        if coordinator is None:
            try:
                with decision_connection() as connection:
                    _execute(connection, record, (xid, True, _now_ms()))
            except BaseException as error:
                self._settle_unknown_decision(error, collided=isinstance(error, IntegrityError))
            return
        connection = connections[coordinator]
        try:
            _execute(connection, record, (xid, True, _now_ms()))
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
            self.state[coordinator] = "done"
            self._settle_unknown_decision(error, collided=False)
        self.state[coordinator] = "done"

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
                    sql = _forget_sql(connection, self)
                    autocommit = connection.vendor == "postgresql" and connection.get_autocommit()
                    _execute(connection, f"BEGIN; {sql}; COMMIT" if autocommit else sql)
            except DatabaseError:
                logger.warning("Could not delete decision %s.", self.transaction_id, exc_info=True)
            return
        connection = connections[coordinator]
        try:
            # Committed here, so that the block's own commit has nothing left to do.
            _execute(connection, _forget_sql(connection, self))
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


def _forget_sql(connection: BaseDatabaseWrapper, protocol: Protocol) -> str:
    # No bound parameters, so that PostgreSQL takes both statements at once.
    delete = f"DELETE FROM {TABLE} WHERE transaction_id = {_literal(protocol.transaction_id)}"
    if connection.vendor == "postgresql":
        return f"SET LOCAL synchronous_commit TO OFF; {delete}"
    return delete


def _overtaken(transaction_id: str) -> CommitError:
    return CommitError(
        f"Two-phase transaction {transaction_id} was rolled back everywhere: `fleet recover` had "
        "already decided to roll it back, as it stayed prepared longer than the grace period "
        '(DBFLEET["RECOVERY_GRACE"]). Run it again.'
    )


def _names(aliases: Sequence[str]) -> str:
    return ", ".join(repr(alias) for alias in aliases) or "no database"


def _decision_insert() -> str:
    return f"INSERT INTO {TABLE} (transaction_id, committed, created_ms) VALUES (%s, %s, %s)"


def _decision_delete() -> str:
    return f"DELETE FROM {TABLE} WHERE transaction_id = %s"


@contextlib.contextmanager
def decision_connection() -> Iterator[BaseDatabaseWrapper]:
    """A connection to ``DEFAULT_DATABASE`` in autocommit mode, for the decision log.

    The thread's own connection when no transaction is open on it; otherwise a
    new one, so that the record does not wait for (or die with) that transaction.
    """
    alias = fleet_settings().default_database
    connection = connections[alias]
    if not connection.in_atomic_block:
        yield connection
        return
    own = connections.create_connection(alias)
    try:
        yield own
    finally:
        own.close()


@dataclass(frozen=True)
class Prepared:
    """A prepared transaction found on a database."""

    alias: str
    transaction_id: str
    name: str  # the engine's own name for it: a PostgreSQL gid, an XA xid's data

    @property
    def age(self) -> float:
        return time.time() - started_ms(self.transaction_id) / 1000


def participants() -> list[str]:
    """Aliases that can hold prepared transactions (PostgreSQL, MariaDB), replicas excepted."""
    topology = get_topology()
    return [
        alias
        for alias in connections
        if connections[alias].vendor in ENGINES and not topology.is_replica(alias)
    ]


def in_doubt(alias: str) -> list[Prepared]:
    """The dbfleet transactions prepared on ``alias`` and not yet settled."""
    connection = connections[alias]
    if connection.vendor == "postgresql":
        rows = _execute(
            connection,
            "SELECT gid FROM pg_prepared_xacts "
            "WHERE database = current_database() AND gid LIKE %s ORDER BY prepared",
            (PREFIX + "%",),
        )
        return [Prepared(alias, gid.rsplit(":", 1)[0], gid) for (gid,) in rows]
    found = []
    for format_id, gtrid_length, _, data in _execute(connection, "XA RECOVER"):
        data = data.decode() if isinstance(data, bytes) else data
        gtrid, branch = data[:gtrid_length], data[gtrid_length:]
        mine = branch.startswith(f"{_xa_branch(connection)}@")
        if format_id == XA_FORMAT and gtrid.startswith(PREFIX) and mine:
            found.append(Prepared(alias, gtrid, data))
    return found


def settle(prepared: Prepared, commit: bool) -> None:
    """Commit or roll back one prepared transaction."""
    connection = connections[prepared.alias]
    if connection.vendor == "postgresql":
        _pg_finish(connection, prepared.name, commit)
    else:
        gtrid = prepared.transaction_id
        xid = (gtrid, prepared.name[len(gtrid) :], XA_FORMAT)
        _execute(connection, f"XA {'COMMIT' if commit else 'ROLLBACK'} %s, %s, %s", xid)


def settle_one(prepared: Prepared, commit: bool, detail: str = "") -> Outcome:
    """Settle ``prepared`` as decided, and say how that went."""
    try:
        settle(prepared, commit)
    except DatabaseError as error:
        try:
            still = any(found.name == prepared.name for found in in_doubt(prepared.alias))
        except DatabaseError:
            still = True
        if not still:
            # Settled since it was listed: by its coordinator, finishing, or
            # another recovery; either way as the decision says.
            return Outcome(prepared, "already settled", detail)
        if busy(error):
            return Outcome(
                prepared, "busy", "a live session holds it (its coordinator, finishing?); run again"
            )
        return Outcome(prepared, "failed", str(error).strip())
    return Outcome(prepared, "committed" if commit else "rolled back", detail)


def _sqlstate(error: DatabaseError) -> str | None:
    """PostgreSQL's error code: ``sqlstate`` in psycopg 3, ``pgcode`` in psycopg2."""
    cause = error.__cause__
    code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return str(code) if code else None


def gone(error: DatabaseError) -> bool:
    """Whether ``error`` says that PostgreSQL has no such prepared transaction (any more)."""
    return _sqlstate(error) == "42704"


def busy(error: DatabaseError) -> bool:
    """Whether ``error`` says another session holds the prepared transaction."""
    # PostgreSQL: object_in_use. MariaDB: XAER_NOTA, which is also its answer
    # while the session that prepared the branch is still connected.
    return _sqlstate(error) == "55006" or error.args[:1] == (1397,)


@dataclass
class Outcome:
    """What recovery did with one prepared transaction."""

    prepared: Prepared
    # "committed", "rolled back", "already settled", "waiting" (younger than the grace
    # period), "busy" (held by a live session), "failed", or "would ..." in a dry run.
    action: str
    detail: str = ""


@dataclass
class Recovery:
    outcomes: list[Outcome]
    unreachable: dict[str, str]  # alias -> error
    purged: int = 0


def decisions(transaction_ids: Sequence[str]) -> dict[str, bool]:
    """The recorded decisions for ``transaction_ids``."""
    if not transaction_ids:
        return {}
    with decision_connection() as connection:
        marks = ", ".join(["%s"] * len(transaction_ids))
        rows = _execute(
            connection,
            f"SELECT transaction_id, committed FROM {TABLE} WHERE transaction_id IN ({marks})",
            list(transaction_ids),
        )
    return {transaction_id: bool(committed) for transaction_id, committed in rows}


def decide_rollback(transaction_id: str) -> bool:
    """Record "roll back" unless a decision exists; return the decision that stands."""
    with decision_connection() as connection:
        try:
            _execute(connection, _decision_insert(), (transaction_id, False, _now_ms()))
        except IntegrityError:
            return decisions([transaction_id])[transaction_id]
    return False


def find_in_doubt(aliases: Sequence[str] | None = None) -> tuple[list[Prepared], dict[str, str]]:
    """Prepared dbfleet transactions on ``aliases`` (all participants), and unreachable aliases."""
    found: list[Prepared] = []
    unreachable: dict[str, str] = {}
    seen: set[str] = set()
    for alias in participants() if aliases is None else aliases:
        try:
            for prepared in in_doubt(alias):
                # Two aliases may name one database: settle its transactions once.
                if prepared.name not in seen:
                    seen.add(prepared.name)
                    found.append(prepared)
        except DatabaseError as error:
            unreachable[alias] = str(error).strip() or type(error).__name__
    return found, unreachable


def recover(grace: float | None = None, dry_run: bool = False) -> Recovery:
    """Settle every in-doubt dbfleet transaction; purge decisions nobody needs any more."""
    grace = fleet_settings().seconds["RECOVERY_GRACE"] if grace is None else grace
    started = _now_ms()  # Before the search: see _purge().
    found, unreachable = find_in_doubt()
    known = decisions(sorted({prepared.transaction_id for prepared in found}))
    outcomes: list[Outcome] = []
    for prepared in found:
        decision = known.get(prepared.transaction_id)
        if decision is None:
            if prepared.age < grace:
                outcomes.append(
                    Outcome(prepared, "waiting", f"no decision yet; younger than {grace:g} s")
                )
                continue
            if dry_run:
                outcomes.append(Outcome(prepared, "would roll back", "no decision recorded"))
                continue
            decision = known[prepared.transaction_id] = decide_rollback(prepared.transaction_id)
        detail = "decision: commit" if decision else "no decision recorded"
        if dry_run:
            outcomes.append(
                Outcome(prepared, f"would {'commit' if decision else 'roll back'}", detail)
            )
            continue
        outcomes.append(settle_one(prepared, decision, detail))
    recovery = Recovery(outcomes, unreachable)
    if not dry_run and not unreachable and all(o.action != "failed" for o in outcomes):
        keep = {o.prepared.transaction_id for o in outcomes if o.action in ("waiting", "busy")}
        recovery.purged = _purge(started - int(grace * 1000), keep)
    return recovery


def _purge(before_ms: int, keep: set[str]) -> int:
    """Delete decisions that no prepared transaction can need any more.

    A decision to commit is recorded after its transactions were prepared, so
    one recorded before this run searched (minus the grace period) whose
    transaction was not found prepared has been carried out everywhere. A
    decision to roll back is kept for a day, so that a coordinator that stalled
    before recording its own decision finds it and cannot commit.
    """
    with decision_connection() as connection:
        rows = _execute(
            connection,
            f"SELECT transaction_id FROM {TABLE} WHERE "
            f"(committed = %s AND created_ms < %s) OR created_ms < %s",
            (True, before_ms, _now_ms() - TOMBSTONE_SECONDS * 1000),
        )
        stale = [transaction_id for (transaction_id,) in rows if transaction_id not in keep]
        for transaction_id in stale:
            _execute(connection, _decision_delete(), (transaction_id,))
    return len(stale)
