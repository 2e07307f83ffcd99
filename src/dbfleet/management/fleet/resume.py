"""``fleet migrate --resume``: finish migrations that stopped half-way, before migrating the rest.

Not a subcommand: ``fleet migrate`` calls it. It runs in the command's own
process, one database after the other, before any worker starts.
"""

from __future__ import annotations

from django.core.management.base import CommandError
from django.db import DatabaseError, connections

from dbfleet.management.fleet.output import Out
from dbfleet.migrating.plan import first_line
from dbfleet.migrating.resume import NotResumable, ResumeFailed, resume


def finish_half_applied(out: Out, aliases: list[str], verbosity: int, lock_timeout: float) -> None:
    """Resume the half-applied migration of each database; stop at the first that fails.

    Each under its migration lock, waiting up to ``lock_timeout`` s for it.
    """
    for alias in aliases:
        try:
            resumed = resume(alias, verbosity=max(0, verbosity - 1), lock_timeout=lock_timeout)
        except (NotResumable, ResumeFailed) as error:
            raise CommandError(f"{error} Nothing was migrated after it.", returncode=1) from error
        except DatabaseError as error:
            # Not readable now: its worker below reports it, like any unreachable database.
            out.warn(f"{alias}: could not look for a half-applied migration: {first_line(error)}")
            continue
        finally:
            # Workers do the migrating; an idle connection here would hold locks (SQLite).
            connections[alias].close()
        if resumed is None or verbosity < 1:
            continue
        ran = (
            "only its record was missing"
            if not resumed.ran
            else f"ran operation{'s' if len(resumed.ran) > 1 else ''} "
            f"{resumed.ran[0]}{f'-{resumed.ran[-1]}' if len(resumed.ran) > 1 else ''} "
            f"of {resumed.total}"
        )
        out.write(out.style.SUCCESS(f"Resumed {resumed.migration} on {alias}: {ran}; recorded it."))
