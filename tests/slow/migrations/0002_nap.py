"""A migration that takes as long as a test wants, or fails with the message it is given.

``DBFLEET_FLEET_SLOW_DIR``: it touches ``<alias>.<pid>.started`` there, then waits
for a file ``go`` (60 s at most). ``DBFLEET_FLEET_SLOW_FAIL``: it raises that message.
Neither set: it does nothing.
"""

import os
import time
from pathlib import Path
from typing import Any

from django.db import migrations

#: Longer than any test waits: a test that forgets to say go fails instead of hanging.
DEADLINE_SECONDS = 60


def nap(apps: Any, schema_editor: Any) -> None:
    if message := os.environ.get("DBFLEET_FLEET_SLOW_FAIL"):
        raise RuntimeError(message)
    directory = os.environ.get("DBFLEET_FLEET_SLOW_DIR")
    if not directory:
        return
    Path(directory, f"{schema_editor.connection.alias}.{os.getpid()}.started").touch()
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not Path(directory, "go").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"nobody said go within {DEADLINE_SECONDS} s")
        time.sleep(0.05)


class Migration(migrations.Migration):
    dependencies = [("slow", "0001_initial")]

    operations = [migrations.RunPython(nap, migrations.RunPython.noop, hints={"model": "slow.Nap"})]
