"""One migrator per database: a lock every ``migrate`` holds on its database while it works.

Django's own ``migrate`` and ``fleet migrate``'s workers both take it, in a
``pre_migrate`` receiver (connected by dbfleet's AppConfig), on the connection
that applies the migrations, and release it after ``post_migrate``. Because the
session that changes the schema holds it, the lock lasts exactly as long as
that session: a migrator killed half-way releases it when its connection ends,
never before its statements are done. PostgreSQL: an advisory lock;
MariaDB/MySQL: ``GET_LOCK``; SQLite: a lock file beside the database (see
``vendors/sqlite.py``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from weakref import WeakKeyDictionary, WeakSet

from django.apps import apps
from django.core.management.base import CommandError
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.migrations import Migration
from django.db.models.signals import post_migrate

from dbfleet import vendors

#: The lock's name (PostgreSQL derives its advisory key from it).
NAME = "dbfleet.migrate"
#: How long a migrate waits for another to finish, unless told otherwise.
DEFAULT_TIMEOUT = 30.0
#: Tells a plain ``manage.py migrate`` (and each ``fleet migrate`` worker) how long to wait.
TIMEOUT_VARIABLE = "DBFLEET_MIGRATE_LOCK_TIMEOUT"
#: ``migrate``'s exit code when the lock stayed taken (EX_TEMPFAIL: try again later).
LOCKED_EXIT = 75
#: How often a waiting migrate tries again.
POLL_SECONDS = 0.2
#: The line a waiting migrate prints; ``fleet migrate`` reads it from its workers.
WAITING = re.compile(
    r"^Waiting up to (?P<timeout>\S+) s for the migration lock on '(?P<alias>[^']*)', "
    r"held by (?P<holder>.*)$"
)

# The lock belongs to a session, that is a connection object (one per thread),
# not to a task: it is kept beside the connection, and forgotten with it.
_depth: WeakKeyDictionary[BaseDatabaseWrapper, int] = WeakKeyDictionary()
#: Connections whose lock the pre_migrate receiver took (and post_migrate releases).
_by_signal: WeakSet[BaseDatabaseWrapper] = WeakSet()


class MigrationLocked(CommandError):
    """Another migrator held a database's migration lock for longer than this one waits."""

    def __init__(self, alias: str, holder: str, timeout: float) -> None:
        self.alias, self.holder, self.timeout = alias, holder, timeout
        super().__init__(
            f"Nothing was migrated on {alias!r}: another migrator holds its migration lock, "
            f"{holder}. Waited {timeout:g} s (`fleet migrate --lock-timeout`, or the "
            f"{TIMEOUT_VARIABLE} environment variable for `migrate`). Let that run finish, "
            "then migrate again: it applies what is still pending.",
            returncode=LOCKED_EXIT,
        )


def lock_timeout() -> float:
    """Seconds to wait for the lock: ``DBFLEET_MIGRATE_LOCK_TIMEOUT``, else the default."""
    value = os.environ.get(TIMEOUT_VARIABLE, "")
    if not value:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # negative, or NaN
        raise CommandError(
            f"{TIMEOUT_VARIABLE}={value!r} is not a number of seconds: set it to 0 (fail at "
            f"once if another migrator holds a database) or more, or unset it "
            f"(default {DEFAULT_TIMEOUT:g})."
        )
    return seconds


def waiting_line(alias: str, timeout: float, holder: str) -> str:
    """What a migrate prints when it starts to wait for ``alias``'s lock."""
    return f"Waiting up to {timeout:g} s for the migration lock on {alias!r}, held by {holder}"


def held(connection: BaseDatabaseWrapper) -> bool:
    """Whether this session holds its database's migration lock."""
    return _depth.get(connection, 0) > 0


def acquire(
    connection: BaseDatabaseWrapper,
    timeout: float | None = None,
    on_wait: Callable[[str], None] = lambda holder: None,
) -> None:
    """Take ``connection``'s migration lock, waiting up to ``timeout`` s; raise MigrationLocked.

    Reentrant in one session: each ``acquire`` needs its ``release``. ``on_wait``
    is called with the holder once, when the lock is found taken.
    """
    if held(connection):
        _depth[connection] += 1
        return
    timeout = lock_timeout() if timeout is None else timeout
    vendor = vendors.of(connection)
    deadline = time.monotonic() + timeout
    told = retried = False
    while not vendor.try_session_lock(connection, NAME):
        holder = vendor.session_lock_holder(connection, NAME)
        if holder is None and not retried:
            retried = True  # Released between the two questions: try again at once.
            continue
        holder = holder or "another session (the engine does not say which)"
        if not told:
            on_wait(holder)
            told = True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MigrationLocked(connection.alias, holder, timeout)
        time.sleep(min(POLL_SECONDS, remaining))
    _depth[connection] = 1


def release(connection: BaseDatabaseWrapper) -> None:
    """Undo one ``acquire``; the last one releases the lock."""
    depth = _depth.get(connection, 0)
    if depth > 1:
        _depth[connection] = depth - 1
        return
    if depth == 1:
        del _depth[connection]
        vendors.of(connection).release_session_lock(connection, NAME)


@contextmanager
def migration_lock(
    connection: BaseDatabaseWrapper,
    timeout: float | None = None,
    on_wait: Callable[[str], None] = lambda holder: None,
) -> Iterator[None]:
    """Hold ``connection``'s migration lock within (see ``acquire``)."""
    acquire(connection, timeout, on_wait)
    try:
        yield
    finally:
        release(connection)


def lock_before_migrate(
    sender: Any,
    *,
    using: str,
    plan: list[tuple[Migration, bool]] | None = None,
    stdout: Any = None,
    **kwargs: Any,
) -> None:
    """``pre_migrate``: take the lock for the run (sent once per app: the first one takes it).

    A caller that holds the lock already (``fleet migrate --resume``) planned
    under it, and releases it itself.
    """
    connection = connections[using]
    if connection in _by_signal or held(connection):
        return
    timeout = lock_timeout()

    def tell(holder: str) -> None:
        line = waiting_line(using, timeout, holder)
        if stdout is not None:
            stdout.write(line)
            stdout.flush()

    acquire(connection, timeout, tell)
    _by_signal.add(connection)
    # Connected now, after every app's ready(): it runs after their post_migrate receivers.
    post_migrate.connect(release_after_migrate, dispatch_uid="dbfleet.migration_lock.release")
    if plan:
        try:
            drop_done(connection, plan)
        except BaseException:
            _by_signal.discard(connection)
            release(connection)
            raise


def drop_done(connection: BaseDatabaseWrapper, plan: list[tuple[Migration, bool]]) -> None:
    """Check ``plan`` against what another migrator did before this one got the lock.

    ``migrate`` plans before ``pre_migrate``, so a run that waited planned what
    the other has since applied. Everything done: the plan is emptied (migrate
    then says "No migrations to apply"). Part of it: migrate's model state is
    already built from the old records, so it stops; run again.
    """
    from django.db.migrations.recorder import MigrationRecorder

    applied = set(MigrationRecorder(connection).applied_migrations())

    def is_applied(migration: Migration) -> bool:
        key = (migration.app_label, migration.name)
        return key in applied or bool(migration.replaces and set(migration.replaces) <= applied)

    done = [migration for migration, backwards in plan if is_applied(migration) != backwards]
    if not done:
        return
    if len(done) == len(plan):
        plan.clear()
        return
    labels = ", ".join(f"{m.app_label}.{m.name}" for m in done)
    raise CommandError(
        f"Nothing was migrated on {connection.alias!r}: while this migrate waited for the "
        f"migration lock, another one applied part of its plan ({labels}). Run migrate "
        "again: it plans from what is applied now."
    )


def release_after_migrate(sender: Any, *, using: str, **kwargs: Any) -> None:
    """``post_migrate`` (sent once per app; also by ``flush``): release after the last app."""
    connection = connections[using]
    if connection not in _by_signal:
        return
    configs = [config for config in apps.get_app_configs() if config.models_module is not None]
    if configs and sender is not configs[-1]:
        return
    _by_signal.discard(connection)
    release(connection)
