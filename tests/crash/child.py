"""A process that commits two-phase transactions until it is killed.

    python -m tests.crash.child ALIAS,ALIAS START [--pause]

Transaction ``n`` (from START on) inserts the key ``n`` into the ``ledger``
table of every alias, in one ``dbfleet.atomic(..., two_phase=True)`` block;
every fifth one raises inside the block instead, so it must roll back.
The child prints ``ready`` once set up and ``begin N`` as each transaction
starts. With ``--pause`` it prints every protocol step (``write``,
``prepare ALIAS``, ``decide``, ``commit ALIAS``, ``done``) and waits for a
line on stdin before it goes on, so that the parent can kill it exactly there.
"""

from __future__ import annotations

import os
import sys
from typing import Any

os.environ["DJANGO_SETTINGS_MODULE"] = "tests.crash.settings"

import django  # noqa: E402

django.setup()

from django.db import connections  # noqa: E402

import dbfleet  # noqa: E402
from dbfleet.transactions.two_phase import two_phase_step  # noqa: E402


class Planned(Exception):
    """Raised inside every fifth transaction: it must roll back."""


def main() -> None:
    aliases = sys.argv[1].split(",")
    number = int(sys.argv[2])
    pause = "--pause" in sys.argv[3:]

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        if pause:
            sys.stdin.readline()

    def on_step(step: str, alias: str | None, **kwargs: Any) -> None:
        say(f"{step} {alias}" if alias else step)

    if pause:
        two_phase_step.connect(on_step)
    say("ready")
    while True:
        sys.stdout.write(f"begin {number}\n")
        sys.stdout.flush()
        try:
            with dbfleet.atomic(*aliases, two_phase=True):
                for alias in aliases:
                    with connections[alias].cursor() as cursor:
                        cursor.execute("INSERT INTO ledger (id) VALUES (%s)", [number])
                if pause:
                    say("write")
                if number % 5 == 4:
                    raise Planned
        except Planned:
            pass
        number += 1


if __name__ == "__main__":
    main()
