"""A DB-API connection to ClickHouse embedded in this process (chDB), made for Django.

chDB's own DB-API module (``chdb.dbapi``) is not enough for Django: it escapes
parameters as pymysql does (arrays, UUIDs and ``%%`` come out wrong), parses each
result from JSON and says ``rowcount = -1`` after an INSERT. This one

- binds parameters with django-clickhouse-backend's escaping, the one its server
  driver uses (``%s`` placeholders and ``%%``; lists as arrays, tuples, dicts as
  maps, UUIDs, dates, binary strings), and takes the rows of ``INSERT ... VALUES``
  as that driver does: one sequence of values per row;
- reads results in ClickHouse's Native format with clickhouse-driver's own column
  readers, a block at a time as rows are fetched, so that each value is the Python
  value the server backend gives;
- says how many rows an INSERT wrote and how many an UPDATE or DELETE mutation
  matches (counted just before it runs, as django-clickhouse-backend counts an UPDATE).

chDB is imported when the first connection opens, never before. What chDB allows,
and how this module lives with it:

- One data directory per process at a time, and one process per data directory
  (chDB locks its ``status`` file): the error says which process holds it.
- The embedded server starts with a process's first connection and stops with its
  last; closing every connection releases the directory for another process.
- A process forked while the server runs hangs in ``exit()``, and one forked after
  the import hangs at its first query. So before ``os.fork()`` every connection is
  closed, which stops the server (each opens again at its next use in the parent,
  with its database and settings), and in the child each one raises
  ``OperationalError`` instead of calling chDB.
- Threads: one thread at a time uses a connection (a lock), and connections run at
  once; Django gives each thread its own.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple, TypeGuard

from clickhouse_backend.driver.client import insert_pattern
from clickhouse_backend.driver.escape import escape_param, escape_params
from clickhouse_driver.bufferedreader import CompressedBufferedReader
from clickhouse_driver.connection import ServerInfo
from clickhouse_driver.context import Context
from clickhouse_driver.dbapi.errors import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Warning,
)
from clickhouse_driver.errors import ServerException
from clickhouse_driver.streams.native import BlockInputStream
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

try:
    import fcntl
except ImportError:  # pragma: no cover  (chDB runs on Linux and macOS)
    fcntl = None  # type: ignore[assignment]

apilevel = "2.0"
#: Threads may share the module and connections (a connection serves one at a time).
threadsafety = 2
paramstyle = "format"

#: Session settings every connection starts with (django-clickhouse-backend's client sets
#: the same): a JSON value is read through toJSONString(), whose Int64 must stay a number.
DEFAULT_SETTINGS: dict[str, Any] = {"output_format_json_quote_64bit_integers": 0}
#: "Code: 60. DB::Exception: ..."
_CODE = re.compile(r"Code: (\d+)\.\s*")
_DIFFERENT_PATH = re.compile(r"already initialized with path '(?P<path>[^']*)'")
#: A statement whose result has columns even when it has no rows.
_QUERY = re.compile(r"^[\s(]*(SELECT|WITH)\b", re.IGNORECASE)
#: A mutation django-clickhouse-backend writes: ALTER TABLE "t" [ON CLUSTER "c"] UPDATE|DELETE.
_MUTATION = re.compile(
    r'^\s*ALTER\s+TABLE\s+(?P<table>"(?:[^"\\]|\\.)+"|`(?:[^`\\]|\\.)+`|[\w.]+)'
    r'(?:\s+ON\s+CLUSTER\s+(?:"(?:[^"\\]|\\.)+"|`(?:[^`\\]|\\.)+`|[\w.]+))?'
    r"\s+(?P<kind>UPDATE|DELETE)\b",
    re.IGNORECASE,
)
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Column(NamedTuple):
    """One column of ``cursor.description``."""

    name: str
    type_code: str
    display_size: None = None
    internal_size: None = None
    precision: None = None
    scale: None = None
    null_ok: bool = True


# --- chDB itself, imported on first use, and forks ------------------------------------------

_import_lock = threading.Lock()
#: chDB's engine module, once imported.
_engine_module: Any = None
#: The process that imported it.
_loaded_in: int | None = None
#: Serializes opening a connection with a fork (so none opens while the server stops).
_registry_lock = threading.Lock()
#: Every connection of this process that is not closed.
_open: weakref.WeakSet[Connection] = weakref.WeakSet()
#: The connections whose locks a fork holds, from just before it until just after.
_held: list[Connection] = []


def _engine() -> Any:
    """chDB's engine, imported on first use; raise in a process forked after the import."""
    global _engine_module, _loaded_in
    if _loaded_in is not None and _loaded_in != os.getpid():
        raise OperationalError(forked_message(_loaded_in))
    if _engine_module is None:
        with _import_lock:
            if _engine_module is None:
                try:
                    # The import starts and stops an in-memory server, once per process.
                    from chdb import _chdb
                except ImportError as error:
                    raise ImproperlyConfigured(
                        f"ENGINE 'dbfleet.backends.chdb' needs chDB, which is not installed "
                        f"({error}). Install dbfleet with its extra: "
                        "pip install 'django-dbfleet[chdb]'."
                    ) from error
                _loaded_in = os.getpid()
                _engine_module = _chdb
    return _engine_module


def forked_message(parent: int) -> str:
    """Why chDB cannot be used in this process, forked from ``parent`` after chDB loaded there."""
    return (
        f"This process ({os.getpid()}) was forked from process {parent} after chDB was loaded "
        "there, and chDB cannot run in a forked process (it would hang). chDB runs in one "
        "process: connect to it only in a process that is not forked afterwards (runserver; "
        "gunicorn --workers 1 without --preload; Celery --pool=solo or --pool=threads; "
        "Django's test runner without --parallel), or use a ClickHouse server, ENGINE "
        "'dbfleet.backends.clickhouse', for several processes."
    )


def _before_fork() -> None:
    # A child forked while the embedded server runs hangs in exit(): stop it first, by
    # closing every connection's chDB handle. The locks stay held through the fork, so
    # that no thread opens one again meanwhile; each opens again at its next use.
    _registry_lock.acquire()
    for connection in list(_open):
        connection._lock.acquire()
        _held.append(connection)
        connection._suspend()


def _after_fork(child: bool) -> None:
    global _loaded_in
    if child and _loaded_in is None and "chdb" in sys.modules:
        _loaded_in = os.getppid()  # Loaded by other code: it cannot run here either.
    while _held:
        _held.pop()._lock.release()
    _registry_lock.release()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=lambda: _after_fork(child=False),
    after_in_child=lambda: _after_fork(child=True),
)


# --- Errors -------------------------------------------------------------------------------


def _error(error: Exception) -> OperationalError:
    """chDB's ``RuntimeError("Code: 60. DB::Exception: ...")`` as the server driver raises it."""
    message = str(error)
    found = _CODE.search(message)
    code = int(found[1]) if found else None
    return OperationalError(ServerException(message[found.end() :] if found else message, code))


def _holder(path: str) -> str | None:
    """Who holds chDB's lock on ``path`` (the process its ``status`` file names), or None."""
    if fcntl is None:  # pragma: no cover
        return None
    try:
        status = open(os.path.join(path, "status"))  # noqa: SIM115  (closed below)
    except OSError:
        return None
    with status:
        try:
            fcntl.flock(status, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lines = dict(
                line.partition(": ")[::2] for line in status.read().splitlines() if ": " in line
            )
            return f"process {lines.get('PID', '?')}, since {lines.get('Started at', '?')}"
        fcntl.flock(status, fcntl.LOCK_UN)
    return None


def _open_error(path: str, error: Exception) -> OperationalError:
    """Why chDB could not open ``path``, with what to do about it."""
    different = _DIFFERENT_PATH.search(str(error))
    if different:
        return OperationalError(
            f"This process already has chDB open on {different['path']!r}, and chDB opens "
            f"one data directory per process, so not {path!r} too. Give every "
            "'dbfleet.backends.chdb' database the same OPTIONS['path'] (their NAMEs, databases "
            "in that directory, can differ)."
        )
    holder = _holder(path)
    if holder is not None:
        return OperationalError(
            f"chDB's data directory {path!r} is in use by another process ({holder}): chDB "
            "lets one process at a time open a data directory. Stop that process, or give this "
            "one another OPTIONS['path']; for several processes use a ClickHouse server, "
            "ENGINE 'dbfleet.backends.clickhouse'."
        )
    return _error(error)


# --- Parameters ---------------------------------------------------------------------------


def bind(operation: str, parameters: Sequence[Any] | dict[str, Any] | None) -> str:
    """``operation`` with its ``%s`` (or ``%(name)s``) placeholders replaced by literals."""
    if parameters is None:
        return operation  # As every driver does: no placeholders, and %% stays as it is.
    try:
        return str(operation % escape_params(parameters, None))
    except (TypeError, ValueError, KeyError) as error:
        raise ProgrammingError(f"Cannot bind {parameters!r} to {operation!r}: {error}") from None


def values(rows: Iterable[Sequence[Any]]) -> str:
    """Rows as the literal tuples of a ``VALUES`` clause."""
    return ", ".join(
        "(" + ", ".join(str(escape_param(value, None)) for value in row) + ")" for row in rows
    )


def _are_rows(parameters: object) -> TypeGuard[Sequence[Sequence[Any]]]:
    return isinstance(parameters, list | tuple) and all(
        isinstance(row, list | tuple) for row in parameters
    )


def _top_level(sql: str, word: str, start: int = 0) -> list[int]:
    """Where `` word `` stands in ``sql`` outside parentheses, quotes and identifiers."""
    found, depth, quote, index = [], 0, "", start
    needle = f" {word} "
    upper = sql.upper()
    while index < len(sql):
        char = sql[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in "'\"`":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif depth == 0 and upper.startswith(needle, index):
            found.append(index)
        index += 1
    return found


def _placeholders(template: str) -> int:
    return len(re.findall(r"%s", template.replace("%%", "")))


def count_sql(operation: str, parameters: Sequence[Any] | None) -> str | None:
    """A query counting the rows the mutation ``operation`` changes, or None if it is not one.

    Read from the template, where no parameter can hide a WHERE: the condition is the
    first top-level WHERE after ``UPDATE``/``DELETE``, up to a last top-level SETTINGS.
    """
    mutation = _MUTATION.match(operation)
    if mutation is None:
        return None
    wheres = _top_level(operation, "WHERE", mutation.end())
    if not wheres:
        return None
    start = wheres[0] + len(" WHERE ")
    settings_at = _top_level(operation, "SETTINGS", start)
    end = settings_at[-1] if settings_at else len(operation)
    before = _placeholders(operation[:start])
    where = operation[start:end]
    used = None if parameters is None else parameters[before : before + _placeholders(where)]
    return bind(f"SELECT count() FROM {mutation['table']} WHERE {where}", used)


# --- Results ------------------------------------------------------------------------------


def context(timezone: str, version: str) -> Context:
    """What clickhouse-driver's column readers need to know of the engine."""
    major, minor, patch, *_ = (int(part) for part in f"{version}.0.0".split(".")[:3])
    found = Context()
    # Revision 0: the Native format of a file, without the native protocol's block info.
    found.server_info = ServerInfo("chDB", major, minor, patch, 0, timezone, "chDB", 0)
    # As django-clickhouse-backend's client: naive DateTime values are in the local zone.
    found.settings = {"use_client_time_zone": True}
    found.client_settings = {
        "strings_as_bytes": False,
        "strings_encoding": "utf-8",
        "use_numpy": False,
        "namedtuple_as_json": True,
        "input_format_null_as_default": False,
    }
    return found


def blocks(data: bytes, found: Context) -> Iterator[Any]:
    """The blocks of a Native-format result, each read when the one before is used up."""
    chunks = [data]
    reader = CompressedBufferedReader(lambda: chunks.pop() if chunks else b"", len(data) or 1)
    stream = BlockInputStream(reader, found)
    while chunks or reader.position < reader.current_buffer_size:
        yield stream.read()


# --- The connection and its cursor --------------------------------------------------------


class Connection:
    """A session on chDB's embedded server: its database, its settings."""

    def __init__(
        self, path: str, database: str = "default", settings: dict[str, Any] | None = None
    ) -> None:
        self.path = path
        self.database = database
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        for name in self.settings:
            if not _SETTING_NAME.match(str(name)):
                raise ProgrammingError(f"{name!r} is not a ClickHouse setting name.")
        self.closed = False
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._context: Context | None = None
        with _registry_lock:
            self._handle: Any = self._connect()
            _open.add(self)

    def _connect(self) -> Any:
        engine = _engine()
        try:
            handle = engine.connect(self.path)
        except RuntimeError as error:
            raise _open_error(self.path, error) from None
        database = "`" + self.database.replace("\\", "\\\\").replace("`", "\\`") + "`"
        statements = [f"CREATE DATABASE IF NOT EXISTS {database}", f"USE {database}"]
        statements += [
            f"SET {name} = {escape_param(value, None)}" for name, value in self.settings.items()
        ]
        try:
            for statement in statements:
                handle.query(statement, "Native")
            answer = handle.query("SELECT timezone(), version()", "Native").bytes()
        except RuntimeError as error:
            handle.close()
            raise _error(error) from None
        plain = context("UTC", "0.0.0")
        ((timezone, version),) = next(blocks(answer, plain)).get_rows()
        self._context = context(timezone, version)
        return handle

    def _suspend(self) -> None:
        """Close the chDB handle (with ``_lock`` held), to open it again at the next query."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    def run(self, sql: str) -> tuple[bytes, int, Context]:
        """Run ``sql``: its Native-format result, the rows it wrote, and how to read them."""
        with self._lock:
            if self.closed:
                raise InterfaceError("connection already closed")
            if self._pid != os.getpid():
                # Forked by code that bypassed os.register_at_fork (a C extension).
                raise OperationalError(forked_message(self._pid))
            if self._handle is None:
                self._handle = self._connect()  # Closed for a fork, or by an error.
            try:
                result = self._handle.query(sql, "Native")
            except RuntimeError as error:
                raise _error(error) from None
            assert self._context is not None
            return result.bytes(), int(result.rows_written()), self._context

    def cursor(self) -> Cursor:
        return Cursor(self)

    def commit(self) -> None:
        """Nothing to commit: ClickHouse has no transactions."""

    def rollback(self) -> None:
        """Nothing to roll back: ClickHouse has no transactions."""

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._suspend()
        with _registry_lock:
            _open.discard(self)


class Cursor:
    """Runs statements on a :class:`Connection`; rows are read a block at a time."""

    arraysize = 1

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.closed = False
        self.description: list[Column] | None = None
        self.columns_with_types: list[tuple[str, str]] | None = None
        #: Rows an INSERT wrote, or an UPDATE or DELETE matched; -1 for a query (not counted).
        self.rowcount = -1
        self.lastrowid = None
        self._rows: Iterator[tuple[Any, ...]] | None = None

    def execute(
        self, operation: str, parameters: Sequence[Any] | dict[str, Any] | None = None
    ) -> None:
        if self.closed:
            raise InterfaceError("cursor already closed")
        self.description = self.columns_with_types = None
        self.rowcount, self._rows = -1, iter(())
        if parameters is not None and insert_pattern.match(operation) and _are_rows(parameters):
            if not parameters:
                self.rowcount = 0
                return
            sql = f"{operation.rstrip().rstrip(';')} {values(parameters)}"
        else:
            sql = bind(operation, parameters)
        counted: int | None = None
        counting = None if isinstance(parameters, dict) else count_sql(operation, parameters)
        if counting is not None and getattr(settings, "CLICKHOUSE_ENABLE_UPDATE_ROWCOUNT", True):
            data, _, found = self.connection.run(counting)
            ((counted,),) = next(blocks(data, found)).get_rows()
        data, written, found = self.connection.run(sql)
        if data:
            read = blocks(data, found)
            first = next(read)
            self._describe(first.columns_with_types)
            self._rows = itertools.chain(
                first.get_rows(), itertools.chain.from_iterable(b.get_rows() for b in read)
            )
        elif _QUERY.match(sql):
            self._describe_empty(sql)
        if counted is not None:
            self.rowcount = counted
        elif sql.lstrip()[:6].upper() == "INSERT":
            self.rowcount = written

    def _describe(self, columns: Sequence[tuple[str, str]]) -> None:
        self.columns_with_types = list(columns)
        self.description = [Column(name, type_code) for name, type_code in columns]

    def _describe_empty(self, sql: str) -> None:
        # A result without rows has no block in the Native format, and so no columns:
        # ask for them (DESCRIBE plans the query, it runs nothing).
        try:
            data, _, found = self.connection.run(f"DESCRIBE ({sql.rstrip().rstrip(';')})")
        except DatabaseError:
            return
        rows = [row for block in blocks(data, found) for row in block.get_rows()]
        self._describe([(row[0], row[1]) for row in rows])

    def executemany(self, operation: str, seq_of_parameters: Iterable[Any]) -> None:
        if insert_pattern.match(operation):
            self.execute(operation, list(seq_of_parameters))
            return
        total = 0
        for parameters in seq_of_parameters:
            self.execute(operation, parameters)
            total += max(self.rowcount, 0)
        self.rowcount = total

    def _fetching(self) -> Iterator[tuple[Any, ...]]:
        if self.closed:
            raise InterfaceError("cursor already closed")
        if self._rows is None:
            raise ProgrammingError("no results to fetch")
        return self._rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return next(self._fetching(), None)

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        return list(itertools.islice(self._fetching(), self.arraysize if size is None else size))

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self._fetching())

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return self._fetching()

    def set_stream_results(self, stream_results: bool, max_row_buffer: int) -> None:
        """As clickhouse-driver's (Django's ``iterator()`` calls it); rows come a block at once."""

    def setinputsizes(self, sizes: object) -> None:
        pass

    def setoutputsize(self, size: object, column: object = None) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        self._rows = None

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect(
    path: str, database: str = "default", settings: dict[str, Any] | None = None
) -> Connection:
    """A connection to database ``database`` in chDB's data directory ``path``."""
    return Connection(path, database, settings)


__all__ = [
    "Connection",
    "Cursor",
    "DataError",
    "DatabaseError",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "Warning",
    "apilevel",
    "connect",
    "paramstyle",
    "threadsafety",
]
