"""Two-phase commit on real PostgreSQL and MariaDB servers, and ``fleet recover``.

A test that prepares a transaction on PostgreSQL is marked ``prepared_transactions``:
on a server with them turned off (the stock ``max_prepared_transactions = 0``) it is
skipped with the fix, or fails the run when servers are required (see conftest.py).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from io import StringIO
from typing import Any, TypeVar

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, IntegrityError, OperationalError, connections, transaction
from django.db.transaction import TransactionManagementError
from django.test import override_settings

import dbfleet
from dbfleet import vendors
from dbfleet.exceptions import InDoubtError
from dbfleet.models import Decision
from dbfleet.transactions.two_phase import find_in_doubt, recover, two_phase_step
from dbfleet.transactions.two_phase.decisions import decide_rollback, decisions
from dbfleet.transactions.two_phase.recovery import settle_one
from tests.bank.models import Account, Vault
from tests.library.models import Review
from tests.loans.models import Member
from tests.settings import DBFLEET, ENGINES
from tests.test_transactions import Boom, balances, kill_session
from tests.threads import run_in_threads

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)


@pytest.fixture(autouse=True)
def settle_leftovers() -> Iterator[None]:
    """Settle what a failing test left prepared, so that it cannot block the next ones."""
    yield
    connections.close_all()
    if SERVERS:
        recover(grace=0)


SERVERS = {alias for alias, engine in ENGINES.items() if engine != "sqlite"}
needs = {
    alias: pytest.mark.skipif(
        alias not in SERVERS, reason=f"{alias!r} is on SQLite in this configuration"
    )
    for alias in ENGINES
}
#: Every database that wrote but DEFAULT_DATABASE ('default' here) is prepared; is one of
#: those on PostgreSQL, which may have prepared transactions turned off (see conftest.py)?
PREPARES_ON_POSTGRES = any(
    engine == "postgres" for alias, engine in ENGINES.items() if alias != "default"
)
PREPARED_TRANSACTIONS = [pytest.mark.prepared_transactions] if PREPARES_ON_POSTGRES else []
F = TypeVar("F", bound=Callable[..., Any])


def prepares(test: F) -> F:
    """Mark a test that prepares transactions: on PostgreSQL it needs them turned on."""
    for mark in PREPARED_TRANSACTIONS:
        test = mark(test)
    return test


@pytest.fixture
def steps() -> Iterator[list[tuple[str, str | None]]]:
    """The protocol's steps, as (step, alias)."""
    seen: list[tuple[str, str | None]] = []

    def record(step: str, alias: str | None, **kwargs: Any) -> None:
        seen.append((step, alias))

    two_phase_step.connect(record)
    yield seen
    two_phase_step.disconnect(record)


@pytest.fixture
def on_step() -> Iterator[Callable[[str, Callable[[str | None], None]], None]]:
    """``on_step("commit", action)``: run ``action(alias)`` at that step, once."""
    receivers: list[Any] = []

    def install(wanted: str, action: Callable[[str | None], None]) -> None:
        done: list[bool] = []

        def receiver(step: str, alias: str | None, **kwargs: Any) -> None:
            if step == wanted and not done:
                done.append(True)
                action(alias)

        receivers.append(receiver)
        two_phase_step.connect(receiver)

    yield install
    for receiver in receivers:
        two_phase_step.disconnect(receiver)


def nothing_in_doubt() -> bool:
    found, unreachable = find_in_doubt()
    return not found and not unreachable


def transfer(amount: int) -> None:
    with dbfleet.atomic(Account, Vault, two_phase=True):
        Account.objects.update(balance=Account.objects.get().balance - amount)
        Vault.objects.update(balance=Vault.objects.get().balance + amount)


@needs["default"]
@needs["books"]
@prepares
def test_commits_on_both_databases_with_the_decision_in_the_default_database(
    money: None, steps: list[tuple[str, str | None]]
) -> None:
    transfer(30)
    assert balances() == (70, 130)
    # 'default' wrote, so its own commit carries the decision: only 'books' is prepared.
    assert steps == [("prepare", "books"), ("decide", None), ("commit", "books"), ("done", None)]
    assert Decision.objects.count() == 0  # Forgotten once every database committed.
    assert nothing_in_doubt()


@needs["books"]
@needs["loans"]
@prepares
def test_without_the_default_database_every_writer_is_prepared(
    steps: list[tuple[str, str | None]],
) -> None:
    with dbfleet.atomic(Vault, Member, two_phase=True):
        Vault.objects.create(name="v")
        Member.objects.create(name="m")
    assert (Vault.objects.count(), Member.objects.count()) == (1, 1)
    assert [step for step, _ in steps] == [
        "prepare",
        "prepare",
        "decide",
        "commit",
        "commit",
        "done",
    ]
    assert Decision.objects.count() == 0
    assert nothing_in_doubt()


@needs["default"]
@needs["books"]
def test_a_database_that_wrote_nothing_is_not_prepared(
    money: None, steps: list[tuple[str, str | None]]
) -> None:
    with dbfleet.atomic(Account, Vault, two_phase=True):
        Account.objects.update(balance=1)
    assert balances() == (1, 100)
    assert steps == []  # One writer: a plain commit, no decision needed.
    assert nothing_in_doubt()


@needs["default"]
@needs["books"]
def test_a_database_that_only_read_is_not_prepared_on_postgresql(
    money: None, steps: list[tuple[str, str | None]]
) -> None:
    with dbfleet.atomic(Account, Vault, two_phase=True):
        assert Vault.objects.get().balance == 100
        Account.objects.update(balance=1)
    assert balances() == (1, 100)
    if connections["books"].vendor == "postgresql":
        assert steps == []  # The server says the transaction wrote nothing.
    else:
        assert ("prepare", "books") in steps  # MariaDB cannot tell: prepared to be safe.
    assert nothing_in_doubt()


FUNCTIONS = {
    "postgresql": "CREATE FUNCTION dbfleet_write() RETURNS integer AS $$ "
    "INSERT INTO bank_vault (name, balance) VALUES ('by a function', 1) RETURNING 1 $$ "
    "LANGUAGE sql",
    "mysql": "CREATE FUNCTION dbfleet_write() RETURNS integer MODIFIES SQL DATA BEGIN "
    "INSERT INTO bank_vault (name, balance) VALUES ('by a function', 1); RETURN 1; END",
}


@needs["default"]
@needs["books"]
@prepares
def test_a_write_hidden_in_a_select_is_found_and_prepared(
    money: None, steps: list[tuple[str, str | None]]
) -> None:
    books = connections["books"]
    with books.cursor() as cursor:
        cursor.execute("DROP FUNCTION IF EXISTS dbfleet_write")
        cursor.execute(FUNCTIONS[books.vendor])
    with dbfleet.atomic(Account, Vault, two_phase=True):
        Account.objects.update(balance=1)
        with books.cursor() as cursor:
            cursor.execute("SELECT dbfleet_write()")  # A write, by its first keyword a read.
    assert ("prepare", "books") in steps
    assert Vault.objects.filter(name="by a function").exists()


@needs["default"]
@needs["books"]
def test_an_exception_rolls_back_both(money: None) -> None:
    with pytest.raises(Boom), dbfleet.atomic(Account, Vault, two_phase=True):
        Account.objects.update(balance=0)
        Vault.objects.update(balance=0)
        raise Boom
    assert balances() == (100, 100)
    assert nothing_in_doubt()


@needs["default"]
@needs["books"]
@prepares
def test_on_commit_runs_after_the_second_phase(money: None) -> None:
    seen: list[tuple[int, int]] = []
    with dbfleet.atomic(Account, Vault, two_phase=True):
        Account.objects.update(balance=0)
        Vault.objects.update(balance=200)
        dbfleet.on_commit(lambda: seen.append(balances()))
    assert seen == [(0, 200)]


@needs["default"]
@needs["books"]
def test_a_failing_prepare_rolls_back_everything(money: None) -> None:
    if connections["books"].vendor == "mysql":
        pytest.skip("MariaDB checks foreign keys at once; nothing is left to fail at prepare")
    with pytest.raises(IntegrityError), dbfleet.atomic(Account, Review, two_phase=True):
        Account.objects.update(balance=0)
        Review.objects.create(book_id=999_999, stars=1)  # PostgreSQL checks it at PREPARE.
    assert Account.objects.get().balance == 100 and Review.objects.count() == 0
    assert nothing_in_doubt()


@needs["default"]
@needs["books"]
@prepares
def test_a_failing_decision_commit_rolls_back_the_prepared_database(
    money: None, steps: list[tuple[str, str | None]]
) -> None:
    if connections["default"].vendor == "mysql":
        pytest.skip("MariaDB checks foreign keys at once; nothing is left to fail at commit")
    with pytest.raises(IntegrityError), dbfleet.atomic(Account, Vault, two_phase=True):
        Vault.objects.update(balance=0)
        # A deferred foreign key: 'default' fails when it commits, after 'books' prepared.
        Permission.objects.create(content_type_id=999_999, codename="x", name="x")
    assert ("prepare", "books") in steps and ("commit", "books") not in steps
    assert balances() == (100, 100)
    assert nothing_in_doubt()


@needs["default"]
@needs["books"]
@prepares
def test_a_lost_commit_is_in_doubt_until_recover_commits_it(money: None, on_step: Any) -> None:
    on_step("commit", lambda alias: kill_session(alias))
    with pytest.raises(InDoubtError) as caught:
        transfer(40)
    assert "'books' could not be told" in str(caught.value)
    assert "fleet recover" in str(caught.value)
    connections["books"].close()
    assert balances() == (60, 100)  # 'books' still holds its part, prepared.
    (prepared,) = find_in_doubt()[0]
    assert (prepared.alias, prepared.transaction_id) == ("books", caught.value.transaction_id)

    out = StringIO()
    with pytest.raises(CommandError) as failed:  # Not in order: exit code 4, in doubt.
        call_command("fleet", "status", stdout=out)
    assert failed.value.returncode == 4
    assert "books: " in out.getvalue() and "1 in doubt: run `fleet recover`" in out.getvalue()

    out = StringIO()
    call_command("fleet", "recover", "--grace", "0", stdout=out)
    assert "committed" in out.getvalue() and "decision: commit" in out.getvalue()
    assert balances() == (60, 140)
    assert nothing_in_doubt()
    assert Decision.objects.count() == 0  # Purged: nothing needs it any more.


@needs["default"]
@needs["books"]
@prepares
def test_without_a_decision_recover_waits_then_rolls_back(money: None, on_step: Any) -> None:
    def crash(alias: str | None) -> None:
        kill_session("books")  # So that the roll back cannot reach it either.
        raise Boom

    on_step("decide", crash)
    with pytest.raises(Boom):
        transfer(10)
    connections["books"].close()
    (prepared,) = find_in_doubt()[0]

    missing = pytest.raises(CommandError, match="run `manage.py fleet migrate` to create it")
    with override_settings(DBFLEET={**DBFLEET, "DEFAULT_DATABASE": "loans"}), missing:
        call_command("fleet", "recover")  # 'loans' has no decision log.

    result = recover(grace=3600)
    assert [outcome.action for outcome in result.outcomes] == ["waiting"]
    assert recover(grace=0, dry_run=True).outcomes[0].action == "would roll back"
    assert len(find_in_doubt()[0]) == 1

    out = StringIO()
    call_command("fleet", "recover", "--grace", "0", "--format", "json", stdout=out)
    document = json.loads(out.getvalue())
    assert [o["action"] for o in document["outcomes"]] == ["rolled back"]
    assert balances() == (100, 100)
    assert nothing_in_doubt()
    # The roll back is recorded, so a coordinator that was only slow cannot commit now.
    assert Decision.objects.get(transaction_id=prepared.transaction_id).committed is False
    with pytest.raises(IntegrityError), connections["default"].cursor() as cursor:
        cursor.execute(
            "INSERT INTO dbfleet_decision (transaction_id, committed, created_ms) "
            "VALUES (%s, %s, %s)",
            [prepared.transaction_id, True, 0],
        )


def test_recover_with_nothing_in_doubt() -> None:
    out = StringIO()
    call_command("fleet", "recover", stdout=out)
    assert out.getvalue().strip() == "No in-doubt transactions."


def test_recover_refuses_a_negative_grace() -> None:
    with pytest.raises(CommandError, match="--grace must be a number of seconds >= 0"):
        call_command("fleet", "recover", "--grace", "-1")


@pytest.mark.skipif(
    ENGINES["loans"] != "sqlite", reason="'loans' is on a server in this configuration"
)
def test_sqlite_cannot_take_part() -> None:
    with (
        pytest.raises(
            TransactionManagementError, match=r"\(sqlite\) cannot take part in a two-phase commit"
        ),
        dbfleet.atomic(Account, Member, two_phase=True),
    ):
        pass  # pragma: no cover
    assert not connections["default"].in_atomic_block


@needs["default"]
@needs["books"]
def test_refused_inside_a_transaction_that_would_commit_on_its_own() -> None:
    with transaction.atomic(using="default"):
        refused = pytest.raises(TransactionManagementError, match="outermost block")
        with refused, dbfleet.atomic(Account, Vault, two_phase=True):
            pass  # pragma: no cover
        assert not connections["books"].in_atomic_block


@needs["default"]
@needs["books"]
@prepares
def test_nested_two_phase_blocks_commit_with_the_outer_one(
    money: None, steps: list[tuple[str, str | None]]
) -> None:
    with dbfleet.atomic(Account, Vault, two_phase=True):
        transfer(5)
        assert steps == []
        with pytest.raises(Boom), dbfleet.atomic(Vault, two_phase=True):
            Vault.objects.update(balance=0)
            raise Boom
    assert balances() == (95, 105)
    assert [step for step, _ in steps] == ["prepare", "decide", "commit", "done"]


@needs["default"]
@needs["books"]
@pytest.mark.django_db(databases="__all__", transaction=False)
def test_inside_a_test_case_transaction_it_is_a_plain_nested_block(
    money: None, steps: list[tuple[str, str | None]]
) -> None:
    transfer(10)
    assert balances() == (90, 110)
    assert steps == []


def means_try_again(error: DatabaseError) -> bool:
    """Only serialization failures, deadlocks and lock timeouts (dbfleet.vendors says which)."""
    return any(vendor.is_retryable(error) for vendor in vendors.VENDORS.values())


@dataclass(frozen=True)
class Planned:
    """One transfer of ``amount`` from an account to a vault, and what goes wrong in it."""

    account: int
    vault: int
    amount: int
    #: None; "commit": 'books'' session dies before it commits (best effort: after 'default'
    #: committed; two-phase: before it is prepared); "phases": it dies between the two phases.
    fault: str | None


def settle_mine(transaction_id: str) -> None:
    """Settle one in-doubt transaction as its recorded decision says, as `fleet recover` does.

    Only this one: a recovery of everything would race the other threads' coordinators.
    """
    deadline = time.monotonic() + 30
    while mine := [p for p in find_in_doubt()[0] if p.transaction_id == transaction_id]:
        assert time.monotonic() < deadline, f"{transaction_id} still in doubt after 30 s"
        decision = decisions([transaction_id])[transaction_id]
        for prepared in mine:
            # "busy" while the killed session is still ending on MariaDB: try again.
            assert settle_one(prepared, decision).action in ("committed", "busy")
        time.sleep(0.01)


@needs["default"]
@needs["books"]
@pytest.mark.parametrize(
    "two_phase",
    [
        pytest.param(True, id="two-phase", marks=PREPARED_TRANSACTIONS),
        pytest.param(False, id="best-effort"),
    ],
)
def test_concurrent_transfers_with_failures_conserve_the_total_only_with_two_phase(
    two_phase: bool,
) -> None:
    """8 threads move money between accounts (in 'default') and vaults (in 'books').

    In some transfers the server ends the session of 'books' before it commits:
    best effort has committed 'default' by then, and money disappears; two-phase
    has not decided yet, and rolls both back. In others (two-phase only) the
    session ends between the two phases: the transfer is in doubt until it is
    recovered, and then complete. Each outcome is checked against its plan, and
    every balance against the outcomes.
    """
    accounts = [Account.objects.create(name=f"a{n}", balance=1000).pk for n in range(4)]
    vaults = [Vault.objects.create(name=f"v{n}", balance=1000).pk for n in range(4)]
    faults = [None] * 6 + ["commit"] + (["phases"] if two_phase else [None])
    armed = threading.local()  # The fault the current thread's transfer must meet at a step.

    def kill_at_step(step: str, alias: str | None, **kwargs: Any) -> None:
        if alias == "books" and getattr(armed, "step", None) == step:
            armed.step = None
            kill_session("books")

    def plan(rng: random.Random) -> Planned:
        fault = rng.choice(faults)
        # Money that goes missing goes missing for sure: a fault's amount is not 0.
        amount = rng.randint(1, 50) if fault else rng.randint(-50, 50)
        return Planned(rng.choice(accounts), rng.choice(vaults), amount, fault)

    def transfer(planned: Planned) -> str:
        """Run one transfer; say how it ended ("committed", "partial", "rolled back")."""
        try:
            with dbfleet.atomic(Account, Vault, two_phase=two_phase):
                # Locks are taken in one order (default, then books): no deadlock.
                account = Account.objects.select_for_update().get(pk=planned.account)
                vault = Vault.objects.select_for_update().get(pk=planned.vault)
                account.balance -= planned.amount
                vault.balance += planned.amount
                account.save(update_fields=["balance"])
                vault.save(update_fields=["balance"])
                if planned.fault == "commit":
                    kill_session("books")
                armed.step = "commit" if planned.fault == "phases" else None
        except dbfleet.PartialCommitError as error:
            assert not two_phase and planned.fault == "commit", error
            assert (error.committed, error.failed) == (("default",), "books")
            connections["books"].close()
            return "partial"
        except InDoubtError as error:
            assert two_phase and planned.fault == "phases", error
            connections["books"].close()
            settle_mine(error.transaction_id)
            return "committed"
        except DatabaseError as error:
            if (
                means_try_again(error)
                or planned.fault != "commit"
                or isinstance(error, dbfleet.CommitError)
            ):
                raise
            # Two-phase: PREPARE (XA END) found the session gone; nothing was decided.
            assert two_phase, error
            connections["books"].close()
            return "rolled back"
        assert planned.fault is None, planned
        return "committed"

    def work(seed: int) -> list[tuple[Planned, str]]:
        rng = random.Random(seed)
        deadline = time.monotonic() + 120
        ended: list[tuple[Planned, str]] = []
        for planned in [plan(rng) for _ in range(25)]:
            while True:
                assert time.monotonic() < deadline, f"25 transfers took more than 120 s: {ended}"
                try:
                    ended.append((planned, transfer(planned)))
                    break
                except DatabaseError as error:
                    if not means_try_again(error):
                        raise
        return ended

    two_phase_step.connect(kill_at_step)
    try:
        ended = [
            outcome
            for outcomes in run_in_threads([partial(work, seed) for seed in range(8)])
            for outcome in outcomes
        ]
    finally:
        two_phase_step.disconnect(kill_at_step)

    expected = {"commit": "rolled back" if two_phase else "partial", "phases": "committed"}
    assert [outcome for planned, outcome in ended] == [
        expected[planned.fault] if planned.fault else "committed" for planned, _ in ended
    ]
    tally = Counter(outcome for _, outcome in ended)
    faults_met = Counter(planned.fault for planned, _ in ended)
    assert len(ended) == 200 and faults_met["commit"] > 0
    # Each balance is what the transfers that ended as they did make it.
    want_accounts = dict.fromkeys(accounts, 1000)
    want_vaults = dict.fromkeys(vaults, 1000)
    for planned, outcome in ended:
        if outcome in ("committed", "partial"):
            want_accounts[planned.account] -= planned.amount
        if outcome == "committed":
            want_vaults[planned.vault] += planned.amount
    assert dict(Account.objects.values_list("pk", "balance")) == want_accounts
    assert dict(Vault.objects.values_list("pk", "balance")) == want_vaults
    assert Account.objects.exclude(balance=1000).exists()  # Money did move.
    total = sum(want_accounts.values()) + sum(want_vaults.values())
    lost = sum(planned.amount for planned, outcome in ended if outcome == "partial")
    assert total == 8000 - lost
    if two_phase:
        assert lost == 0 and tally["partial"] == 0 and faults_met["phases"] > 0
        assert nothing_in_doubt()
        # The decisions of the transfers that were in doubt wait for recovery to purge them.
        assert recover(grace=0).purged == faults_met["phases"]
    else:
        assert lost > 0 and tally["partial"] == faults_met["commit"]  # The invariant is lost.
    assert Decision.objects.count() == 0


@needs["default"]
@needs["books"]
@prepares
def test_a_transaction_settled_meanwhile_is_recognised(money: None, on_step: Any) -> None:
    """Recovery may race a coordinator that finishes: that is not a failure."""
    on_step("commit", lambda alias: kill_session(alias))
    with pytest.raises(InDoubtError):
        transfer(1)
    connections["books"].close()
    (prepared,) = find_in_doubt()[0]
    assert settle_one(prepared, True).action == "committed"
    assert settle_one(prepared, True).action == "already settled"
    assert balances() == (99, 101)


@needs["default"]
@needs["books"]
@prepares
def test_recovery_while_the_coordinator_is_still_committing(money: None, on_step: Any) -> None:
    """PostgreSQL lets recovery commit the branch; MariaDB keeps it for its live session."""
    seen: list[list[str]] = []

    def recover_meanwhile(alias: str | None) -> None:
        with ThreadPoolExecutor(max_workers=1) as pool:
            outcomes = pool.submit(recovery_in_a_thread).result()
        seen.append(outcomes)

    on_step("commit", recover_meanwhile)
    transfer(7)  # No error: committed, by the coordinator or by recovery.
    expected = "busy" if connections["books"].vendor == "mysql" else "committed"
    assert seen == [[expected]]
    assert balances() == (93, 107)
    assert nothing_in_doubt()
    assert Decision.objects.count() == 0


def recovery_in_a_thread() -> list[str]:
    try:
        return [outcome.action for outcome in recover(grace=0).outcomes]
    finally:
        connections.close_all()


@needs["default"]
@needs["books"]
@prepares
def test_a_coordinator_late_after_recovery_rolled_back_rolls_back_too(
    money: None, on_step: Any
) -> None:
    """Recovery's "roll back" record makes a slow coordinator's "commit" record collide."""
    decided: list[str] = []

    def recovery_first(step: str, transaction_id: str, **kwargs: Any) -> None:
        if step == "decide":
            decided.append(transaction_id)
            assert decide_rollback(transaction_id) is False

    two_phase_step.connect(recovery_first)
    try:
        with pytest.raises(dbfleet.CommitError, match="`fleet recover` had already decided"):
            transfer(25)
    finally:
        two_phase_step.disconnect(recovery_first)
    assert balances() == (100, 100)
    assert nothing_in_doubt()
    assert Decision.objects.get(transaction_id=decided[0]).committed is False


@needs["default"]
@needs["books"]
@prepares
def test_a_coordinator_that_loses_its_connection_before_deciding_rolls_back(
    money: None, on_step: Any
) -> None:
    on_step("decide", lambda alias: kill_session("default"))
    with pytest.raises(OperationalError):
        transfer(5)
    connections["default"].close()
    assert nothing_in_doubt()  # 'books' was prepared, and rolled back.
    assert balances() == (100, 100)


@needs["books"]
@needs["loans"]
@prepares
def test_the_decision_never_rides_in_a_transaction_open_on_the_default_database(
    steps: list[tuple[str, str | None]],
) -> None:
    with pytest.raises(Boom), transaction.atomic(using="default"):
        with dbfleet.atomic(Vault, Member, two_phase=True):
            Vault.objects.create(name="v")
            Member.objects.create(name="m")
        Account.objects.create(name="rolled back with default's own transaction")
        raise Boom
    assert (Vault.objects.count(), Member.objects.count(), Account.objects.count()) == (1, 1, 0)
    assert ("done", None) in steps
    assert Decision.objects.count() == 0


@needs["default"]
@needs["books"]
def test_a_database_marked_for_rollback_rolls_back_the_two_phase_group(
    money: None, steps: list[tuple[str, str | None]]
) -> None:
    with dbfleet.atomic(Account, Vault, two_phase=True):
        Account.objects.update(balance=0)
        Vault.objects.update(balance=0)
        transaction.set_rollback(True, using="books")
    assert balances() == (100, 100)
    assert steps == []
    assert nothing_in_doubt()


@needs["default"]
@needs["books"]
def test_a_savepoint_that_cannot_be_released_rolls_back_everything(money: None) -> None:
    with pytest.raises(DatabaseError), dbfleet.atomic(Account, Vault, two_phase=True):
        Account.objects.update(balance=1)
        with dbfleet.atomic(Account, Vault, two_phase=True):
            Account.objects.update(balance=2)
            Vault.objects.update(balance=2)
            kill_session("books")  # Releasing its savepoint fails.
    connections["books"].close()
    assert balances() == (100, 100)
    assert nothing_in_doubt()


@needs["default"]
@needs["books"]
@prepares
def test_a_connection_lost_after_the_second_phase_is_no_error(money: None, on_step: Any) -> None:
    """Everything is committed; only the decision's deletion is lost, and recovery purges it."""
    on_step("commit", lambda alias: kill_session("default"))
    transfer(3)
    assert balances() == (97, 103)
    assert Decision.objects.count() == 1
    assert recover(grace=0).purged == 1
    assert Decision.objects.count() == 0


@needs["default"]
@needs["books"]
def test_an_aborted_postgresql_transaction_is_not_prepared_as_if_nothing_happened(
    money: None,
) -> None:
    """An error caught without a savepoint makes PostgreSQL answer PREPARE with ROLLBACK."""
    if connections["books"].vendor != "postgresql":
        pytest.skip("MariaDB rolls back only the failed statement; the transaction goes on")
    aborted = pytest.raises(TransactionManagementError, match="aborted by an earlier error")
    with aborted, dbfleet.atomic(Account, Vault, two_phase=True):
        Account.objects.update(balance=0)
        Vault.objects.update(balance=0)
        try:  # Raw SQL: Django does not mark the block for rollback.
            with connections["books"].cursor() as cursor:
                cursor.execute("INSERT INTO bank_vault (name, balance) VALUES ('vault', 1)")
        except IntegrityError:  # The name is taken; PostgreSQL aborts the transaction.
            pass
    assert balances() == (100, 100)
    assert nothing_in_doubt()


@needs["default"]
@needs["books"]
@prepares
def test_recover_dry_run_says_what_it_would_do_and_does_nothing(money: None, on_step: Any) -> None:
    on_step("commit", lambda alias: kill_session(alias))
    with pytest.raises(InDoubtError):
        transfer(2)
    connections["books"].close()
    out = StringIO()
    call_command("fleet", "recover", "--dry-run", stdout=out)
    assert "would commit" in out.getvalue() and "decision: commit" in out.getvalue()
    assert len(find_in_doubt()[0]) == 1
    assert balances() == (98, 100)


@needs["default"]
@needs["books"]
@prepares
def test_a_database_that_cannot_begin_rolls_back_the_others(
    money: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'books' is down when the block starts: 'default', already begun, is rolled back."""
    connections["books"].close()
    monkeypatch.setitem(connections["books"].settings_dict, "PORT", 1)  # Refused at once.
    with pytest.raises(OperationalError), dbfleet.atomic(Account, Vault, two_phase=True):
        pytest.fail("the block ran without 'books'")
    assert not connections["default"].in_atomic_block
    assert connections["default"].get_autocommit()
    monkeypatch.undo()
    connections["books"].close()
    transfer(5)  # Both usable again.
    assert balances() == (95, 105)
    assert nothing_in_doubt()


@needs["books"]
@needs["loans"]
@prepares
def test_a_decision_log_that_cannot_be_reached_leaves_the_transaction_in_doubt(
    on_step: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'default' (the log) goes down as the decision is recorded: nobody can tell it."""

    def lose_the_log(alias: str | None) -> None:
        connections["default"].close()
        monkeypatch.setitem(connections["default"].settings_dict, "PORT", 1)

    on_step("decide", lose_the_log)
    with (
        pytest.raises(InDoubtError, match="the decision log cannot be read"),
        dbfleet.atomic(Vault, Member, two_phase=True),
    ):
        Vault.objects.create(name="v")
        Member.objects.create(name="m")
    monkeypatch.undo()
    connections["default"].close()
    found, _ = find_in_doubt()
    assert found  # Both prepared, and no decision was recorded.
    recover(grace=0)
    assert nothing_in_doubt()
    assert (Vault.objects.count(), Member.objects.count()) == (0, 0)
