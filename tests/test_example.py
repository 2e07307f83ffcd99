"""The bookstore example runs end to end and leaves each table only where it is routed.

The demo runs in a subprocess, as a user runs it, so nothing here uses the test
databases; the rows are counted by opening each database directly.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.servers import SERVER_URLS, recreate, server_connection
from tests.settings import CONFIGURATION, ENGINES, PREFIX

DEMO = Path(__file__).resolve().parent.parent / "examples" / "bookstore" / "demo.py"
ALIASES = ("default", "books")
Counts = dict[str, int | None]
# Author lives in default and Book in books; None: the table does not exist there.
EXPECTED = {
    "default": {"books_author": 3, "books_book": None},
    "books": {"books_author": None, "books_book": 3},
}
LIST_TABLES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
    "postgres": "SELECT table_name FROM information_schema.tables "
    "WHERE table_schema = current_schema()",
    "mysql": "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()",
}


def run_demo(data_dir: Path, urls: dict[str, str] | None = None) -> str:
    """Run the demo as a user would; return what it printed."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("BOOKSTORE_") and key != "DJANGO_SETTINGS_MODULE"
    }
    env["BOOKSTORE_DATA_DIR"] = str(data_dir)
    env["PYTHONWARNINGS"] = "error::DeprecationWarning,error::PendingDeprecationWarning"
    for alias, url in (urls or {}).items():
        env[f"BOOKSTORE_{alias.upper()}_URL"] = url
    result = subprocess.run(
        [sys.executable, str(DEMO)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    return result.stdout


def printed_placement(output: str) -> dict[str, Counts]:
    """Read the demo's last step back into ``{alias: {table: rows or None}}``."""
    placement: dict[str, Counts] = {}
    for line in output.partition("== 5.")[2].splitlines():
        match = re.fullmatch(r"(\w+) \([^)]*\): (books_author: .*)", line)
        if match:
            parts = (part.split(": ") for part in match[2].split("; "))
            placement[match[1]] = {
                table: None if rows == "no such table" else int(rows.removesuffix(" rows"))
                for table, rows in parts
            }
    return placement


def count_rows(connection: Any, engine: str) -> Counts:
    """Rows in the example's tables, asked of a DB-API connection (None: no such table)."""
    cursor = connection.cursor()
    cursor.execute(LIST_TABLES[engine])
    present = {name for (name,) in cursor.fetchall()}
    counts: Counts = {}
    for table in ("books_author", "books_book"):
        counts[table] = None
        if table in present:
            cursor.execute(f"SELECT COUNT(*) FROM {table}")
            counts[table] = cursor.fetchone()[0]
    return counts


def sqlite_counts(path: Path) -> Counts:
    # Read-only, so a missing file is an error rather than a new empty database.
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as connection:
        return count_rows(connection, "sqlite")


def server_counts(engine: str, name: str) -> Counts:
    with closing(server_connection(SERVER_URLS[engine], name)) as connection:
        return count_rows(connection, engine)


@pytest.fixture
def server_databases() -> Iterator[dict[str, str]]:
    """Fresh, dedicated server databases for the demo: ``{alias: url}``, dropped afterwards."""
    engines = {alias: ENGINES[alias] for alias in ALIASES}
    if "sqlite" in engines.values():
        pytest.skip(f"needs servers; DBFLEET_TEST_DATABASES is {CONFIGURATION!r}")
    names = {alias: f"{PREFIX}_example_{alias}" for alias in ALIASES}
    for alias in ALIASES:
        recreate(engines[alias], names[alias])
    try:
        yield {alias: f"{SERVER_URLS[engines[alias]]}/{names[alias]}" for alias in ALIASES}
    finally:
        for alias in ALIASES:
            recreate(engines[alias], names[alias], create=False)


def test_demo_on_sqlite_files(tmp_path: Path) -> None:
    output = run_demo(tmp_path)

    assert printed_placement(output) == EXPECTED
    assert "dbfleet.atomic(Author, Book), then an exception: (authors, books) (3, 3) -> (3, 3)" in (
        output
    )
    assert "The write guard said: A write on database 'books' ran outside" in output
    reads = re.findall(r"-> read from '(\w+)'$", output, re.M)
    assert reads == ["replica", "default", "default", "replica"]
    assert {alias: sqlite_counts(tmp_path / f"{alias}.sqlite3") for alias in ALIASES} == EXPECTED


def test_demo_runs_again_with_the_same_rows(tmp_path: Path) -> None:
    run_demo(tmp_path)
    output = run_demo(tmp_path)

    for alias in ALIASES:
        assert re.search(rf"^{alias} +sqlite +0 +0\.0 +up to date$", output, re.M), output
    assert printed_placement(output) == EXPECTED
    assert {alias: sqlite_counts(tmp_path / f"{alias}.sqlite3") for alias in ALIASES} == EXPECTED


def test_demo_on_servers(tmp_path: Path, server_databases: dict[str, str]) -> None:
    for _ in range(2):  # The second run must find the same rows, not twice as many.
        output = run_demo(tmp_path, server_databases)

        assert printed_placement(output) == EXPECTED
        counts = {
            alias: server_counts(ENGINES[alias], f"{PREFIX}_example_{alias}") for alias in ALIASES
        }
        assert counts == EXPECTED
    assert not list(tmp_path.iterdir()), "no SQLite file is made when both URLs are set"
