"""Run test code in new threads, as workers would, each closing its connections after.

A worker's exception fails the test that started it: it is raised again in the
test's thread, with the worker's traceback. A worker still running at the
deadline fails the test too, showing where it is stuck.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any

from django.db import connections

#: Seconds a test waits for its threads; far more than any of them needs.
DEADLINE = 100.0  # Under the per-test timeout (120 s), so a stuck worker is shown.


class Threads:
    """Start ``works``, each in a thread of its own, on entering; wait for them on leaving.

    The test's own code runs meanwhile, inside the ``with`` block. On leaving,
    the first worker exception is raised (all of them, as an ExceptionGroup,
    when several workers failed); ``results`` then holds what each work returned.
    """

    def __init__(self, works: list[Callable[[], Any]], deadline: float = DEADLINE) -> None:
        self.works = works
        self.deadline = deadline
        self.results: list[Any] = [None] * len(works)
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        # Daemons: a worker stuck for good must not keep the test process alive.
        self._threads = [
            threading.Thread(target=self._run, args=(index,), daemon=True, name=f"worker-{index}")
            for index in range(len(works))
        ]

    def _run(self, index: int) -> None:
        try:
            self.results[index] = self.works[index]()
        except BaseException as error:
            with self._lock:
                self.errors.append(error)
        finally:
            connections.close_all()

    def __enter__(self) -> Threads:
        for worker in self._threads:
            worker.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.join()

    def join(self) -> list[Any]:
        """Wait for every worker; raise what one of them raised; return their results."""
        end = time.monotonic() + self.deadline
        for worker in self._threads:
            worker.join(max(0.0, end - time.monotonic()))
        stuck = [worker for worker in self._threads if worker.is_alive()]
        if stuck:
            raise AssertionError(
                f"{len(stuck)} of {len(self._threads)} worker threads still run after "
                f"{self.deadline:g} s:\n" + "".join(_stack(worker) for worker in stuck[:3])
            )
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise BaseExceptionGroup(
                f"{len(self.errors)} of {len(self._threads)} worker threads failed", self.errors
            )
        return self.results


def _stack(worker: threading.Thread) -> str:
    frame = sys._current_frames().get(worker.ident or -1)
    where = "".join(traceback.format_stack(frame)) if frame else "  (no frame)\n"
    return f"{worker.name}:\n{where}"


def run_in_threads(works: list[Callable[[], Any]], deadline: float = DEADLINE) -> list[Any]:
    """Run each of ``works`` in a thread of its own, all at once; return their results."""
    with Threads(works, deadline) as threads:
        pass
    return threads.results


def run_in_thread(work: Callable[[], Any], deadline: float = DEADLINE) -> Any:
    """Run ``work`` in a new thread and return its result."""
    return run_in_threads([work], deadline)[0]
