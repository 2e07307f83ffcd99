"""The sync of synced models: a full load, then the change log consumed as a queue.

For each synced model (a copy), one run of ``sync()``:

1. takes the copy's lock on the source database (an advisory lock on PostgreSQL,
   ``GET_LOCK`` on MariaDB/MySQL, a lock file beside a SQLite database), held by a
   session of its own: a second sync of the same copy is refused (``SyncLocked``);
2. reserves a block of versions above every version written before, in the
   state kept beside the copy (``dbfleet_sync_state``), before it writes a row;
3. loads everything when the copy was never loaded in full, when ``full=True``,
   or when the log says so (``R``): the state is marked "not loaded" first, then
   the copy's log rows are deleted and the source is read whole (PostgreSQL:
   ``COPY ... TO STDOUT``; elsewhere the ORM's ``iterator()``) and written in
   batches, and copied rows the source no longer has are marked deleted. Every
   change committed before the log rows were deleted is in what the load reads;
   every one committed after is in the log, and copied next;
4. then takes the log a batch at a time, in id order: reads the current source
   rows of those keys (a key without a row is a deletion), writes them with the
   next version, and deletes exactly the log rows it read.

A crash anywhere leaves the log rows of what was not written, or of what was
written but not yet deleted from the log: the next run writes them again with a
higher version, and ``ReplacingMergeTree`` keeps the latest. A version is never a
log id: ids are handed out in the order changes are made, not committed, and a
row read later must win over one read earlier.
"""

from __future__ import annotations

import contextlib
import copy as copying
import dataclasses
import hashlib
import math
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.management.base import CommandError
from django.db import DatabaseError, connections, models, router
from django.db.backends.base.base import BaseDatabaseWrapper

from dbfleet import vendors
from dbfleet.analytics import capture
from dbfleet.analytics.spec import DELETED, VERSION, SyncSpec, spec_of, synced_models
from dbfleet.conf import fleet_settings
from dbfleet.values import canonical, row_hash
from dbfleet.vendors.base import RELOAD

if TYPE_CHECKING:
    from dbfleet.analytics.models import SyncState

#: Rows read and written at a time, unless told otherwise.
DEFAULT_BATCH_SIZE = 10_000
#: Rows in each block of a text load (``Copy.as_text``) when no batch size is given: each
#: block is one insert and one part in the copy's table (10,000 made 100 parts a million
#: rows, and took half as long again); 250,000 rows of ten columns are about 30 MB of text.
TEXT_BLOCK_ROWS = 250_000
#: Versions reserved at once: a run writes one state row per block, not per batch.
VERSION_BLOCK = 1_000_000
#: Keys read from the source at once (one IN list).
READ_CHUNK = 500
#: Batches of each model in one turn of ``follow``, before the next model's.
FOLLOW_BATCHES = 10
#: How many key ranges ``check`` compares.
RANGES = 64
#: How many differing keys ``check`` names in each range.
KEYS_SHOWN = 10

Progress = Callable[[str, str, int], None]


def _no_progress(label: str, what: str, count: int) -> None:
    pass


class SyncLocked(CommandError):
    """Another sync of the same copy holds its lock."""

    def __init__(self, label: str, alias: str, holder: str) -> None:
        self.label, self.alias, self.holder = label, alias, holder
        super().__init__(
            f"Another sync of {label} is running: it holds the copy's lock on {alias!r}, "
            f"{holder}. Nothing was copied. One sync of a copy runs at a time; let that one "
            "finish (a --follow runs until stopped), then sync again.",
            returncode=75,
        )


@dataclass
class ModelSync:
    """What one run did for one synced model."""

    model: str
    source: str
    source_database: str
    database: str
    #: Whether it loaded the copy in full, and the rows that load wrote.
    full: bool = False
    loaded: int = 0
    #: Log rows consumed, and the rows and deletions they wrote.
    changes: int = 0
    written: int = 0
    deleted: int = 0
    #: Changes logged and not copied when it ended (None: not known).
    pending: int | None = None
    #: Seconds from the oldest change it copied being logged to the copy having it.
    lag: float = 0.0
    seconds: float = 0.0
    error: str = ""


@dataclass
class SyncReport:
    """``fleet sync``: what each synced model's sync did."""

    models: list[ModelSync] = field(default_factory=list)

    @property
    def errors(self) -> list[ModelSync]:
        return [model for model in self.models if model.error]


class Copy:
    """A synced model, where it and its source live, and how its columns line up."""

    def __init__(self, model: type[models.Model]) -> None:
        spec = spec_of(model)
        if spec is None:
            raise LookupError(f"{model._meta.label} is not a synced model.")
        if spec.source is None:
            raise LookupError(
                f"{model._meta.label}'s source {spec.source_label!r} cannot be found: "
                f"{spec.problem} (`manage.py check` says so too)."
            )
        self.model = model
        self.spec: SyncSpec = spec
        self.source: type[models.Model] = spec.source
        self.label = capture.label_of(model)
        self.source_alias = router.db_for_write(self.source)
        self.alias = router.db_for_write(model)
        self.columns = list(spec.columns)
        self.source_names = [column.source for column in self.columns]
        self.names = [column.name for column in self.columns]
        self.pk = spec.pk or "pk"
        self.pk_index = self.names.index(self.pk)
        meta = model._meta
        self.table = meta.db_table
        fields = [_field(model, name) for name in self.names]
        quote = connections[self.alias].ops.quote_name
        self.quoted = [quote(str(field.column)) for field in fields]
        self.column_names = [str(field.column) for field in fields]
        self.version_column_name = str(_field(model, VERSION).column)
        self.deleted_column_name = str(_field(model, DELETED).column)
        self.version_column = quote(self.version_column_name)
        self.deleted_column = quote(self.deleted_column_name)
        #: Fields the copy declares itself: their values are prepared by them, as the ORM would.
        self.declared = [
            (index, field)
            for index, (column, field) in enumerate(zip(self.columns, fields, strict=True))
            if column.kind is None
        ]

    @property
    def source_connection(self) -> BaseDatabaseWrapper:
        return connections[self.source_alias]

    def rows(self, keys: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The source rows of ``keys`` now (a key without a row was deleted)."""
        manager = self.source._base_manager.db_manager(self.source_alias)
        found: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), READ_CHUNK):
            found += manager.filter(pk__in=keys[start : start + READ_CHUNK]).values_list(
                *self.source_names
            )
        return found

    def everything(self, size: int) -> Generator[list[tuple[Any, ...]], None, None]:
        """Every source row, in lists of ``size``, from one snapshot (one statement)."""
        queryset = (
            self.source._base_manager.db_manager(self.source_alias)
            .values_list(*self.source_names)
            .order_by()
        )
        connection = self.source_connection
        sql, params = queryset.query.get_compiler(self.source_alias).as_sql()
        stream = vendors.of(connection).copy_out(connection, sql, list(params), size)
        if stream is not None:
            yield from stream
            return
        batch: list[tuple[Any, ...]] = []
        for row in queryset.iterator(chunk_size=size):
            batch.append(row)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def as_text(self, size: int) -> Generator[bytes, None, None] | None:
        """Every source row as text the copy's database parses itself, if both ends can.

        PostgreSQL's COPY text into chDB's ``TabSeparated`` parser: no value is made
        in Python. Not for fields the copy declares itself (they prepare their own
        values), nor for naive datetimes (``USE_TZ = False``: the text's offset
        would place them otherwise than the ORM does).
        """
        naive = not settings.USE_TZ and any(
            isinstance(self.source._meta.get_field(name), models.DateTimeField)
            for name in self.source_names
        )
        if self.declared or naive:
            return None
        target = connections[self.alias]
        if vendors.of(target).insert_text(target, self.table, self.column_names, b"", {}) is None:
            return None
        connection = self.source_connection
        queryset = (
            self.source._base_manager.db_manager(self.source_alias)
            .values_list(*self.source_names)
            .order_by()
        )
        sql, params = queryset.query.get_compiler(self.source_alias).as_sql()
        return vendors.of(connection).copy_out_text(connection, sql, list(params), size)

    def write_text(self, text: bytes, version: int) -> int:
        """Write source rows given as text (:meth:`as_text`) to the copy; how many."""
        target = connections[self.alias]
        fixed = {self.version_column_name: version, self.deleted_column_name: 0}
        written = vendors.of(target).insert_text(target, self.table, self.column_names, text, fixed)
        assert written is not None  # as_text() asked first.
        return written

    def write(self, rows: Sequence[tuple[Any, ...]], version: int) -> None:
        """Write ``rows`` (source rows) to the copy, as of ``version``."""
        if self.declared:
            connection = connections[self.alias]
            prepared = []
            for row in rows:
                values = list(row)
                for index, field in self.declared:
                    values[index] = field.get_db_prep_save(values[index], connection)
                prepared.append(tuple(values))
            rows = prepared
        insert(
            connections[self.alias],
            self.table,
            [*self.quoted, self.version_column, self.deleted_column],
            [(*row, version, 0) for row in rows],
        )

    def delete(self, keys: Sequence[Any], version: int) -> None:
        """Mark ``keys`` deleted in the copy, as of ``version``."""
        insert(
            connections[self.alias],
            self.table,
            [self.quoted[self.pk_index], self.version_column, self.deleted_column],
            [(key, version, 1) for key in keys],
        )


def _field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    field = model._meta.get_field(name)
    assert isinstance(field, models.Field)
    return field


def _live(model: type[models.Model], alias: str) -> Any:
    """The live rows of the synced model ``model`` on ``alias`` (a ``SyncedQuerySet``)."""
    manager: Any = model._default_manager
    return manager.using(alias).live()


def insert(
    connection: BaseDatabaseWrapper,
    table: str,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """Insert ``rows`` into the ClickHouse table ``table``, one statement.

    Both backends take the rows of ``INSERT ... VALUES`` as parameters: the server
    backend sends them as native column blocks, the chDB one as literal values.
    """
    if not rows:
        return
    sql = f"INSERT INTO {connection.ops.quote_name(table)} ({', '.join(columns)}) VALUES"
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


# --- The state beside each copy ------------------------------------------------------------


def state_model() -> type[SyncState]:
    from dbfleet.analytics.models import SyncState

    return SyncState


def ensure_state_table(alias: str) -> None:
    """Create ``dbfleet_sync_state`` on ``alias`` unless it is there."""
    model = state_model()
    connection = connections[alias]
    with connection.cursor() as cursor:
        if model._meta.db_table in connection.introspection.table_names(cursor):
            return
    with connection.schema_editor() as editor:
        editor.create_model(model)


def read_state(alias: str, label: str) -> SyncState:
    """The state of the copy ``label`` (a new one, never saved, if it has none)."""
    model = state_model()
    found = model.objects.using(alias).settings(final=1).filter(model=label).first()
    return found if found is not None else model(model=label)


def write_state(alias: str, state: SyncState) -> None:
    """Save ``state`` as the copy's state (a new row, above the one it replaces)."""
    state.updated = max(time.time_ns(), state.updated + 1)
    state_model().objects.using(alias).bulk_create([state])


class Versions:
    """The versions of one run: reserved a block at a time in the state, before use."""

    def __init__(self, alias: str, state: SyncState) -> None:
        self.alias, self.state = alias, state
        self.next = self.end = 0

    def take(self) -> int:
        if self.next >= self.end:
            self.next = max(time.time_ns(), self.state.version + 1)
            self.end = self.next + VERSION_BLOCK
            self.state.version = self.end - 1
            write_state(self.alias, self.state)
        version, self.next = self.next, self.next + 1
        return version


# --- One run --------------------------------------------------------------------------------


@contextmanager
def sync_lock(alias: str, label: str) -> Iterator[None]:
    """Hold the lock of the copy ``label`` on its source database ``alias``, or raise.

    On a session of its own, which ends with the lock: the lock lasts exactly as
    long as this process holds it, and dies with it.
    """
    original = connections[alias]
    settings_dict = copying.deepcopy(original.settings_dict)
    options = settings_dict.get("OPTIONS") or {}
    settings_dict["OPTIONS"] = {key: value for key, value in options.items() if key != "pool"}
    session = type(original)(settings_dict, alias)
    vendor = vendors.of(session)
    name = f"dbfleet.sync.{label}"
    try:
        if not vendor.try_session_lock(session, name):
            holder = vendor.session_lock_holder(session, name) or (
                "another session (the engine does not say which)"
            )
            raise SyncLocked(label, alias, holder)
        try:
            yield
        finally:
            vendor.release_session_lock(session, name)
    finally:
        session.close()


def copy_of(label: str) -> type[models.Model]:
    """The synced model ``label`` names (``app_label.ModelName``), or LookupError."""
    found = {model._meta.label_lower: model for model in synced_models()}
    model = found.get(label.lower())
    if model is None:
        known = ", ".join(model._meta.label for model in found.values()) or "none"
        raise LookupError(f"{label!r} is not a synced model; the synced models: {known}.")
    return model


def chosen(labels: Sequence[str]) -> list[type[models.Model]]:
    """The synced models ``labels`` names, else all of them."""
    if labels:
        return [copy_of(label) for label in dict.fromkeys(labels)]
    return synced_models()


def full_load(
    copy: Copy,
    state: SyncState,
    versions: Versions,
    size: int | None,
    progress: Progress,
    stop: threading.Event | None = None,
) -> tuple[int, int] | None:
    """Load the copy again from the whole source; (rows written, rows marked deleted).

    None: ``stop`` was set before the end. The copy is then marked not loaded (as
    after a crash), and the next sync loads it again.
    """
    state.loaded = 0
    write_state(copy.alias, state)  # Before the log is emptied: a crash from here loads again.
    capture.drain(copy.source_connection, copy.label)
    version = versions.take()
    loaded = 0
    text = copy.as_text(size or TEXT_BLOCK_ROWS)
    rows = size or DEFAULT_BATCH_SIZE
    if text is not None:
        with contextlib.closing(text) as chunks:
            for chunk in chunks:
                loaded += copy.write_text(chunk, version)
                progress(copy.label, "loaded", loaded)
                if stop is not None and stop.is_set():
                    return None
    else:
        with contextlib.closing(copy.everything(rows)) as batches:
            for batch in batches:
                copy.write(batch, version)
                loaded += len(batch)
                progress(copy.label, "loaded", loaded)
                if stop is not None and stop.is_set():
                    return None
    # Copied rows that the load did not write again are no longer in the source.
    gone = (
        _live(copy.model, copy.alias)
        .filter(**{f"{VERSION}__lt": version})
        .values_list(copy.pk, flat=True)
    )
    deleted = 0
    keys: list[Any] = []
    for key in gone.iterator(chunk_size=rows):
        keys.append(key)
        if len(keys) >= rows:
            copy.delete(keys, version)
            deleted, keys = deleted + len(keys), []
    copy.delete(keys, version)
    deleted += len(keys)
    state.loaded = 1
    write_state(copy.alias, state)
    return loaded, deleted


def sync_copy(
    copy: Copy,
    *,
    full: bool = False,
    batch_size: int | None = None,
    progress: Progress = _no_progress,
    max_batches: int | None = None,
    stop: threading.Event | None = None,
) -> ModelSync:
    """One run for ``copy``, its lock held by the caller (see the module).

    It ends when the log is empty, after ``max_batches`` batches, or at the end
    of the batch during which ``stop`` is set. ``batch_size``: rows at a time
    (``DEFAULT_BATCH_SIZE``; ``TEXT_BLOCK_ROWS`` for a load sent as text).
    """
    started = time.time()
    result = ModelSync(
        copy.model._meta.label, copy.source._meta.label, copy.source_alias, copy.alias
    )
    ensure_state_table(copy.alias)
    state = read_state(copy.alias, copy.label)
    versions = Versions(copy.alias, state)
    oldest: float | None = None
    try:
        reload = full or not state.loaded
        pending_rows = batch_size or DEFAULT_BATCH_SIZE
        batches = 0
        while max_batches is None or batches < max_batches:
            if reload:
                result.full, reload = True, False
                loaded = full_load(copy, state, versions, batch_size, progress, stop)
                if loaded is None:
                    break
                result.loaded += loaded[0]
                result.deleted += loaded[1]
            if stop is not None and stop.is_set():
                break
            changes = capture.pending(copy.source_connection, copy.label, pending_rows)
            if not changes:
                break
            batches += 1
            if any(change.op == RELOAD for change in changes):
                reload = True  # Everything may have changed: the log is drained by the load.
                continue
            first = min(change.at for change in changes)
            oldest = first if oldest is None else min(oldest, first)
            written, deleted = apply(copy, changes, versions.take())
            capture.consume(copy.source_connection, changes)
            result.changes += len(changes)
            result.written += written
            result.deleted += deleted
            progress(copy.label, "changes", result.changes)
        result.pending = capture.backlog(copy.source_connection, copy.label)[0]
    except Exception as error:
        result.error = f"{type(error).__name__}: {error}".strip()
        state.error, state.error_at = result.error[:2000], time.time()
        # Kept for `fleet status`, unless the copy's database is what failed.
        with contextlib.suppress(Exception):
            write_state(copy.alias, state)
        raise
    finally:
        result.seconds = time.time() - started
    ended = time.time()
    result.lag = 0.0 if oldest is None else max(0.0, ended - oldest)
    state.synced_at, state.lag, state.error, state.error_at = ended, result.lag, "", 0.0
    state.copied = result.loaded + result.written + result.deleted
    write_state(copy.alias, state)
    return result


def apply(copy: Copy, changes: Sequence[capture.Change], version: int) -> tuple[int, int]:
    """Write the source's rows of the keys in ``changes`` as of ``version``; (rows, deletions)."""
    to_python = copy.source._meta.pk.to_python
    keys = list(dict.fromkeys(to_python(change.pk) for change in changes if change.pk is not None))
    rows = copy.rows(keys)
    found = {row[copy.pk_index] for row in rows}
    gone = [key for key in keys if key not in found]
    copy.write(rows, version)
    copy.delete(gone, version)
    return len(rows), len(gone)


def sync(
    labels: Sequence[str] = (),
    *,
    full: bool = False,
    batch_size: int | None = None,
    progress: Progress = _no_progress,
) -> SyncReport:
    """Sync each synced model ``labels`` names (else all), one at a time, each under its lock.

    A model whose sync fails is reported with its error (kept in its state, for
    ``fleet status``) and the others still run; a lock held elsewhere raises.
    """
    report = SyncReport()
    for model in chosen(labels):
        copy = Copy(model)
        with sync_lock(copy.source_alias, copy.label):
            try:
                report.models.append(
                    sync_copy(copy, full=full, batch_size=batch_size, progress=progress)
                )
            except Exception as error:  # noqa: BLE001  (reported, and in the copy's state)
                report.models.append(failed(copy, error))
    return report


def follow(
    labels: Sequence[str] = (),
    *,
    full: bool = False,
    interval: float = 1.0,
    batch_size: int | None = None,
    stop: threading.Event,
    on_sync: Callable[[ModelSync], None] = lambda result: None,
    progress: Progress = _no_progress,
) -> None:
    """Sync ``labels`` (else every synced model) until ``stop`` is set, with a bounded lag.

    Every lock is taken first and held to the end. Each turn copies what each
    model's log holds, a few batches at a time (so that one busy model does not
    hold up the others), then waits ``interval`` seconds if nothing was left to
    copy. The first turn loads in full what was never loaded (everything, with
    ``full``). An error (a source gone away) is reported through ``on_sync``, and
    the next turn tries again.
    """
    copies = [Copy(model) for model in chosen(labels)]
    reload = {copy.label for copy in copies} if full else set()
    with ExitStack() as locks:
        for copy in copies:
            locks.enter_context(sync_lock(copy.source_alias, copy.label))
        while not stop.is_set():
            busy = False
            for copy in copies:
                if stop.is_set():
                    break
                try:
                    result = sync_copy(
                        copy,
                        full=copy.label in reload,
                        batch_size=batch_size,
                        progress=progress,
                        max_batches=FOLLOW_BATCHES,
                        stop=stop,
                    )
                    reload.discard(copy.label)
                except Exception as error:  # noqa: BLE001  (reported; the next turn tries again)
                    result = failed(copy, error)
                    for alias in (copy.source_alias, copy.alias):
                        connections[alias].close_if_unusable_or_obsolete()
                on_sync(result)
                busy = busy or bool(result.pending)
            if not busy:
                stop.wait(interval)


def failed(copy: Copy, error: Exception) -> ModelSync:
    """The result of a sync of ``copy`` that ``error`` ended."""
    return ModelSync(
        copy.model._meta.label,
        copy.source._meta.label,
        copy.source_alias,
        copy.alias,
        error=f"{type(error).__name__}: {error}".strip(),
    )


# --- Status ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncStatus:
    """A synced model as ``fleet status`` shows it: its backlog now, its last sync."""

    model: str
    source: str
    source_database: str
    database: str
    #: Changes logged and not copied yet (None: the log could not be read).
    pending: int | None = None
    #: Seconds since the oldest of them was logged: the copy's lag now (0: none pending).
    lag: float | None = None
    #: Whether a full load has completed (None: never synced, or the state unread).
    loaded: bool | None = None
    #: When the last sync ended (Unix seconds; None: never).
    synced_at: float | None = None
    #: That sync's lag (seconds).
    last_lag: float | None = None
    #: The last sync's error ("" if it succeeded).
    error: str = ""
    #: Why the backlog or the state could not be read ("" if they were).
    problem: str = ""


def sync_status(only: Sequence[str] = ()) -> list[SyncStatus]:
    """Each synced model's backlog (its source's log) and last sync (its state); of ``only``.

    ``only``: the synced models whose source or copy is on one of these databases
    (all, if empty). Each database is read on a probe connection, as by
    ``fleet status``: one that never answers is reported after ``PROBE_TIMEOUT``.
    """
    copies: list[Copy | SyncStatus] = []
    for model in synced_models():
        try:
            copy = Copy(model)
        except LookupError as error:
            spec = spec_of(model)
            label = spec.source_label if spec is not None else ""
            copies.append(SyncStatus(model._meta.label, label, "", "", problem=str(error)))
            continue
        if not only or copy.source_alias in only or copy.alias in only:
            copies.append(copy)
    aliases = [a for c in copies if isinstance(c, Copy) for a in (c.source_alias, c.alias)]
    with vendors.probing(aliases, fleet_settings().seconds["PROBE_TIMEOUT"]):
        return [c if isinstance(c, SyncStatus) else _status(c) for c in copies]


def _status(copy: Copy) -> SyncStatus:
    problems = []
    pending: int | None = None
    lag: float | None = None
    try:
        if capture.is_installed(copy.source_connection):
            pending, oldest = capture.backlog(copy.source_connection, copy.label)
            lag = 0.0 if oldest is None else max(0.0, time.time() - oldest)
        else:
            problems.append(
                f"no change log on {copy.source_alias!r}: run `manage.py migrate --database "
                f"{copy.source_alias}` (or `fleet migrate`), which installs it"
            )
    except DatabaseError as error:
        problems.append(f"{copy.source_alias}: {error}")
    found = SyncStatus(
        copy.model._meta.label,
        copy.source._meta.label,
        copy.source_alias,
        copy.alias,
        pending=pending,
        lag=lag,
    )
    try:
        connection = connections[copy.alias]
        with connection.cursor() as cursor:
            tables = connection.introspection.table_names(cursor)
        state = (
            read_state(copy.alias, copy.label) if state_model()._meta.db_table in tables else None
        )
    except DatabaseError as error:
        problems.append(f"{copy.alias}: {error}")
        state = None
    if state is not None and state.updated:
        found = dataclasses.replace(
            found,
            loaded=bool(state.loaded),
            synced_at=state.synced_at or None,
            last_lag=state.lag if state.synced_at else None,
            error=state.error,
        )
    return dataclasses.replace(found, problem="; ".join(problems))


# --- Reconciliation -------------------------------------------------------------------------


@dataclass(frozen=True)
class RangeDifference:
    """A key range whose rows differ between the source and the copy's live rows."""

    #: The range: ``first``-``last`` of an integer key, else ``hash bucket N``.
    range: str
    source_rows: int
    copy_rows: int
    #: Keys whose row differs (or is on one side only), the first few.
    keys: tuple[str, ...]


@dataclass
class ModelCheck:
    """``fleet sync --check`` for one synced model."""

    model: str
    source: str
    source_rows: int = 0
    copy_rows: int = 0
    ranges: int = 0
    differ: list[RangeDifference] = field(default_factory=list)
    #: Changes logged and not copied yet: a difference they explain is only lag.
    pending: int | None = None
    error: str = ""


@dataclass
class CheckReport:
    models: list[ModelCheck] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        found = []
        for model in self.models:
            if model.error:
                found.append(f"{model.model}: {model.error}")
            elif model.differ:
                found.append(
                    f"{model.model}: {len(model.differ)} of {model.ranges} key ranges differ "
                    f"({', '.join(difference.range for difference in model.differ)})"
                )
        return found


class _Ranges:
    """Which range a key falls in: ``RANGES`` equal ranges of an integer key, else hash buckets."""

    def __init__(self, low: Any, high: Any) -> None:
        self.integer = all(
            isinstance(key, int) and not isinstance(key, bool) for key in (low, high)
        )
        self.low = low
        self.width = max(1, math.ceil((high - low + 1) / RANGES)) if self.integer else 1
        self.count = math.ceil((high - low + 1) / self.width) if self.integer else RANGES

    def of(self, key: Any) -> int:
        if self.integer:
            return int((key - self.low) // self.width)
        digest = hashlib.blake2b(str(canonical(key)).encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") % RANGES

    def name(self, index: int) -> str:
        if self.integer:
            first = self.low + index * self.width
            return f"{first}-{first + self.width - 1}"
        return f"hash bucket {index} of {RANGES}"


def _sides(copy: Copy) -> tuple[list[str], Any, Any]:
    """The compared columns' names on the copy, and both sides' rows of them (unordered)."""
    mapped = [column for column in copy.columns if column.kind is not None]
    names = [column.name for column in mapped]
    source = (
        copy.source._base_manager.db_manager(copy.source_alias)
        .values_list(*(column.source for column in mapped))
        .order_by()
    )
    return names, source, _live(copy.model, copy.alias).values_list(*names).order_by()


def _sums(
    rows: Iterable[tuple[Any, ...]], index: int, ranges: _Ranges
) -> dict[int, tuple[int, int]]:
    """Each range -> (its rows, the sum of their hashes modulo 2**64): the order does not count."""
    sums: dict[int, tuple[int, int]] = {}
    for row in rows:
        at = ranges.of(row[index])
        count, total = sums.get(at, (0, 0))
        sums[at] = (count + 1, (total + row_hash(row)) % (1 << 64))
    return sums


def check_copy(copy: Copy) -> ModelCheck:
    """Compare the copy's live rows with the source's, by counts and checksums per key range.

    Each side is read twice at most, in no order: once for the sums of its ranges,
    and, if some differ, once more for the hashes of their rows, to name their keys.
    """
    result = ModelCheck(copy.model._meta.label, copy.source._meta.label)
    names, source, target = _sides(copy)
    index = names.index(copy.pk)
    keys = (copy.spec.columns[copy.pk_index].source, copy.pk)
    # ClickHouse's min() of no rows is 0, not NULL: a side without rows has no bounds.
    bounds = [
        found
        for side, key in zip((source, target), keys, strict=True)
        if (
            found := side.aggregate(
                rows=models.Count(key), low=models.Min(key), high=models.Max(key)
            )
        )["rows"]
    ]
    result.pending = capture.backlog(copy.source_connection, copy.label)[0]
    if not bounds:
        return result  # Both are empty.
    ranges = _Ranges(min(b["low"] for b in bounds), max(b["high"] for b in bounds))
    result.ranges = ranges.count
    chunk = DEFAULT_BATCH_SIZE
    theirs, ours = (
        _sums(side.iterator(chunk_size=chunk), index, ranges) for side in (source, target)
    )
    result.source_rows = sum(count for count, _ in theirs.values())
    result.copy_rows = sum(count for count, _ in ours.values())
    differing = sorted(at for at in {*theirs, *ours} if theirs.get(at) != ours.get(at))
    if not differing:
        return result
    wanted = set(differing)
    hashes = [
        {
            row[index]: row_hash(row)
            for row in side.iterator(chunk_size=chunk)
            if ranges.of(row[index]) in wanted
        }
        for side in (source, target)
    ]
    for at in differing:
        differ = sorted(
            (
                key
                for key in {*hashes[0], *hashes[1]}
                if ranges.of(key) == at and hashes[0].get(key) != hashes[1].get(key)
            ),
            key=str if not ranges.integer else None,
        )
        result.differ.append(
            RangeDifference(
                ranges.name(at),
                theirs.get(at, (0, 0))[0],
                ours.get(at, (0, 0))[0],
                tuple(str(key) for key in differ[:KEYS_SHOWN]),
            )
        )
    return result


def check(labels: Sequence[str] = ()) -> CheckReport:
    """``fleet sync --check``: each synced model (of ``labels``, else all) against its source."""
    report = CheckReport()
    for model in chosen(labels):
        try:
            report.models.append(check_copy(Copy(model)))
        except (DatabaseError, LookupError) as error:
            report.models.append(ModelCheck(model._meta.label, "", error=str(error)))
    return report
