"""``manage.py`` commands in a process of their own, on this test run's databases.

The child's settings module reads the test process's ``DATABASES`` (with the test
databases' names) from ``DATABASES_VARIABLE``, as JSON: it works on what the test wrote.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
DATABASES_VARIABLE = "DBFLEET_CHILD_DATABASES"
T = TypeVar("T")


def django_child(settings: str, databases: dict[str, Any], *args: str) -> subprocess.Popen[str]:
    """``python -m django *args`` with ``settings`` on ``databases``; its output as text,
    unbuffered, stderr in stdout."""
    return subprocess.Popen(
        [sys.executable, "-m", "django", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": settings,
            DATABASES_VARIABLE: json.dumps(databases, default=str),
            # This checkout's dbfleet, not the one the venv may have installed.
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            "PYTHONUNBUFFERED": "1",
        },
    )


def killed_and_run_again(
    start: Callable[[], subprocess.Popen[str]],
    after_kill: Callable[[], T],
    *,
    lines: tuple[int, int],
    pause: float,
    deadline: float,
    kills: int = 3,
) -> list[T]:
    """Run the child ``start()`` makes again and again until it ends well: the first
    ``kills`` runs are killed (SIGKILL) after a random number (in ``lines``) of its output
    lines that say "rows" (a batch each), up to ``pause`` seconds later. What
    ``after_kill()`` said after each kill."""
    chance = random.Random(os.environ.get("PYTEST_XDIST_WORKER", "") + str(time.time()))
    found: list[T] = []
    for _ in range(20):
        child = start()
        assert child.stdout is not None
        timer = threading.Timer(deadline, child.kill)
        timer.start()
        try:
            left = chance.randint(*lines) if len(found) < kills else 0
            output = ""
            for line in child.stdout if left else ():
                output += line
                left -= "rows" in line
                if left == 0:
                    time.sleep(chance.uniform(0, pause))
                    child.send_signal(signal.SIGKILL)
                    break
            output += child.stdout.read()
            child.wait(deadline)
        finally:
            timer.cancel()
        if child.returncode == -signal.SIGKILL:
            found.append(after_kill())
            continue
        assert child.returncode == 0, output
        return found
    raise AssertionError(f"{start} did not end well in 20 runs: {found}")
