"""``fleet move``: models to another database while the application goes on writing.

A move of models from one database (the source) to another (the target) goes
through phases, kept in ``dbfleet_move`` on the source, a row for each model:

``copying``
    The source's change capture (the triggers of :mod:`dbfleet.analytics.capture`)
    logs every change of the models' tables under the move's own label, from
    before the first row is read; then the rows are copied as ``fleet copy`` copies
    them, a batch at a time, all read from one snapshot of the source (a copy that
    stops is started again from the first row).
``following``
    A catch-up reads the logged changes, and the rows they name, from one snapshot
    of the source; it deletes those keys on the target and writes the source's rows
    of them in one transaction, and then deletes the log rows it applied (a catch-up
    killed before that applies them again, which changes nothing). The target then
    holds the source as of that snapshot. A comparison made meanwhile may only
    find rows that have a change logged since; any other difference stops the move.
``finishing``, ``finished``
    ``--finish``, once the routes send the models to the target: triggers on the
    source's tables refuse every write (a process still on the old routes fails
    loudly), the last changes are applied, both sides compared (exactly: nothing
    writes any more), and the source's tables renamed, kept as a backup; the
    move's capture is dropped.

``aborted``
    ``--abort``, before the move is finished, drops its capture, its log rows, the
    fence if there is one, and the rows it copied to the target: the source is as
    it was.

One command at a time works on the moves between two databases (a session lock).
A writer that commits while the move runs is never missed: its log row commits
with its rows, and every log row is applied before it is deleted.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.core.management.base import CommandError
from django.db import DatabaseError, connections, router, transaction
from django.db.backends.utils import truncate_name
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder

from dbfleet import vendors
from dbfleet.analytics import capture
from dbfleet.conf import get_topology
from dbfleet.moving.copy import (
    CopyReport,
    Model,
    Progress,
    check_copied,
    chosen,
    copy_planned,
    ensure_checkpoints,
    forget_checkpoint,
    in_dependency_order,
    planned,
    reset_sequences,
    written_fields,
)
from dbfleet.moving.verify import VerifyReport, comparable, verify_models
from dbfleet.transactions.guard import unguarded
from dbfleet.values import canonical
from dbfleet.vendors.base import ABORTED, FINISHED, MOVES, RELOAD

COPYING, FOLLOWING, FINISHING = "copying", "following", "finishing"
T = TypeVar("T")
#: Keys read from the source, or written to the target, with one statement.
CHUNK = 500
#: Catch-ups of one run before it settles for a comparison of a source still written.
ROUNDS = 20


@dataclass
class Move:
    """Models moving from one database to another, as ``dbfleet_move`` records them."""

    source: str
    target: str
    #: In dependency order (the models a foreign key points to first).
    models: list[Model]
    phase: str
    #: When it began (Unix seconds).
    started: float
    #: The source's renamed tables (a finished move), by model label.
    backups: dict[str, str] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return [model._meta.label for model in self.models]

    def named(self) -> str:
        """The move's models as the command line names them (their own many-to-many
        tables go with them)."""
        return " ".join(model._meta.label for model in self.models if not model._meta.auto_created)


@dataclass
class MoveReport:
    move: Move
    copy: CopyReport | None = None
    #: Changes applied by catch-ups in this run.
    applied: int = 0
    #: The last comparison, and the changes still logged when it ended (keys changing).
    verify: VerifyReport | None = None
    changing: int = 0
    #: Changes not applied yet, and the age of the oldest in seconds.
    backlog: int = 0
    lag: float | None = None


def ensure_moves(alias: str) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {MOVES} (model VARCHAR(200) NOT NULL PRIMARY KEY, "
            "target VARCHAR(200) NOT NULL, phase VARCHAR(20) NOT NULL, "
            "started DOUBLE PRECISION NOT NULL, backup VARCHAR(200))"
        )


def recorded(alias: str) -> list[Move]:
    """The moves from ``alias``, finished ones included."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        if MOVES not in connection.introspection.table_names(cursor):
            return []
        cursor.execute(f"SELECT model, target, phase, started, backup FROM {MOVES} ORDER BY model")
        rows = cursor.fetchall()
    grouped: dict[tuple[str, float], Move] = {}
    for label, target, phase, started, backup in rows:
        try:
            model = chosen([label], by_key=False)[0]
        except CommandError:  # An app since removed.
            continue
        # One move: its models were recorded together, with one start.
        move = grouped.setdefault(
            (str(target), float(started)),
            Move(alias, str(target), [], str(phase), float(started)),
        )
        move.models.append(model)
        if backup:
            move.backups[model._meta.label] = str(backup)
    for move in grouped.values():
        move.models = in_dependency_order(move.models)
    return sorted(grouped.values(), key=lambda move: (move.started, move.target))


def sources() -> list[str]:
    """The databases a move can be from: primaries whose triggers capture changes."""
    topology = get_topology()
    return [
        alias
        for alias in connections
        if not topology.is_replica(alias) and vendors.of(connections[alias]).captures_changes
    ]


@dataclass(frozen=True)
class MoveStatus:
    """A move as ``fleet status`` shows it."""

    models: list[str]
    #: Every model of the move, its many-to-many tables too.
    labels: list[str]
    source: str
    target: str
    phase: str
    started: float
    #: Changes logged and not applied yet, and the age of the oldest (seconds); None when
    #: finished.
    backlog: int | None
    lag: float | None
    #: A finished move's renamed tables on the source, by model label.
    backups: dict[str, str]


def move_status(only: Sequence[str] = ()) -> list[MoveStatus]:
    """Every move recorded on the databases ``only`` names (or all) that can be read."""
    found = []
    for alias in sources():
        if only and alias not in only:
            continue
        try:
            moves = recorded(alias)
            counts = [None if move.phase == FINISHED else backlog(move) for move in moves]
        except DatabaseError:  # Unreachable: fleet status says so already.
            continue
        for move, count in zip(moves, counts, strict=True):
            found.append(
                MoveStatus(
                    move.named().split(),
                    move.labels,
                    move.source,
                    move.target,
                    move.phase,
                    move.started,
                    None if count is None else count[0],
                    None if count is None else count[1],
                    move.backups,
                )  # fmt: skip
            )
    return found


def in_progress(labels: Sequence[str] = ()) -> list[Move]:
    """The moves not finished, every one or those of the models ``labels`` name, on the
    databases that answer (CommandError naming those that do not, if none is found)."""
    wanted = set(chosen(labels, by_key=False)) if labels else None
    found, unreachable = [], []
    for alias in sources():
        try:
            moves = recorded(alias)
        except DatabaseError:
            unreachable.append(alias)
            continue
        found += [
            move
            for move in moves
            if move.phase != FINISHED and (wanted is None or wanted & set(move.models))
        ]
    if not found:
        raise CommandError(
            "No move is in progress"
            + (f" of {' '.join(labels)}" if labels else "")
            + (
                f" on the databases that answer (not {', '.join(unreachable)})"
                if unreachable
                else ""
            )
            + ": start one with `manage.py fleet move MODEL… --to ALIAS`."
        )
    return found


@contextlib.contextmanager
def exclusive(source: str, target: str) -> Iterator[None]:
    """Hold the lock of the moves from ``source`` to ``target``: one command at a time
    catches up, finishes or aborts them (two catch-ups could apply an older snapshot last)."""
    connection = connections[source]
    vendor, name = vendors.of(connection), f"dbfleet-move-{target}"
    if not vendor.try_session_lock(connection, name):
        raise CommandError(
            f"Another fleet move of the models moving from {source!r} to {target!r} is "
            "running (a --follow, say): stop it, then run this again."
        )
    try:
        yield
    finally:
        vendor.release_session_lock(connection, name)


def _set_phase(move: Move, phase: str, backups: dict[str, str] | None = None) -> None:
    with transaction.atomic(using=move.source), connections[move.source].cursor() as cursor:
        for model in move.models:
            cursor.execute(
                f"UPDATE {MOVES} SET phase = %s, backup = %s WHERE model = %s",
                [phase, (backups or {}).get(model._meta.label), model._meta.label],
            )
    move.phase = phase


def _capture_anew(alias: str) -> None:
    """Triggers on ``alias`` for what is synced or moving now; dropped from the rest."""
    capture.install(connections[alias], capture.sources_on(alias))


def start(
    labels: Sequence[str],
    to: str,
    source: str | None = None,
    *,
    batch_size: int,
    progress: Progress,
) -> MoveReport:
    """Begin (or go on with) moving the models ``labels`` name to ``to``: copy, catch up,
    compare. CommandError, before anything is written, for a move that cannot be made."""
    picked = chosen(labels)
    froms = {source or router.db_for_write(model) for model in picked}
    if len(froms) > 1:
        raise CommandError(
            f"The models named are on {', '.join(sorted(froms))}: move the models of one "
            "database at a time (or name the database to read with --from)."
        )
    (origin,) = froms
    if origin not in sources():
        raise CommandError(
            f"{origin!r} cannot log its changes (fleet move needs the triggers of PostgreSQL, "
            "MariaDB/MySQL or SQLite on a primary): stop writes, then use fleet copy."
        )
    comparable(picked, origin, to)
    with exclusive(origin, to):
        move = _current(origin, to, picked)
        report = MoveReport(move or Move(origin, to, [], COPYING, time.time()))
        _start(report, move, labels, batch_size, progress)
    return report


def _current(origin: str, to: str, picked: Sequence[Model]) -> Move | None:
    """The move of ``picked`` to ``to`` going on, if any; CommandError if it cannot go on."""
    going = {
        model: move for move in recorded(origin) if move.phase != FINISHED for model in move.models
    }
    move: Move | None = None
    for model in picked:
        if model in going:
            move = going[model]
            if move.target != to or set(move.models) != set(picked):
                raise CommandError(
                    f"{model._meta.label} is in a move from {origin!r} to {move.target!r} "
                    f"already, of {move.named()}: go on with `manage.py fleet move "
                    f"{move.named()} --from {origin} --to {move.target}`, or end it with "
                    "--finish or --abort."
                )
    if move is not None and move.phase == ABORTED:
        raise CommandError(
            f"The move of {move.named()} is being aborted: run `manage.py fleet move "
            f"{move.named()} --abort` again to end that, then start a new one."
        )
    if move is not None and move.phase == FINISHING:
        raise CommandError(
            f"The move of {move.named()} is finishing (the source is fenced): run "
            f"`manage.py fleet move {move.named()} --finish` again."
        )
    return move


def _start(
    report: MoveReport,
    move: Move | None,
    labels: Sequence[str],
    batch_size: int,
    progress: Progress,
) -> None:
    origin, to = report.move.source, report.move.target
    if move is None or move.phase == COPYING:
        if move is not None and any(
            router.db_for_write(model) == to
            for model in move.models
            if not model._meta.auto_created
        ):
            raise CommandError(
                f"Nothing was changed: the copy of {move.named()} to {to!r} had not ended, and "
                f"the routes send them to {to!r} already: a new copy would delete what was "
                f"written there since. Route them to {origin!r} again, then run this again."
            )
        if move is not None:
            # A copy that stopped: its rows are of another snapshot than the next one's,
            # and may not agree with them (a unique pair moved to another key, say).
            _empty(to, move.models, origin)
        ordered, froms_of = planned(
            labels, to, origin, resume=False, replace=False,
            create=lambda missing: _create_tables(missing, origin, to),
        )  # fmt: skip
        report.move.models = list(ordered)
        if move is None:
            _record(report.move)
        # Capture first (again, after a start that stopped before it was in place): what
        # the log holds of the move already is older than the copy, which reads every row.
        _capture_anew(origin)
        for model in report.move.models:
            capture.drain(connections[origin], capture.move_label(model, to))
        # Every row as of one moment: the copied rows agree with each other (foreign and
        # unique keys), and the changes logged since then make the rest.
        # Each batch commits on the target while this transaction is open: as meant.
        with transaction.atomic(using=origin), unguarded():
            vendors.of(connections[origin]).read_one_snapshot(connections[origin])
            report.copy = copy_planned(
                ordered, froms_of, to, resume=False, replace=False, batch_size=batch_size,
                progress=progress,
            )  # fmt: skip
        _set_phase(report.move, FOLLOWING)
    follow(report, ROUNDS)


def _create_tables(models: Sequence[Model], source: str, to: str) -> None:
    """Make the tables of ``models`` on ``to`` as their migrations do, and record there the
    migrations that made them on ``source`` (with those they depend on), as ``migrate``
    records every app's, making only what is routed there: once the routes send the models
    to ``to``, it finds them as its records say."""
    loader = MigrationLoader(connections[source])
    applied = set(loader.applied_migrations or {})
    apps_of = {model._meta.app_label for model in models}
    if pending := sorted(
        f"{app}.{name}" for app, name in loader.graph.leaf_nodes() if app in apps_of
        and (app, name) not in applied
    ):  # fmt: skip
        raise CommandError(
            f"Nothing was copied: {', '.join(pending)} is not applied on {source!r}: the "
            f"tables made on {to!r} would not be those of the rows. Migrate {source!r} first."
        )
    needed = {
        node
        for leaf in loader.graph.leaf_nodes()
        if leaf[0] in apps_of
        for node in loader.graph.forwards_plan(leaf)
        if node in applied
    }
    # A squashed migration counts as applied where the ones it replaces are recorded.
    needed |= {
        replaced
        for node in needed
        for replaced in getattr(loader.disk_migrations.get(node), "replaces", ())
    }
    recorder = MigrationRecorder(connections[to])
    recorder.ensure_schema()
    recorded_there = set(recorder.applied_migrations())
    # The tables and their records together, where DDL is transactional.
    with connections[to].schema_editor() as editor:
        for model in models:
            owner: Any = model._meta.auto_created  # The model of a many-to-many table.
            if not (owner and owner in models):  # Else made with the model that has it.
                editor.create_model(model)
        for app, name in sorted(needed - recorded_there):
            recorder.record_applied(app, name)


def _record(move: Move) -> None:
    """Record the move, forgetting finished moves of its models."""
    ensure_moves(move.source)
    with transaction.atomic(using=move.source), connections[move.source].cursor() as cursor:
        for model in move.models:
            cursor.execute(f"DELETE FROM {MOVES} WHERE model = %s", [model._meta.label])
            cursor.execute(
                f"INSERT INTO {MOVES} (model, target, phase, started) VALUES (%s, %s, %s, %s)",
                [model._meta.label, move.target, COPYING, move.started],
            )


def follow(report: MoveReport, rounds: int) -> None:
    """Catch up until nothing is left (at most ``rounds`` times), then compare."""
    for _ in range(rounds):
        applied = len(catch_up(report.move))
        report.applied += applied
        if not applied:
            break
    check(report)


def check(report: MoveReport, *, exact: bool = False) -> None:
    """Compare both sides; a difference is allowed only for a key with a change logged
    after it (and not ``exact``). CommandError for any other."""
    move = report.move
    compared = verify_models(move.labels, move.source, move.target, by_pk=True, shown=None)
    keys = _logged(move)
    report.verify, report.changing = compared, 0
    unexplained = []
    for result in compared.models:
        label = result.model
        differing = {*result.missing, *result.extra, *(d.key for d in result.different)}
        pending = keys.get(label, set())
        if exact:
            unexplained_here = differing
        else:  # A change logged of every row (R) explains any difference.
            unexplained_here = set() if RELOAD in pending else differing - pending
        unexplained += [f"{label} {key}" for key in sorted(unexplained_here, key=str)]
        report.changing += len(differing - unexplained_here)
    report.backlog, report.lag = backlog(move)
    if unexplained:
        shown = ", ".join(unexplained[:20]) + (" …" if len(unexplained) > 20 else "")
        raise CommandError(
            f"The rows of {len(unexplained)} keys differ between {move.source!r} and "
            f"{move.target!r} with no change logged to explain it: {shown}. See them with "
            f"`manage.py fleet verify {move.named()} --between {move.source} {move.target}`; "
            f"a row written to {move.target!r} by the application or by hand does this. "
            f"Make the rows agree, then run the command again (`fleet move {move.named()} "
            "--abort`, while the routes send the models to the source, empties the target's "
            "tables)."
        )


def _logged(move: Move) -> dict[str, set[Any]]:
    """Each model's label -> the keys with a change logged and not applied (``R``: all)."""
    connection = connections[move.source]
    found: dict[str, set[Any]] = {}
    for model in move.models:
        keys = found.setdefault(model._meta.label, set())
        for change in capture.pending(connection, capture.move_label(model, move.target), 10**9):
            keys.add(RELOAD if change.op == RELOAD else canonical(_key(model, change.pk)))
    return found


def _key(model: Model, text: str | None) -> Any:
    return model._meta.pk.to_python(text)


def backlog(move: Move) -> tuple[int, float | None]:
    """(changes logged and not applied, the age of the oldest in seconds)."""
    count, oldest = 0, None
    for model in move.models:
        more, at = capture.backlog(connections[move.source], capture.move_label(model, move.target))
        count += more
        if at is not None:
            oldest = at if oldest is None else min(oldest, at)
    return count, None if oldest is None else max(time.time() - oldest, 0.0)


def catch_up(move: Move) -> list[capture.Change]:
    """Apply the changes logged for ``move``: the rows they name, as one snapshot of the
    source has them, written to the target in one transaction; then deleted from the log.
    Returns them."""
    source, target = connections[move.source], connections[move.target]
    # Off for the session where the engine allows it (MariaDB/MySQL, SQLite); PostgreSQL
    # checks at the commit, when the rows of one snapshot agree with each other again.
    disabled = target.disable_constraint_checking()
    try:
        with transaction.atomic(using=move.source):
            vendors.of(source).read_one_snapshot(source)
            logged = {
                model: capture.pending(source, capture.move_label(model, move.target), 10**9)
                for model in move.models
            }
            every = [change for changes in logged.values() for change in changes]
            if every:
                keys = {model: _changed(model, move, changes) for model, changes in logged.items()}
                with transaction.atomic(using=move.target):
                    # The changed rows deleted first, then written as the source has them:
                    # a unique value that went from one row to another, or two rows that
                    # swapped one, are free when written.
                    for model in reversed(move.models):
                        _delete(model, move, keys[model])
                    for model in move.models:
                        _write(model, move, keys[model])
    finally:
        if disabled:
            target.enable_constraint_checking()
    if every:
        capture.consume(source, every)
        # Past the ids copied: a process already on the new routes does not take one.
        reset_sequences(move.models, move.target)
    return every


def _changed(model: Model, move: Move, changes: Sequence[capture.Change]) -> list[Any]:
    """The keys ``changes`` name, in order (``R``: every key on either side)."""
    if any(change.op == RELOAD for change in changes):  # Every row may have changed.
        keys = {
            *model._base_manager.using(move.source).values_list("pk", flat=True),
            *model._base_manager.using(move.target).values_list("pk", flat=True),
        }
    else:
        keys = {_key(model, change.pk) for change in changes}
    return sorted(keys)


def _chunks(keys: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(keys), CHUNK):
        yield keys[start : start + CHUNK]


def _rewritten(model: Model) -> bool:
    """Whether ``model``'s changed rows are deleted and inserted again (foreign keys are not
    checked meanwhile), rather than updated one by one: unless a relation to it acts in the
    database when a row is deleted (Django's ``DB_CASCADE`` and its kin), which the delete
    would set off."""
    return not any(
        getattr(relation.on_delete, "__name__", "").startswith("DB_")
        for relation in model._meta.related_objects
    )


def _delete(model: Model, move: Move, keys: Sequence[Any]) -> None:
    """Delete ``model``'s rows of ``keys`` on the target: all (rewritten), or those the
    source no longer has."""
    there = model._base_manager.using(move.target)
    here = model._base_manager.using(move.source)
    for chunk in _chunks(keys):
        if not _rewritten(model):
            kept = set(here.filter(pk__in=chunk).values_list("pk", flat=True))
            chunk = [key for key in chunk if key not in kept]
        there.filter(pk__in=chunk)._raw_delete(move.target)


def _write(model: Model, move: Move, keys: Sequence[Any]) -> None:
    """Write the source's rows of ``keys`` to the target: inserted (by binary COPY between
    PostgreSQL databases whose columns agree), or, where not rewritten, updated where the
    target has the key."""
    meta = model._meta
    fields = written_fields(model)
    attnames = [field.attname for field in fields]
    columns = [str(field.column) for field in fields]
    reading, target = connections[move.source], connections[move.target]
    vendor, there = vendors.of(reading), model._base_manager.using(move.target)
    binary: bool | None = None  # Asked with the first chunk's statement.
    for chunk in _chunks(keys):
        rows = model._base_manager.using(move.source).filter(pk__in=chunk).values_list(*attnames)
        present: set[Any] = set()
        if not _rewritten(model):
            present = set(there.filter(pk__in=chunk).values_list("pk", flat=True))
        elif binary is not False:
            sql, params = rows.order_by().query.get_compiler(move.source).as_sql()
            if binary is None:
                binary = vendor.copies_as_is(reading, sql, params, target, meta.db_table, columns)
            if binary:
                vendor.copy_rows(reading, sql, params, target, meta.db_table, columns)
                continue
        new = []
        for row in rows:
            key = row[attnames.index(meta.pk.attname)]
            if key in present:
                there.filter(pk=key).update(**dict(zip(attnames, row, strict=True)))
            else:
                new.append(
                    [
                        field.get_db_prep_save(value, connection=target)
                        for field, value in zip(fields, row, strict=True)
                    ]
                )
        if new:
            vendors.of(target).write_rows(target, meta.db_table, columns, new)


def finish(labels: Sequence[str] = ()) -> list[MoveReport]:
    """Fence each move's source, apply its last changes, compare, keep its tables as a
    backup; the settings must route its models to the target already."""
    return _one_at_a_time(in_progress(labels), _refuse_finish, _finish)


def _one_at_a_time(
    moves: Sequence[Move],
    refuse: Callable[[Move], None],
    act: Callable[[Move], T],
    *,
    aborting: bool = False,
) -> list[T]:
    """``act`` on each of ``moves`` once all pass ``refuse``: on the move as its source
    records it again under its lock, skipped if another command ended it since
    (``aborting``: one being aborted is not ended). What ``act`` returned."""
    for move in moves:
        refuse(move)
    ended = {FINISHED} if aborting else {FINISHED, ABORTED}
    done = []
    for move in moves:
        with exclusive(move.source, move.target):
            for now in recorded(move.source):
                if now.phase not in ended and set(now.models) == set(move.models):
                    refuse(now)
                    done.append(act(now))
                    break
    return done


def _refuse_finish(move: Move) -> None:
    if move.phase in (COPYING, ABORTED):
        raise CommandError(
            f"Nothing was changed: the move of {move.named()} to {move.target!r} is "
            + (
                f"being aborted: run `manage.py fleet move {move.named()} --abort` again to "
                "end that."
                if move.phase == ABORTED
                else f"still copying. With the routes sending them to {move.source!r}, run "
                f"`manage.py fleet move {move.named()} --from {move.source} --to "
                f"{move.target}` first (it copies them again, from the start)."
            )
        )
    routes = {
        model._meta.label: router.db_for_write(model)
        for model in move.models
        if not model._meta.auto_created
    }
    if stale := {label: alias for label, alias in routes.items() if alias != move.target}:
        raise CommandError(
            "Nothing was changed: "
            + ", ".join(f"{label} is routed to {alias!r}" for label, alias in stale.items())
            + f". Change ROUTES to send them to {move.target!r}, then run "
            f"`manage.py fleet move {move.named()} --finish` with those settings, before their "
            "processes "
            "take writes."
        )


def _finish(move: Move) -> MoveReport:
    source = connections[move.source]
    report = MoveReport(move)
    tables = set(source.introspection.table_names())
    if not move.backups:
        _set_phase(move, FINISHING)  # Before the fence: a kill then leaves a move finishing.
        message = f"dbfleet: {{table}} moved to {move.target}; its model is routed there now"
        with transaction.atomic(using=move.source):
            vendors.of(source).lock_for_triggers(
                source, [model._meta.db_table for model in move.models]
            )
            for model in move.models:
                table = model._meta.db_table
                vendors.of(source).fence(source, table, message.format(table=table))
        while applied := len(catch_up(move)):
            report.applied += applied
        check(report, exact=True)
        report.copy = CopyReport(move.target)
        try:
            check_copied(move.models, move.target, report.copy)
        except CommandError as error:
            raise CommandError(
                f"Some rows on {move.target!r} point to rows that are not there "
                f"({error.__cause__}), although both sides are the same: the source's rows "
                f"point there too. Nothing is renamed, and {move.source!r} refuses writes to "
                f"these models: make the rows agree on both, then run `manage.py fleet move "
                f"{move.named()} --finish` again."
            ) from error
        # The names first: a finish stopped while renaming goes on with them.
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        length = source.ops.max_name_length() or 200
        move.backups = {
            model._meta.label: truncate_name(f"{model._meta.db_table}_moved_{stamp}", length)
            for model in move.models
        }
        _set_phase(move, FINISHING, move.backups)
    with source.schema_editor() as editor:
        for model in move.models:
            if model._meta.db_table in tables:
                editor.alter_db_table(model, model._meta.db_table, move.backups[model._meta.label])
    _set_phase(move, FINISHED, move.backups)
    _capture_anew(move.source)
    for model in move.models:
        capture.drain(source, capture.move_label(model, move.target))
    return report


def abort(labels: Sequence[str] = ()) -> list[Move]:
    """Undo each move not finished: its capture, log and fence on the source, its rows on
    the target. Refused while the routes send its models to the target."""
    return _one_at_a_time(in_progress(labels), _refuse_abort, _abort, aborting=True)


def _refuse_abort(move: Move) -> None:
    if move.backups:
        raise CommandError(
            f"Nothing was changed: the move of {move.named()} was renaming the tables on "
            f"{move.source!r} (to {', '.join(move.backups.values())}): end it with "
            f"`manage.py fleet move {move.named()} --finish`."
        )
    if there := [
        model._meta.label
        for model in move.models
        if not model._meta.auto_created and router.db_for_write(model) == move.target
    ]:
        raise CommandError(
            f"Nothing was changed: the routes send {', '.join(there)} to {move.target!r}, "
            f"and --abort empties its tables there. If processes with these routes have "
            f"written there, move those rows back first; else route them to "
            f"{move.source!r} again and run --abort again."
        )


def _abort(move: Move) -> Move:
    """Each step undone in an order a rerun can go on from: the move marked aborted (its
    triggers go, as for no move), the fence, the target's rows, then its record."""
    source = connections[move.source]
    _set_phase(move, ABORTED)
    _capture_anew(move.source)
    for model in move.models:
        capture.drain(source, capture.move_label(model, move.target))
        vendors.of(source).unfence(source, model._meta.db_table)
    _empty(move.target, move.models, move.source)
    with transaction.atomic(using=move.source), source.cursor() as cursor:
        for model in move.models:
            cursor.execute(f"DELETE FROM {MOVES} WHERE model = %s", [model._meta.label])
    return move


def _empty(alias: str, models: Iterable[Model], source: str) -> None:
    """Delete the rows (and the copy's checkpoints) of ``models`` on ``alias``."""
    ensure_checkpoints(alias)
    with connections[alias].constraint_checks_disabled(), transaction.atomic(using=alias):
        for model in reversed(list(models)):
            model._base_manager.using(alias).all()._raw_delete(alias)
            forget_checkpoint(alias, model, source)
