"""``fleet copy``: models' rows from one database into another, in key order, resumable.

The models are copied in an order where a row's foreign keys point to rows copied
before it (or already on the target), each a batch at a time: the source is read
by primary-key range (``pk > last`` and ``pk <= the batch's last key``: an index
range each time, no cursor held open, never the whole table in memory), and each
batch is written to the target in one transaction with the model's checkpoint (the
last key copied, in ``dbfleet_copy_checkpoint`` on the target). A batch is on the
target with its checkpoint or not at all, so a copy killed at any moment and run
again with ``resume=True`` goes on after the last batch that committed: no row
twice, none skipped.

Rows are written as they are: no ``save()``, no signals. PostgreSQL to PostgreSQL
by binary COPY when the columns have the same types; else read through the ORM and
written by the target's bulk path (COPY FROM on PostgreSQL, a multi-row INSERT on
MariaDB/MySQL, executemany on SQLite). Constraint checks are off during the copy
where the engine allows it (MariaDB/MySQL, SQLite), and the copied tables checked
at the end; on PostgreSQL, which checks each transaction at its commit, a model
whose rows may point to rows of a later batch (to its own table, or round a cycle)
is copied in one transaction. The target's sequences are then set past the
copied ids.

The copy is of what the source holds while it runs: rows written to the source
meanwhile may or may not be copied. Stop writes first.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.core.management.base import CommandError
from django.core.management.color import no_style
from django.db import DatabaseError, connections, models, router, transaction
from django.db.models import Max

from dbfleet import vendors
from dbfleet.conf import get_topology

#: Rows read and written at a time, unless told otherwise.
DEFAULT_BATCH_SIZE = 10_000
#: The table, on the target, of each model's last key copied from each source.
CHECKPOINTS = "dbfleet_copy_checkpoint"

Model = type[models.Model]


@dataclass
class ModelCopy:
    """One model's copy: where from, how, and how far."""

    model: str
    source: str
    target: str
    #: Rows the source had when the copy began (those before a resumed copy's checkpoint too).
    total: int = 0
    #: Rows this run wrote.
    rows: int = 0
    #: Rows copied before this run (a resumed copy), after the key ``resumed_after``.
    before: int = 0
    resumed_after: str | None = None
    #: How the rows went: "binary COPY", or "rows" (read through the ORM, bulk-written).
    method: str = ""
    seconds: float = 0.0


@dataclass
class CopyReport:
    target: str
    models: list[ModelCopy] = field(default_factory=list)
    #: Tables whose sequence or auto-increment counter was set past the copied ids.
    sequences: list[str] = field(default_factory=list)


Progress = Callable[[ModelCopy], None]


def _no_progress(copy: ModelCopy) -> None:
    pass


def chosen(labels: Sequence[str], *, by_key: bool = True) -> list[Model]:
    """The models ``labels`` name (``app_label`` or ``app_label.ModelName``), with their
    auto-created many-to-many tables; CommandError for a name that is not one.

    ``by_key``: for a copy or a comparison a key at a time, which refuses models with a
    composite primary key (fixtures take them).
    """
    found: dict[Model, None] = {}
    for label in labels:
        try:
            named = (
                [apps.get_model(label)]
                if "." in label
                else list(apps.get_app_config(label).get_models())
            )
        except (LookupError, ValueError):
            raise CommandError(
                f"{label!r} is neither an installed app nor a model (app_label.ModelName)."
            ) from None
        for model in named:
            meta = model._meta
            if meta.proxy or not meta.managed or meta.swapped:
                if "." in label:
                    raise CommandError(
                        f"{meta.label} has no table of its own (proxy, unmanaged or "
                        "swapped): name the model that has it."
                    )
                continue
            if by_key and meta.pk.__class__.__name__ == "CompositePrimaryKey":
                raise CommandError(
                    f"{meta.label} has a composite primary key: fleet copy and fleet verify "
                    "work a key at a time, and do not move it."
                )
            found[model] = None
            for many in meta.local_many_to_many:
                through: Any = many.remote_field.through
                if through._meta.auto_created:
                    found[through] = None
    return list(found)


def relations(model: Model) -> list[tuple[models.Field[Any, Any], Model]]:
    """``model``'s foreign keys (one-to-one included) and the models they point to."""
    return [
        (field, field.related_model)
        for field in model._meta.local_concrete_fields
        if field.is_relation and isinstance(field.related_model, type)
    ]


def written_fields(model: Model) -> list[models.Field[Any, Any]]:
    """The columns of ``model``'s own table that a copy writes: all but generated ones
    (the target computes those)."""
    return [
        field
        for field in model._meta.local_concrete_fields
        if not getattr(field, "generated", False)
    ]


def in_dependency_order(chosen: Sequence[Model]) -> list[Model]:
    """``chosen``, each after the models its foreign keys point to (cycles: as given)."""
    among, ordered, done = set(chosen), list[Model](), set[Model]()

    def visit(model: Model, path: frozenset[Model]) -> None:
        if model in done or model in path:
            return
        for _, related in relations(model):
            if related in among and related is not model:
                visit(related, path | {model})
        done.add(model)
        ordered.append(model)

    for model in chosen:
        visit(model, frozenset())
    return ordered


def _refusals(
    chosen: Sequence[Model],
    sources: dict[Model, str],
    to: str,
    tables: set[str],
    missing_ok: bool = False,
) -> list[str]:
    """What stops the copy before it writes anything, one line each (``tables``: the
    target's)."""
    problems = []
    target = connections[to]
    if not target.features.supports_transactions:
        problems.append(
            f"{to!r} has no transactions, and fleet copy commits each batch with its "
            "checkpoint: copy to ClickHouse with a synced model (fleet sync) instead."
        )
        return problems
    topology = get_topology()
    for model in chosen:
        label, source = model._meta.label, sources[model]
        if topology.shard_group_for(model) is not None:
            problems.append(
                f"{label} is in a shard group: its rows are on every database of the "
                "group, which fleet copy does not move."
            )
        if source == to:
            problems.append(f"{label}: its source is {to!r} already; name another with --from.")
        if model._meta.db_table not in tables and not missing_ok:
            problems.append(
                f"{label}: its table {model._meta.db_table!r} is missing on {to!r}. Route it "
                f"there, then `manage.py fleet status` gives the commands that create it."
            )
        for relation, related in relations(model):
            if related in sources or not getattr(relation, "db_constraint", True):
                continue
            where = router.db_for_write(related)
            if where != to:
                problems.append(
                    f"{label}.{relation.name} refers to {related._meta.label}, which is on "
                    f"{where!r} and not copied: copy it too, or make the relation soft "
                    "(db_constraint=False)."
                )
    return problems


def _reachable(model: Model, among: set[Model]) -> set[Model]:
    """The models of ``among`` that ``model``'s enforced foreign keys lead to, step by step."""
    found: set[Model] = set()
    todo = [model]
    while todo:
        for relation, related in relations(todo.pop()):
            if (
                related in among
                and related not in found
                and getattr(relation, "db_constraint", True)
            ):
                found.add(related)
                todo.append(related)
    return found


def _refuse_orphans(chosen: Sequence[Model], to: str) -> None:
    """--replace deletes the target's rows: refuse if other tables there point to them."""
    tables = set(connections[to].introspection.table_names())
    pointing = []
    for model in apps.get_models(include_auto_created=True):
        if model in chosen or model._meta.db_table not in tables:
            continue
        for relation, related in relations(model):
            enforced = related in chosen and getattr(relation, "db_constraint", True)
            rows = model._base_manager.using(to).exclude(**{f"{relation.attname}__isnull": True})
            if enforced and rows.exists():
                pointing.append(f"{model._meta.label}.{relation.name} -> {related._meta.label}")
    if pointing:
        raise CommandError(
            f"Nothing was copied: --replace would delete rows on {to!r} that other rows there "
            f"point to ({', '.join(pointing)}). Copy those models too, or empty them first."
        )


def ensure_checkpoints(alias: str) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {CHECKPOINTS} (model VARCHAR(200) NOT NULL, "
            "source VARCHAR(200) NOT NULL, last_key VARCHAR(200) NOT NULL, "
            "copied BIGINT NOT NULL, PRIMARY KEY (model, source))"
        )


def read_checkpoint(alias: str, model: Model, source: str) -> tuple[str, int] | None:
    """(the last key copied, as text; rows copied) of ``model`` from ``source``, if any."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"SELECT last_key, copied FROM {CHECKPOINTS} WHERE model = %s AND source = %s",
            [model._meta.label, source],
        )
        row = cursor.fetchone()
    return None if row is None else (str(row[0]), int(row[1]))


def _save_checkpoint(alias: str, model: Model, source: str, key: Any, copied: int) -> None:
    with connections[alias].cursor() as cursor:
        params: list[Any] = [str(key), copied, model._meta.label, source]
        cursor.execute(
            f"UPDATE {CHECKPOINTS} SET last_key = %s, copied = %s WHERE model = %s AND source = %s",
            params,
        )
        if cursor.rowcount == 0:
            cursor.execute(
                f"INSERT INTO {CHECKPOINTS} (last_key, copied, model, source) "
                "VALUES (%s, %s, %s, %s)",
                params,
            )


def forget_checkpoint(alias: str, model: Model, source: str) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {CHECKPOINTS} WHERE model = %s AND source = %s",
            [model._meta.label, source],
        )


def copy_models(
    labels: Sequence[str],
    to: str,
    source: str | None = None,
    *,
    resume: bool = False,
    replace: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress = _no_progress,
) -> CopyReport:
    """Copy the models ``labels`` name to ``to``, each from ``source`` or where it is routed.

    Refused (CommandError, before anything is written): a model the target cannot
    hold or whose foreign keys would point into another database; a target that
    has rows already, unless ``resume`` (go on after the checkpoint of an earlier
    copy) or ``replace`` (delete them first).
    """
    if batch_size < 1:
        raise CommandError("--batch-size must be at least 1.")
    ordered, sources = planned(labels, to, source, resume=resume, replace=replace)
    report = copy_planned(
        ordered, sources, to, resume=resume, replace=replace, batch_size=batch_size,
        progress=progress,
    )  # fmt: skip
    check_copied(ordered, to, report)
    return report


def planned(
    labels: Sequence[str],
    to: str,
    source: str | None,
    *,
    resume: bool,
    replace: bool,
    create: Callable[[Sequence[Model]], None] | None = None,
) -> tuple[list[Model], dict[Model, str]]:
    """(the models to copy in dependency order, where each is read) after the checks of
    :func:`copy_models`, which raise CommandError before anything is written.

    ``create``: called with the models whose table the target lacks, once every other
    check passed, to make them (``fleet move``); else a missing table is refused.
    """
    if resume and replace:
        raise CommandError("--resume goes on with the rows there, --replace deletes them: one.")
    picked = chosen(labels)
    sources = {model: source or router.db_for_write(model) for model in picked}
    tables = set(connections[to].introspection.table_names())
    missing = [model for model in picked if model._meta.db_table not in tables]
    if problems := _refusals(picked, sources, to, tables, missing_ok=create is not None):
        raise CommandError("Nothing was copied:\n  " + "\n  ".join(problems))
    ordered = in_dependency_order(picked)
    if create is not None and missing:
        create(missing)
    ensure_checkpoints(to)
    occupied, unknown, emptied = [], [], []
    for model in ordered:
        if replace:
            continue
        label, there = model._meta.label, model._base_manager.using(to)
        checkpoint = read_checkpoint(to, model, sources[model])
        if there.exists():
            if not resume:
                occupied.append(f"{label} ({there.count():,} rows)")
            elif checkpoint is None:
                unknown.append(label)
        elif resume and checkpoint is not None and checkpoint[1]:
            emptied.append(label)
    if emptied:
        raise CommandError(
            f"Nothing was copied: an earlier copy of {', '.join(emptied)} to {to!r} committed "
            "rows that are no longer there, so --resume would skip them. Run it without "
            "--resume: it copies everything again."
        )
    if occupied and create is not None:
        raise CommandError(
            f"Nothing was copied: {to!r} has rows of {', '.join(occupied)} already, and "
            "fleet move copies only into empty tables. `manage.py fleet verify "
            f"{' '.join(m._meta.label for m in picked if not m._meta.auto_created)} "
            f"--between {source} {to}` names the "
            "rows on one side only or different: settle them by hand (stop writes first)."
        )
    if occupied:
        raise CommandError(
            f"Nothing was copied: {to!r} has rows of {', '.join(occupied)} already. "
            "--resume goes on after the last key an earlier fleet copy committed; "
            "--replace deletes them first."
        )
    if unknown:
        raise CommandError(
            f"Nothing was copied: the rows of {', '.join(unknown)} on {to!r} were not "
            "copied there by fleet copy from this source (it has no checkpoint), so "
            "--resume cannot know where to go on; --replace deletes them first."
        )
    if replace:
        _refuse_orphans(ordered, to)
    return ordered, sources


def copy_planned(
    ordered: Sequence[Model],
    sources: dict[Model, str],
    to: str,
    *,
    resume: bool,
    replace: bool,
    batch_size: int,
    progress: Progress,
) -> CopyReport:
    """Copy the rows of ``ordered`` (as :func:`planned` gives them), without the final checks."""
    target = connections[to]
    report = CopyReport(to)
    # Off for the session where the engine allows it (MariaDB/MySQL, SQLite), checked at the
    # end; PostgreSQL checks each transaction's rows at its commit.
    disabled = target.disable_constraint_checking()
    among = set(ordered)
    cycle = any(
        other is not model and model in _reachable(other, among)
        for model in ordered
        for other in _reachable(model, among)
    )
    try:
        with transaction.atomic(using=to):
            for model in reversed(ordered):
                if replace:
                    model._base_manager.using(to).all()._raw_delete(to)
                # Not resumed: a checkpoint left by an earlier copy is not this one's.
                if replace or not resume:
                    forget_checkpoint(to, model, sources[model])
        # Where each transaction must hold what its rows point to (PostgreSQL), models whose
        # rows may point to rows of a later batch (their own, or round a cycle of models)
        # are copied in one transaction: all of them, if there is a cycle.
        with transaction.atomic(using=to) if cycle and not disabled else contextlib.nullcontext():
            for model in ordered:
                whole = not disabled and model in _reachable(model, {model})
                report.models.append(
                    _copy_model(model, sources[model], to, batch_size, progress, whole)
                )
    finally:
        if disabled:
            target.enable_constraint_checking()
    return report


def check_copied(ordered: Sequence[Model], to: str, report: CopyReport) -> None:
    """Check the copied tables' foreign keys on ``to``; set its sequences past the ids."""
    target = connections[to]
    with transaction.atomic(using=to):
        try:
            target.check_constraints(table_names=[model._meta.db_table for model in ordered])
        except DatabaseError as error:
            raise CommandError(
                f"The rows are copied to {to!r} (each batch committed), but some point to "
                f"rows that are not there: {error}. Copy the models they point to as well "
                "(in the same fleet copy), or delete those rows."
            ) from error
    report.sequences += reset_sequences(ordered, to)


def reset_sequences(models: Sequence[Model], to: str) -> list[str]:
    """Set the sequences of ``models`` on ``to`` past their ids; the tables whose were set
    (only where the engine counts apart from the rows: PostgreSQL's sequences)."""
    target, tables = connections[to], []
    with target.cursor() as cursor:
        for model in models:
            for sql in (statements := target.ops.sequence_reset_sql(no_style(), [model])):
                cursor.execute(sql)
            if statements:
                tables.append(model._meta.db_table)
    return tables


def _copy_model(
    model: Model, source: str, to: str, batch_size: int, progress: Progress, whole: bool
) -> ModelCopy:
    """Copy ``model`` a batch at a time; ``whole``: every batch in one transaction."""
    with transaction.atomic(using=to) if whole else contextlib.nullcontext():
        return _copy_batches(model, source, to, batch_size, progress)


def _copy_batches(
    model: Model, source: str, to: str, batch_size: int, progress: Progress
) -> ModelCopy:
    started = time.perf_counter()
    meta = model._meta
    fields = written_fields(model)
    attnames = [field.attname for field in fields]
    columns = [str(field.column) for field in fields]
    everything = model._base_manager.using(source).order_by("pk")
    result = ModelCopy(meta.label, source, to, total=everything.count())
    checkpoint = read_checkpoint(to, model, source)
    last: Any = None
    if checkpoint is not None:
        result.resumed_after, result.before = checkpoint
        last = meta.pk.to_python(checkpoint[0])
    progress(result)
    reading, target = connections[source], connections[to]
    vendor = vendors.of(reading)
    binary: bool | None = None  # Asked with the first batch's statement.
    while True:
        after = everything if last is None else everything.filter(pk__gt=last)
        bound = list(after.values_list("pk", flat=True)[batch_size - 1 : batch_size])
        high = bound[0] if bound else after.aggregate(high=Max("pk"))["high"]
        if high is None:
            break
        rows = after.filter(pk__lte=high).values_list(*attnames)
        sql, params = rows.query.get_compiler(source).as_sql()
        if binary is None:
            binary = vendor.copies_as_is(reading, sql, params, target, meta.db_table, columns)
        with transaction.atomic(using=to):
            if binary:
                written = vendor.copy_rows(reading, sql, params, target, meta.db_table, columns)
            else:
                prepared = [
                    [
                        field.get_db_prep_save(value, connection=target)
                        for field, value in zip(fields, row, strict=True)
                    ]
                    for row in rows
                ]
                vendors.of(target).write_rows(target, meta.db_table, columns, prepared)
                written = len(prepared)
            result.rows += written
            _save_checkpoint(to, model, source, high, result.before + result.rows)
        last = high
        progress(result)
        if not bound:
            break
    result.method = "binary COPY" if binary else "rows"
    result.seconds = time.perf_counter() - started
    return result
