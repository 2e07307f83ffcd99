"""The tests' thread helper: what a worker raises fails the test that started it."""

from __future__ import annotations

import threading
import traceback

import pytest

from tests.threads import Threads, run_in_thread, run_in_threads


class WorkerFailed(Exception):
    pass


def fail_in_a_worker() -> None:
    raise WorkerFailed("in the worker")


def test_results_come_in_the_order_of_the_works() -> None:
    assert run_in_threads([lambda: 1, lambda: 2, lambda: 3]) == [1, 2, 3]
    assert run_in_thread(threading.current_thread) is not threading.current_thread()


def test_a_worker_exception_is_raised_with_the_workers_traceback() -> None:
    with pytest.raises(WorkerFailed, match="in the worker") as caught:
        run_in_thread(fail_in_a_worker)
    frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert "fail_in_a_worker" in frames


def test_every_failing_worker_is_reported() -> None:
    with pytest.raises(ExceptionGroup, match="2 of 3 worker threads failed") as caught:
        run_in_threads([fail_in_a_worker, lambda: None, fail_in_a_worker])
    assert [type(error) for error in caught.value.exceptions] == [WorkerFailed] * 2


def test_the_test_code_runs_while_the_workers_do() -> None:
    started = threading.Event()
    with pytest.raises(WorkerFailed), Threads([started.set, fail_in_a_worker]):
        assert started.wait(timeout=10)


def test_a_worker_still_running_at_the_deadline_fails_showing_where_it_is() -> None:
    release = threading.Event()
    stuck = pytest.raises(AssertionError, match=r"(?s)1 of 1 worker threads still run.*release")
    try:
        with stuck:
            run_in_thread(lambda: release.wait(timeout=30), deadline=0.1)
    finally:
        release.set()
