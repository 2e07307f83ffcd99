"""Run test code in new threads, as workers would, each closing its connections after."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connections


def run_in_threads(works: list[Callable[[], Any]]) -> list[Any]:
    """Run each of ``works`` in a thread of its own, all at once; return their results."""
    results: list[Any] = [None] * len(works)

    def run(index: int) -> None:
        try:
            results[index] = works[index]()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(works))]
    for worker in threads:
        worker.start()
    for worker in threads:
        worker.join()
    return results


def run_in_thread(work: Callable[[], Any]) -> Any:
    """Run ``work`` in a new thread and return its result."""
    return run_in_threads([work])[0]
