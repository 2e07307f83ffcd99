"""PLACEHOLDER: replaced by the sql helper's module at merge."""

from __future__ import annotations

_NOT_WRITES = (
    "SELECT", "SHOW", "EXPLAIN", "DESCRIBE", "SAVEPOINT", "RELEASE", "ROLLBACK",
    "SET ", "PRAGMA", "BEGIN", "COMMIT", "XA ", "(SELECT", "KILL",
)  # fmt: skip


def is_write(sql: str) -> bool:
    """Whether ``sql`` may change data (by its first keyword)."""
    sql = sql.lstrip()
    while sql.startswith(("/*", "--")):
        end = sql.find("*/") + 2 if sql.startswith("/*") else sql.find("\n") + 1
        sql = sql[end:].lstrip() if end > 1 else ""
    return not sql[:16].upper().startswith(_NOT_WRITES)
