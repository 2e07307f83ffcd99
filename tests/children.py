"""``manage.py`` commands in a process of their own, on this test run's databases.

The child's settings module reads the test process's ``DATABASES`` (with the test
databases' names) from ``DATABASES_VARIABLE``, as JSON: it works on what the test wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATABASES_VARIABLE = "DBFLEET_CHILD_DATABASES"


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
