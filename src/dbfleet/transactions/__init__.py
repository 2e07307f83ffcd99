"""Transactions over several databases: ``atomic``, ``on_commit``, the write guard, two-phase."""

from dbfleet.transactions.atomic import (
    Atomic,
    Target,
    atomic,
    atomic_targets,
    on_commit,
    resolve,
    resolve_all,
)
from dbfleet.transactions.guard import (
    guard_writes,
    install_write_guard,
    unguarded,
    write_guard_mode,
)

__all__ = [
    "Atomic",
    "Target",
    "atomic",
    "atomic_targets",
    "guard_writes",
    "install_write_guard",
    "on_commit",
    "resolve",
    "resolve_all",
    "unguarded",
    "write_guard_mode",
]
