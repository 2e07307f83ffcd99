"""The migration lock in one process: its timeout setting, reentrancy, and a second session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.management.base import CommandError
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from dbfleet.migrating import lock
from dbfleet.migrating.resume import resume
from tests.settings import ENGINES

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)


@pytest.mark.parametrize(
    ("value", "seconds"), [("", lock.DEFAULT_TIMEOUT), ("0", 0.0), ("2.5", 2.5)]
)
def test_the_timeout_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, seconds: float
) -> None:
    monkeypatch.setenv(lock.TIMEOUT_VARIABLE, value)
    assert lock.lock_timeout() == seconds


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_timeout_that_is_no_number_of_seconds_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(lock.TIMEOUT_VARIABLE, value)
    with pytest.raises(CommandError, match=f"{lock.TIMEOUT_VARIABLE}='{value}' is not a number"):
        lock.lock_timeout()


@pytest.fixture
def other_session() -> Iterator[BaseDatabaseWrapper]:
    """A second session on 'default', as another migrator would have."""
    if ENGINES["default"] == "sqlite":
        pytest.skip("'default' is an in-memory SQLite database here: no file to lock beside it")
    other = connections.create_connection("default")
    try:
        yield other
    finally:
        lock.release(other)
        other.close()


def test_the_lock_is_reentrant_and_keeps_out_another_session(
    other_session: BaseDatabaseWrapper,
) -> None:
    ours = connections["default"]
    waited: list[str] = []
    with lock.migration_lock(ours, timeout=0):
        with lock.migration_lock(ours, timeout=0):  # Again, in the same session.
            assert lock.held(ours)
        assert lock.held(ours)  # Only the last release gives it up.
        with pytest.raises(lock.MigrationLocked, match="another migrator holds") as raised:
            lock.acquire(other_session, timeout=0.3, on_wait=waited.append)
    assert raised.value.returncode == lock.LOCKED_EXIT
    assert len(waited) == 1 and waited[0] in str(raised.value)  # Told once, with the holder.
    assert not lock.held(ours)
    lock.acquire(other_session, timeout=0)  # Free now.
    assert lock.held(other_session)


def test_resume_looks_only_under_the_lock_and_gives_it_back(
    other_session: BaseDatabaseWrapper,
) -> None:
    lock.acquire(other_session, timeout=0)  # Another migrator is at work on 'default'.
    with pytest.raises(lock.MigrationLocked) as raised:
        resume("default", lock_timeout=0)
    assert raised.value.returncode == lock.LOCKED_EXIT
    lock.release(other_session)
    assert resume("default", lock_timeout=0) is None  # Nothing half-applied here.
    assert not lock.held(connections["default"])
