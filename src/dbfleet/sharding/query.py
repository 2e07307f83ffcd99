# django-stubs leaves out the private QuerySet API this module extends (_chain,
# _fields, _prefetch_related_lookups, ...): attributes are not checked here.
# mypy: disable-error-code="attr-defined"
"""The sharded queryset: it reads its shard key from the WHERE clause, or fans out and merges.

Django's routers never see filter values, so a ``ShardedQuerySet`` routes
itself when it is evaluated: ``exact`` and ``in`` lookups on the key, AND-ed
with anything else (or OR-ed with other key lookups), name the databases;
``using()``, ``on_shard()`` and ``for_key()`` pin one. A query without a key runs
on every database of the group and the answers are merged exactly, or the
query is refused with :class:`~dbfleet.CrossShardError` saying what to add.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import heapq
import itertools
import operator
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from decimal import Decimal
from functools import total_ordering
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.apps import apps
from django.core.exceptions import EmptyResultSet, FieldDoesNotExist, FieldError
from django.db import connections, models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Avg, Count, F, Func, Max, Min, Sum, signals
from django.db.models.expressions import Col, Ref
from django.db.models.fields.reverse_related import ForeignObjectRel
from django.db.models.functions import Coalesce
from django.db.models.lookups import Exact, In, Lookup
from django.db.models.query import (
    MAX_GET_RESULTS,
    FlatValuesListIterable,
    RawQuerySet,
    ValuesIterable,
    ValuesListIterable,
    prefetch_related_objects,
)
from django.db.models.sql.datastructures import Join
from django.db.models.sql.query import Query
from django.db.models.sql.where import AND, OR, ExtraWhere, WhereNode

from dbfleet import vendors
from dbfleet.conf import clears_on_reset, get_topology
from dbfleet.exceptions import CrossShardError, ShardKeyRequired
from dbfleet.sharding.ids import assign
from dbfleet.sharding.slots import (
    KEY_SEEN,
    ShardKey,
    database_of,
    refuse_key_change,
    shard_key,
    unallocated,
)
from dbfleet.topology import ShardGroup
from dbfleet.transactions import atomic
from dbfleet.values import compared_field

M = TypeVar("M", bound=models.Model)
#: The querysets being evaluated on a database they chose, in this thread or task.
_RUNNING_ON: contextvars.ContextVar[tuple[tuple[Any, str], ...]] = contextvars.ContextVar(
    "dbfleet_running_on", default=()
)
T = TypeVar("T")
#: At most this many databases are queried at once by one fan-out.
FAN_OUT_THREADS = 8
MERGEABLE = (Count, Sum, Min, Max, Avg)
#: The fan-out threads' names start so; one that fans out again does it itself, in order.
POOL_NAME = "dbfleet-fan-out"
_KEY_LOOKUPS = (Exact, In)


def _key_databases(node: Any, key: ShardKey, alias: str) -> set[str] | None:
    """The databases that can hold rows matching ``node``; None: any of them."""
    if isinstance(node, WhereNode):
        if node.negated:
            return None
        if node.connector == AND:
            found: set[str] | None = None
            for child in node.children:
                databases = _key_databases(child, key, alias)
                if databases is not None:
                    found = databases if found is None else found & databases
            return found
        if node.connector != OR:
            return None
        union: set[str] = set()
        for child in node.children:
            databases = _key_databases(child, key, alias)
            if databases is None:
                return None
            union |= databases
        return union
    if not isinstance(node, _KEY_LOOKUPS):
        return None
    lhs, rhs = node.lhs, node.rhs
    if not isinstance(lhs, Col) or lhs.alias != alias or lhs.target.column != key.field.column:
        return None
    if hasattr(rhs, "resolve_expression"):
        return None  # A subquery (key__in=<queryset>): only the database knows.
    if isinstance(node, Exact):
        return {_database(key, rhs)}  # Never None: Django makes that an IsNull lookup.
    if any(hasattr(value, "resolve_expression") for value in rhs):
        return None  # A subquery or an expression: only the database knows.
    return {_database(key, value) for value in rhs if value is not None}


_DATABASES: dict[tuple[int, type, Any], str] = {}
clears_on_reset(_DATABASES.clear)


def _database(key: ShardKey, value: Any) -> str:
    """``key.database(value)``, remembered: the same keys come back again and again."""
    # Keyed by the ShardKey's id (each lives as long as the settings, as this does) and
    # the value's type: 1 and "1" may be different keys.
    found = (id(key), type(value), value)
    try:
        return _DATABASES[found]
    except (KeyError, TypeError):  # TypeError: an unhashable value.
        pass
    database = key.database(value)
    if len(_DATABASES) >= 65536:
        _DATABASES.clear()
    with contextlib.suppress(TypeError):
        _DATABASES[found] = database
    return database


_GROUPS: dict[Any, ShardGroup] = {}
clears_on_reset(_GROUPS.clear)
_ROUTING_KEYS: dict[Any, list[ShardKey]] = {}
clears_on_reset(_ROUTING_KEYS.clear)


def _routing_keys(model: Any) -> list[ShardKey]:
    """The columns whose values name a row's database: the key, and an id that carries its slot."""
    try:
        return _ROUTING_KEYS[model]
    except KeyError:
        pass
    key = shard_key(model)
    pk = model._meta.pk
    if key is None:
        found = []
    elif key.field is pk or not getattr(pk, "carries_slot", False):
        found = [key]
    else:
        found = [key, ShardKey(key.group, pk, pk, carries_slot=True)]
    _ROUTING_KEYS[model] = found
    return found


def _is_key_in(child: Any, key: ShardKey, alias: str) -> bool:
    """Whether ``child`` is ``key IN (<values>)`` on the query's own table."""
    return (
        isinstance(child, In)
        and isinstance(child.lhs, Col)
        and child.lhs.alias == alias
        and child.lhs.target.column == key.field.column
        and not hasattr(child.rhs, "resolve_expression")
    )


def _has_key_in(node: WhereNode, key: ShardKey, alias: str) -> bool:
    """Whether :func:`_split_in` would narrow anything in ``node``."""
    return (
        not node.negated
        and node.connector == AND
        and any(_is_key_in(child, key, alias) for child in node.children)
    )


def _split_in(node: WhereNode, key: ShardKey, alias: str, database: str) -> WhereNode:
    """``node`` with each top-level ``key IN (...)`` narrowed to the values ``database`` holds."""
    clone = node.clone()
    if not _has_key_in(node, key, alias):
        return clone
    children: list[Any] = clone.children
    for index, child in enumerate(children):
        if _is_key_in(child, key, alias):
            mine = [value for value in child.rhs if key.database(value) == database]
            children[index] = In(child.lhs, mine)
    return clone


_LOCAL_TABLES: dict[tuple[str, bool], frozenset[str]] = {}
clears_on_reset(_LOCAL_TABLES.clear)


def _local_tables(group: ShardGroup, reference_only: bool) -> frozenset[str]:
    """The tables a query of the group can join on a shard: co-located, or copied to each.

    A reference model's rows are whole on every database, but a sharded model's
    are not: a reference query joins reference tables only.
    """
    try:
        return _LOCAL_TABLES[group.name, reference_only]
    except KeyError:
        pass
    labels = set(group.reference) if reference_only else {*group.keys, *group.reference}
    tables = set()
    for model in apps.get_models(include_auto_created=True):
        meta = model._meta
        ends: list[Any] = [field.related_model for field in meta.local_fields if field.is_relation]
        if meta.label_lower in labels or (
            meta.auto_created and all(end._meta.label_lower in labels for end in ends)
        ):
            tables.add(meta.db_table)
    found = _LOCAL_TABLES[group.name, reference_only] = frozenset(tables)
    return found


def _selected_related(meta: Any, select_related: Any, depth: int) -> Iterator[Any]:
    """The relations ``select_related`` follows (``True``: every non-null foreign key)."""
    if select_related is True:
        if depth <= 0:
            return
        for field in meta.concrete_fields:
            if field.is_relation and not field.null:
                yield field
                yield from _selected_related(field.related_model._meta, True, depth - 1)
        return
    for name, more in (select_related or {}).items():
        field = meta.get_field(name)
        yield field
        yield from _selected_related(field.related_model._meta, more, depth)


def co_located(relation: Any, group: ShardGroup) -> bool:
    """Whether the rows a relation joins are on the shard of the rows it joins them to.

    A reference model is whole on every shard. Two sharded models are co-located
    through a foreign key that is the key of the one and points at the key of the
    other (``Order.customer`` to ``Customer.id``, the customers' key).
    """
    field = relation.field if isinstance(relation, ForeignObjectRel) else relation
    ends = (field.model, field.related_model)
    if any(model._meta.label_lower in group.reference for model in ends):
        return True
    mine, theirs = shard_key(ends[0]), shard_key(ends[1])
    return (
        mine is not None
        and theirs is not None
        and mine.field is field
        and theirs.field.column == field.target_field.column
    )


def _subqueries(node: Any, found: list[Any] | None = None) -> list[Any]:
    """The inner queries of a WHERE clause or an expression (``__in=<queryset>``, Exists)."""
    found = [] if found is None else found
    if isinstance(node, WhereNode):
        for child in node.children:
            _subqueries(child, found)
    elif isinstance(node, Query):
        found.append(node)
    elif isinstance(inner := getattr(node, "query", None), Query):
        found.append(inner)
    elif isinstance(node, Lookup):
        if not isinstance(node.lhs, Col):
            _subqueries(node.lhs, found)
        if hasattr(node.rhs, "resolve_expression"):  # Not a plain value: an expression.
            _subqueries(node.rhs, found)
    elif hasattr(node, "get_source_expressions"):
        for expression in node.get_source_expressions():
            _subqueries(expression, found)
    return found


def _has_extra_where(node: Any) -> bool:
    if isinstance(node, ExtraWhere):
        return True
    return isinstance(node, WhereNode) and any(_has_extra_where(c) for c in node.children)


class _RunningOn:
    """The context of :meth:`ShardedQuerySet._running_on` (a class: it is on every read's path)."""

    __slots__ = ("entry", "token")

    def __init__(self, queryset: Any, alias: str) -> None:
        self.entry = (queryset, alias)

    def __enter__(self) -> None:
        self.token = _RUNNING_ON.set((*_RUNNING_ON.get(), self.entry))

    def __exit__(self, *exc_info: object) -> None:
        _RUNNING_ON.reset(self.token)


@dataclass(frozen=True)
class _Merge:
    """How a fan-out's rows are merged: their shape, their names, the text sort keys."""

    #: From the rows each shard returns to the rows asked for (None: model instances).
    shape: Callable[[Any], Any] | None
    #: The names of the values each shard returns (None: model instances).
    names: list[str] | None
    #: Text ordered by -> the annotation holding its sort key.
    sort_keys: dict[str, str]
    #: Whether each row ends with the alias of its database (to build instances from).
    tagged: bool = False

    def tag(self, targets: Sequence[str], results: Iterable[Iterable[Any]]) -> list[Any]:
        """Each database's rows, tagged with its alias if the merge wants them so."""
        if not self.tagged:
            return list(results)
        return [_tagged(rows, alias) for alias, rows in zip(targets, results, strict=True)]


def _tagged(rows: Iterable[tuple[Any, ...]], alias: str) -> Iterator[tuple[Any, ...]]:
    return ((*row, alias) for row in rows)


@total_ordering
class _SortValue:
    """One ORDER BY value, compared as the database compares it (direction and NULLs)."""

    __slots__ = ("descending", "nulls_first", "value")

    def __init__(self, value: Any, descending: bool, nulls_first: bool) -> None:
        self.value = value
        self.descending = descending
        self.nulls_first = nulls_first

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SortValue) and self.value == other.value

    def __lt__(self, other: _SortValue) -> bool:
        if self.value is None or other.value is None:
            if self.value is None and other.value is None:
                return False
            # NULLs first in ascending order means: a NULL is smaller than any value.
            return (self.value is None) == (self.nulls_first != self.descending)
        less: bool = self.value > other.value if self.descending else self.value < other.value
        return less

    __hash__ = None  # type: ignore[assignment]


class ShardedQuerySet(models.QuerySet[M]):
    """A queryset over a sharded or reference model: one shard when the key says so, else all."""

    # --- Where a query runs -------------------------------------------------------------------

    def _group(self) -> ShardGroup:
        try:
            return _GROUPS[self.model]
        except KeyError:
            pass
        group = get_topology().shard_group_for(self.model)
        if group is not None:
            _GROUPS[self.model] = group
        else:
            raise CrossShardError(
                f"{self.model._meta.label} uses ShardedManager but is in no shard group: list "
                'it in DBFLEET["SHARDS"], or give it a plain manager.'
            )
        return group

    def _pinned(self) -> str | None:
        pinned: str | None = self._db
        return pinned

    @property
    def db(self) -> str:
        """The database this query runs on: pinned, or the one it routes to.

        While it is being evaluated on a database it chose itself, that one. A
        query over several shards has no one database: this is the first of them.
        """
        for queryset, alias in _RUNNING_ON.get():
            if queryset is self:
                return alias
        if self._db is None and not self._for_write:
            return self._targets()[0]
        return super().db

    def _running_on(self, alias: str) -> _RunningOn:
        """Let Django evaluate this very queryset on ``alias``, without a clone.

        Only in this thread or task, and only for the evaluation itself: a
        queryset derived from it afterwards routes itself again.
        """
        return _RunningOn(self, alias)

    def _check_joins(self, group: ShardGroup) -> None:
        """Refuse a join or a subquery that a shard cannot answer on its own."""
        query = self.query
        for inner in _subqueries(query.where):
            if inner.model._meta.label_lower not in group.reference:
                raise CrossShardError(
                    f"{self.model._meta.label}: a subquery on {inner.model._meta.label} would "
                    f"run on each shard apart, against that shard's rows only (or none): "
                    "evaluate it first (list(...)) and filter on the list, or query a "
                    "reference model."
                )
        # A join Django trimmed (``customer=7`` reads customer_id) stays, unreferenced.
        joins = [
            join
            for alias, join in query.alias_map.items()
            if isinstance(join, Join) and query.alias_refcount[alias]
        ]
        if not query.select_related and not joins:
            return  # Its own table only.
        key = shard_key(self.model)
        local = _local_tables(group, reference_only=key is None)
        relations = [
            *_selected_related(self.model._meta, query.select_related, query.max_depth),
            *(join.join_field for join in joins),
        ]
        apart = [
            relation
            for relation in relations
            if key is not None
            and relation.related_model._meta.db_table in local
            and not co_located(relation, group)
        ]
        if apart:
            relation = apart[0]
            raise CrossShardError(
                f"{self.model._meta.label}: this query joins {relation.related_model._meta.label}"
                f" through {relation.name!r}, which is not a shard key: the related rows may "
                "be on another shard. Query the other model apart, or make it a reference model."
            )
        joined = [
            field.related_model._meta.db_table
            for field in _selected_related(self.model._meta, query.select_related, query.max_depth)
        ]
        joined += [join.table_name for join in joins]
        joined = [table for table in joined if table not in local]
        if not joined:
            return
        tables = {model._meta.db_table: model._meta.label for model in apps.get_models()}
        joined = [tables.get(name, name) for name in joined]
        if key is None:
            why = "it is a reference model, whose queries can join other reference models only"
        else:
            why = (
                f"only models of shard group {group.name!r} (co-located by their key) and its "
                "reference models are on each shard"
            )
        raise CrossShardError(
            f"{self.model._meta.label}: this query joins {', '.join(dict.fromkeys(joined))}, "
            f"which the shard it runs on does not hold whole: {why}. Query the other model "
            "apart (its own manager routes it), or add it to the group."
        )

    def _targets(self) -> list[str]:
        """The databases this query must run on, in the group's order."""
        group = self._group()
        self._check_joins(group)
        pinned = self._pinned()
        if pinned is not None:
            return [pinned]
        keys = _routing_keys(self.model)
        if not keys:  # A reference model: every database has every row.
            return [group.databases[0]]
        alias = self.query.base_table  # Never None here: the model's own table is in it.
        known = [
            found
            for key in keys
            if (found := _key_databases(self.query.where, key, alias)) is not None
        ]
        if not known:
            return list(group.databases)
        found = known[0] if len(known) == 1 else set.intersection(*known)
        if len(found) == 1:
            return list(found)
        # No value at all (``key__in=[]``) matches nothing: any one database says so.
        return [alias for alias in group.databases if alias in found] or [group.databases[0]]

    def _on(self, alias: str) -> ShardedQuerySet[M]:
        """This query, pinned to ``alias`` (with any key ``IN`` list narrowed to its values)."""
        clone: ShardedQuerySet[M] = self._chain()
        clone._db = alias
        if self._pinned() is None:
            for key in _routing_keys(self.model):
                clone.query.where = _split_in(
                    clone.query.where, key, clone.query.get_initial_alias(), alias
                )
        return clone

    def on_shard(self, alias: str) -> ShardedQuerySet[M]:
        """This query on the database ``alias`` of the model's shard group only."""
        group = self._group()
        if alias not in group.databases:
            raise ValueError(
                f"{alias!r} is not a database of shard group {group.name!r}: use one of "
                f"{', '.join(map(repr, group.databases))}."
            )
        return self.using(alias)

    def for_key(self, key: object) -> ShardedQuerySet[M]:
        """This query on the database that holds the rows of shard key value ``key``."""
        found = shard_key(self.model)
        if found is None:
            raise TypeError(f"{self.model._meta.label} is not sharded by a key.")
        clone: ShardedQuerySet[M] = self.using(found.database(key))
        return clone

    def _each(self, work: Callable[[ShardedQuerySet[M]], T], targets: Sequence[str]) -> list[T]:
        """``work`` on this query pinned to each target (see :func:`_on_each`)."""
        clones = {alias: self._on(alias) for alias in targets}
        return _on_each(lambda alias: work(clones[alias]), targets)

    def _narrowed(self) -> bool:
        """Whether a fan-out sends each shard its own SQL: a key ``IN`` list split per shard."""
        if self._pinned() is not None:
            return False
        alias = self.query.base_table
        return any(_has_key_in(self.query.where, key, alias) for key in _routing_keys(self.model))

    def _rows_each(self, targets: Sequence[str]) -> list[Iterable[tuple[Any, ...]]]:
        """The rows of this ``values_list()`` query on each target, converted as Django does.

        The SQL is compiled in the calling thread, once (a group is one engine)
        unless a key ``IN`` list is split per shard. Where the engine's driver
        can, every statement is sent before any answer is read, on this thread's
        connections; else each runs on a fan-out thread.
        """
        if self._narrowed():
            compiled = {alias: _compiled(self._on(alias), alias) for alias in targets}
        else:
            compiled = dict.fromkeys(targets, _compiled(self, targets[0]))
        statements = {alias: (sql, params) for alias, (_, sql, params) in compiled.items() if sql}
        answers = vendors.of(connections[targets[0]]).run_at_once(
            [(connections[alias], sql, params) for alias, (sql, params) in statements.items()]
        )
        if answers is None:

            def run(alias: str) -> list[tuple[Any, ...]]:
                sql, params = statements[alias]
                with connections[alias].cursor() as cursor:
                    cursor.execute(sql, params)
                    rows: list[tuple[Any, ...]] = cursor.fetchall()
                return rows

            answers = _on_each(run, list(statements))
        found = dict(zip(statements, answers, strict=True))
        results = []
        for alias, (compiler, _, _) in compiled.items():
            rows = found.get(alias, [])
            if compiler.has_extra_select:
                rows = [row[: compiler.col_count] for row in rows]
            results.append(compiler.results_iter(results=[rows], tuple_expected=True))
        return results

    # --- Reads ----------------------------------------------------------------------------------

    def _order_terms(self) -> list[tuple[str, bool]]:
        """(field name, descending) for each ORDER BY term; refused if not mergeable."""
        query = self.query
        terms = list(query.order_by) or (
            list(self.model._meta.ordering or ()) if query.default_ordering else []
        )
        found = []
        for term in terms:
            if not isinstance(term, str) or term == "?" or "__" in term:
                raise CrossShardError(
                    f"{self.model._meta.label}: a query over several shards can be ordered "
                    f"by its own fields only, not {term!r}. Filter on the shard key, or "
                    "use for_key() or on_shard()."
                )
            name = term.lstrip("-+")
            if name in query.annotations and name not in query.annotation_select:
                raise CrossShardError(
                    f"{self.model._meta.label}: a query over several shards is merged by what it "
                    f"is ordered by, and {name!r} is an alias() it does not select: use "
                    "annotate() instead."
                )
            if name not in query.annotations and name != "pk":
                field = self.model._meta.get_field(name)
                if field.is_relation and field.related_model._meta.ordering:  # type: ignore[union-attr]
                    raise CrossShardError(
                        f"{self.model._meta.label}: order_by({name!r}) sorts by "
                        f"{field.related_model._meta.label}'s Meta.ordering, which a merge of "  # type: ignore[union-attr]
                        f"several shards cannot read: order by {name + '_id'!r} or by its fields."
                    )
            # reverse() (and so last()) flips every term.
            found.append((name, term.startswith("-") != (not query.standard_ordering)))
        return found

    def _ordering(
        self, names: list[str] | None, sort_keys: dict[str, str]
    ) -> list[tuple[Callable[[Any], Any], bool]]:
        """(value of a row, descending) per ORDER BY term; rows are tuples of ``names``."""
        ordering: list[tuple[Callable[[Any], Any], bool]] = []
        for name, descending in self._order_terms():
            if name in sort_keys:
                name = sort_keys[name]  # Text: the bytes its collation sorts by.
            elif name == "pk":
                name = self.model._meta.pk.attname if names is None or "pk" not in names else "pk"
            elif name not in self.query.annotations and (names is None or name not in names):
                name = getattr(self.model._meta.get_field(name), "attname", name)
            if names is None:
                ordering.append((operator.attrgetter(name), descending))
            else:
                ordering.append((operator.itemgetter(names.index(name)), descending))
        return ordering

    def _text_sort_keys(self, alias: str) -> dict[str, str]:
        """Text the query is ordered by -> the annotation with its engine's sort key, if any.

        The merge compares values in Python: exact for numbers and dates, and for
        text where the engine compares code points; else by the engine's own sort
        key (MariaDB's WEIGHT_STRING), or refused.
        """
        connection = connections[alias]
        vendor = vendors.of(connection)
        found = {}
        for name, _ in self._order_terms():
            field = self._text_field(name)
            if field is None:
                continue
            if vendor.text_sort_key is not None:
                found[name] = f"_dbfleet_sort_{name}"
            elif not vendor.sorts_text_by_code_point(connection, field.db_collation):
                raise CrossShardError(
                    f"{self.model._meta.label}: a query over several shards is ordered by the "
                    f"text field {name!r}, whose collation on {alias!r} does not compare code "
                    "points, so the shards' rows cannot be merged in its order. Order by "
                    "another field, give the field db_collation='C', or filter on the key."
                )
        return found

    def _text_field(self, name: str) -> models.Field[Any, Any] | None:
        """The text field ``name`` (a field, ``pk``, a foreign key or an annotation) compares as.

        None when it is not text: a foreign key compares as the field it points to.
        """
        field: Any
        if name in self.query.annotations:
            try:
                field = self.query.annotations[name].output_field
            except FieldError:  # Of mixed types: not one the merge may compare as text.
                return None
        else:
            try:
                field = self.model._meta.pk if name == "pk" else self.model._meta.get_field(name)
            except FieldDoesNotExist:
                return None
        field = compared_field(field)
        return field if isinstance(field, models.CharField | models.TextField) else None

    def _per_shard(
        self, alias: str, streaming: bool = False
    ) -> tuple[ShardedQuerySet[Any], _Merge]:
        """This query as each shard runs it in a fan-out, and how to merge its rows.

        Each shard returns the first ``high_mark`` rows. A values() query selects
        what it is ordered by too (as one database would order by it), as tuples;
        the merge puts the rows back in the shape asked for.
        """
        clone = self._chain()
        if clone.query.is_sliced:
            high = clone.query.high_mark
            clone.query.clear_limits()
            clone.query.set_limits(0, high)
        sort_keys = self._text_sort_keys(alias)
        function = vendors.of(connections[alias]).text_sort_key
        for name, sort_key in sort_keys.items():
            expression = Func(F(name), function=function, output_field=models.BinaryField())
            clone.query.add_annotation(expression, sort_key)
        if self._fields is None:
            if not self._built_after_merge(streaming):
                self._load_ordering(clone)
                return clone, _Merge(None, None, sort_keys)
            # Rows as tuples, tagged with their database: only those the merge keeps
            # become instances (a slice of eight shards builds 20 instances, not 160).
            attnames = [field.attname for field in self.model._meta.concrete_fields]
            annotations = list(self.query.annotation_select)
            width, model = len(attnames), self.model

            def build(row: Any) -> Any:
                instance = model.from_db(row[-1], attnames, row[:width])
                for position, name in enumerate(annotations, start=width):
                    setattr(instance, name, row[position])
                return instance

            names = [*attnames, *annotations, *sort_keys.values()]
            rows: Any = models.QuerySet.values_list(clone, *names)
            return rows, _Merge(build, names, sort_keys, tagged=True)
        names = list(self._fields) or [
            *(field.attname for field in self.model._meta.concrete_fields),
            *self.query.annotation_select,
        ]
        width = len(names)
        for name, _ in self._order_terms():
            if name in sort_keys:
                names.append(sort_keys[name])
                continue
            if name == "pk":
                name = self.model._meta.pk.attname
            if name not in names and name not in self.query.annotation_select:
                names.append(name)
            elif name not in names:
                raise CrossShardError(
                    f"{self.model._meta.label}: a query over several shards must select "
                    f"the annotation {name!r} it is ordered by."
                )
        iterable = self._iterable_class
        if iterable is ValuesIterable:
            fields = names[:width]

            def shape(row: Any) -> Any:
                return dict(zip(fields, row[:width], strict=True))

        elif iterable is FlatValuesListIterable:

            def shape(row: Any) -> Any:
                return row[0]

        elif iterable is ValuesListIterable:

            def shape(row: Any) -> Any:
                return row[:width]

        else:
            raise self._no_named_rows()
        values: Any = models.QuerySet.values_list(clone, *names)
        return values, _Merge(shape, names, sort_keys)

    def _load_ordering(self, clone: ShardedQuerySet[Any]) -> None:
        """Load the fields the merge compares, even if deferred (else a query per row)."""
        names = {
            self.model._meta.pk.name if name == "pk" else name
            for name, _ in self._order_terms()
            if name not in self.query.annotations
        }
        fields, deferring = clone.query.deferred_loading
        if deferring:
            clone.query.deferred_loading = (frozenset(fields) - names, True)
        elif fields:  # only(): add them.
            clone.query.deferred_loading = (frozenset(fields) | names, False)

    def _merge(
        self, targets: Sequence[str], results: Iterable[Iterable[Any]], how: _Merge
    ) -> Iterator[Any]:
        """The rows of every shard, in the query's order, sliced as the query says."""
        query = self.query
        ordering = self._ordering(how.names, how.sort_keys)
        if query.is_sliced and not ordering:
            raise CrossShardError(
                f"{self.model._meta.label}: a slice of a query over several shards needs an "
                "order_by(), or the rows it returns would depend on the shards' timing."
            )
        if ordering:
            nulls_first = vendors.of(connections[targets[0]]).nulls_first

            def sort_key(row: Any) -> tuple[_SortValue, ...]:
                return tuple(
                    _SortValue(value(row), descending, nulls_first)
                    for value, descending in ordering
                )

            rows: Iterator[Any] = heapq.merge(*results, key=sort_key)
        else:
            rows = itertools.chain.from_iterable(results)
        if query.distinct:
            if how.names is not None and not how.tagged:
                self._refuse_text(targets[0], how.names, "distinct()")
            rows = _unique(rows)
        if query.is_sliced:
            rows = itertools.islice(rows, query.low_mark, query.high_mark)
        return rows if how.shape is None else map(how.shape, rows)

    def _fetch_all(self) -> None:
        if self._result_cache is not None:
            return
        targets = self._targets()
        if len(targets) == 1:
            with self._running_on(targets[0]):
                models.QuerySet._fetch_all(self)
            return
        self._check_fan_out()
        if self._aggregates():
            self._result_cache = self._merge_groups(targets)
            return
        per_shard, how = self._per_shard(targets[0])
        if how.names is None:  # Model instances, built by Django on each shard.
            results = per_shard._each(list, targets)
        else:
            results = how.tag(targets, per_shard._rows_each(targets))
        self._result_cache = list(self._merge(targets, results, how))
        if how.tagged and self._prefetch_related_lookups:
            # Each shard's rows prefetch there (a related row is on its row's shard).
            on: dict[str | None, list[M]] = {}
            for instance in self._result_cache:
                on.setdefault(instance._state.db, []).append(instance)
            for instances in on.values():
                prefetch_related_objects(instances, *self._prefetch_related_lookups)
        self._prefetch_done = True  # Done here, or by each shard for its own rows.

    def _built_after_merge(self, streaming: bool) -> bool:
        """Whether a fan-out can fetch tuples and build only the instances it keeps.

        Not with select_related() or deferred fields (Django builds those), nor
        for a stream that prefetches (each shard prefetches for its own chunks).
        """
        query = self.query
        return not (
            query.select_related
            or query.deferred_loading[0]
            or self._known_related_objects
            or (streaming and self._prefetch_related_lookups)
        )

    def _check_fan_out(self) -> None:
        if self.query.combinator:
            raise CrossShardError(
                f"{self.model._meta.label}: {self.query.combinator}() over several shards would "
                "combine each shard's rows apart; combine the merged lists in Python, or "
                "run it on one shard with for_key() or on_shard()."
            )
        if self.query.distinct_fields:
            raise CrossShardError(
                f"{self.model._meta.label}: distinct(*fields) over several shards would keep a "
                "row per value on each shard; use values(...).distinct(), or filter on the "
                "shard key."
            )
        if self.query.select_for_update:
            raise CrossShardError(
                f"{self.model._meta.label}: select_for_update() cannot lock rows on several "
                "shards at once; filter on the shard key, or use for_key()."
            )
        query = self.query
        if (
            query.extra
            or query.extra_tables
            or query.extra_order_by
            or _has_extra_where(query.where)
        ):
            raise CrossShardError(
                f"{self.model._meta.label}: extra() SQL cannot be merged over several shards; "
                "run it on one with on_shard() or for_key(), or write it with expressions."
            )
        if self.query.where.contains_aggregate:
            raise CrossShardError(
                f"{self.model._meta.label}: a filter on an aggregate over several shards would "
                "be applied to each shard's part of a group; filter the merged rows in Python, "
                "or filter on the shard key."
            )

    def _aggregates(self) -> dict[str, tuple[Any, Any]]:
        """Of a ``values(...).annotate(...)`` query: name -> (aggregate, its default)."""
        query = self.query
        if self._fields is None or not isinstance(query.group_by, tuple):
            return {}
        pk = self.model._meta.pk.column
        if any(isinstance(column, Col) and column.target.column == pk for column in query.group_by):
            return {}  # annotate() before values(): a group per row, each on one shard.
        found = {}
        # Ordered by, if not selected: the merge computes them too.
        ordered = {term.lstrip("-+") for term in query.order_by if isinstance(term, str)}
        for name, annotation in query.annotations.items():
            if name not in query.annotation_select and name not in ordered:
                continue
            if not getattr(annotation, "contains_aggregate", False):
                continue
            default = None
            # An aggregate with a default resolves to Coalesce(aggregate, default).
            if isinstance(annotation, Coalesce) and isinstance(
                annotation.source_expressions[0], MERGEABLE
            ):
                annotation, default = annotation.source_expressions
                default = default.value
            found[name] = (annotation, default)
        return found

    def _merge_groups(self, targets: Sequence[str]) -> list[Any]:
        """A ``values(...).annotate(...)`` fan-out: each shard's groups, merged, then ordered."""
        clone = self._chain()
        clone.query.clear_ordering(force=True)
        clone.query.clear_limits()
        per_shard: dict[str, Any] = {}
        merges = {}
        for name, (aggregate, default) in self._aggregates().items():
            aggregate = copy.copy(aggregate)
            aggregate.default = default
            merges[name] = self._split_aggregate(name, aggregate, per_shard)
        for name, expression in per_shard.items():
            clone.query.annotations.pop(name, None)
            clone.query.add_annotation(expression, name)
            if getattr(clone.query, "selected", None) is not None:  # Django 5.2 and later.
                clone.query.selected[name] = name
        clone._iterable_class = ValuesIterable
        names = [
            name
            for name in (*clone.query.values_select, *clone.query.annotation_select)
            if name not in per_shard and name not in merges
        ]
        self._refuse_unselected_groups(names)
        self._refuse_text(targets[0], names, "grouped")
        # The rows as values() would give them (the query's selected names, in order).
        query = clone.query
        selected = list(query.selected or ()) or [
            *query.extra_select,
            *query.values_select,
            *query.annotation_select,
        ]
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for rows in clone._rows_each(targets):
            for values in rows:
                row = dict(zip(selected, values, strict=True))
                groups.setdefault(tuple(row[name] for name in names), []).append(row)
        merged = [
            {
                **dict(zip(names, values, strict=True)),
                **{name: merge(parts) for name, merge in merges.items()},
            }
            for values, parts in groups.items()
        ]
        query = self.query
        terms = []
        for term in query.order_by:
            if not isinstance(term, str) or (name := term.lstrip("-+")) not in (*names, *merges):
                raise CrossShardError(
                    f"{self.model._meta.label}: groups merged from several shards can be "
                    f"ordered by the values and aggregates they select only, not {term!r}."
                )
            terms.append((name, term.startswith("-") != (not query.standard_ordering)))
        if query.is_sliced and not terms:
            raise CrossShardError(
                f"{self.model._meta.label}: a slice of groups merged from several shards needs "
                "an order_by(), or the groups it returns would depend on the shards' timing."
            )
        if terms:
            nulls_first = vendors.of(connections[targets[0]]).nulls_first
            merged.sort(
                key=lambda row: tuple(
                    _SortValue(row[name], descending, nulls_first) for name, descending in terms
                )
            )
        if query.is_sliced:
            merged = merged[query.low_mark : query.high_mark]
        return [self._shape_group(row) for row in merged]

    def _no_named_rows(self) -> CrossShardError:
        return CrossShardError(
            f"{self.model._meta.label}: values_list(named=True) over several shards is "
            "not supported; use values(), or filter on the shard key."
        )

    def _refuse_unselected_groups(self, names: list[str]) -> None:
        """Groups are merged by their values: each value grouped by must be selected."""
        query = self.query
        for column in query.group_by if isinstance(query.group_by, tuple) else ():
            selected = (
                column.refs in names
                if isinstance(column, Ref)
                else isinstance(column, Col)
                and any(
                    name in (column.target.name, column.target.attname)
                    for name in query.values_select
                )
            )
            if not selected:
                raise CrossShardError(
                    f"{self.model._meta.label}: groups merged from several shards must select "
                    f"every value they are grouped by ({column!r} is not); select it in "
                    "values(), or filter on the shard key."
                )

    def _refuse_text(self, alias: str, names: Iterable[str], what: str) -> None:
        """Refuse to compare text in Python where the engine's collation says otherwise.

        MariaDB's collations (``utf8mb4_unicode_ci``) take ``"Paid"`` and ``"paid"``
        for one value: groups, distinct values and Min/Max of text from several
        shards cannot be merged in Python as one database would.
        """
        connection = connections[alias]
        vendor = vendors.of(connection)
        for name in names:
            field = self._text_field(name)
            if field is None:
                continue
            if vendor.text_sort_key is not None or not vendor.sorts_text_by_code_point(
                connection, field.db_collation
            ):
                raise CrossShardError(
                    f"{self.model._meta.label}: text {what} over several shards ({name!r}) "
                    f"compares under {connection.vendor}'s collation, which Python cannot "
                    "reproduce when it merges the shards' answers. Filter on the shard key, or "
                    "use for_key() or on_shard()."
                )

    def _shape_group(self, row: dict[str, Any]) -> Any:
        """A merged group as values() or values_list() gives it."""
        query = self.query
        names = [*query.values_select, *query.annotation_select]
        iterable = self._iterable_class
        if iterable is ValuesIterable:
            return {name: row[name] for name in names}
        fields = [*self._fields, *(n for n in query.annotation_select if n not in self._fields)]
        if iterable is FlatValuesListIterable:
            return row[fields[0]]
        if iterable is ValuesListIterable:
            return tuple(row[name] for name in fields or names)
        raise self._no_named_rows()

    def iterator(self, chunk_size: int | None = None) -> Iterator[M]:
        targets = self._targets()
        if len(targets) == 1:
            return models.QuerySet.iterator(self._on(targets[0]), chunk_size)
        self._check_fan_out()
        if self._aggregates():  # Every group must be merged before the first is known.
            return iter(self._merge_groups(targets))
        per_shard, how = self._per_shard(targets[0], streaming=True)
        streams = how.tag(targets, [per_shard._on(alias).iterator(chunk_size) for alias in targets])
        return self._merge(targets, streams, how)

    def count(self) -> int:
        if self._result_cache is not None:
            return len(self._result_cache)
        targets = self._targets()
        if len(targets) == 1:
            with self._running_on(targets[0]):
                return models.QuerySet.count(self)
        self._check_fan_out()
        if self.query.is_sliced:
            return len(self._chain())  # The slice is of the merged rows.
        if self.query.distinct or self._aggregates():
            # A row may be on several shards. Like Django's count(), ignore the ordering.
            return len(self.order_by())
        return sum(self._each(models.QuerySet.count, targets))

    def exists(self) -> bool:
        if self._result_cache is not None:
            return bool(self._result_cache)
        targets = self._targets()
        if len(targets) == 1:
            with self._running_on(targets[0]):
                return models.QuerySet.exists(self)
        self._check_fan_out()
        if self.query.is_sliced:
            return bool(self._chain()[:1])  # The slice is of the merged rows.
        return any(self._each(models.QuerySet.exists, targets))

    def get(self, *args: Any, **kwargs: Any) -> M:
        clone = self.filter(*args, **kwargs) if args or kwargs else self._chain()
        if clone.query.can_filter() and not clone.query.distinct_fields:
            clone = clone.order_by()
        targets = clone._targets()
        if len(targets) == 1:
            # Django's get(), without its clones: this one is evaluated where it routes.
            if not clone.query.select_for_update or (
                connections[targets[0]].features.supports_select_for_update_with_limit
            ):
                clone.query.set_limits(high=MAX_GET_RESULTS)
            with clone._running_on(targets[0]):
                models.QuerySet._fetch_all(clone)
            rows = clone._result_cache or []
            if len(rows) == 1:
                one: M = rows[0]
                return one
            if rows:
                raise self.model.MultipleObjectsReturned(
                    f"get() returned more than one {self.model._meta.object_name} -- it "
                    f"returned {len(rows) if len(rows) < MAX_GET_RESULTS else 'more than 20'}!"
                )
        elif clone.query.is_sliced or clone.query.distinct or clone._aggregates():
            # latest(), earliest(), qs[5:6].get(), a group or a distinct value (each shard
            # may hold a part of it): of the merged rows.
            rows = list(clone)
        else:
            clone._check_fan_out()
            rows = list(
                itertools.chain.from_iterable(clone._each(lambda qs: list(qs[:2]), targets))
            )
        found = rows
        if len(found) == 1:
            only: M = found[0]
            return only
        if not found:
            raise self.model.DoesNotExist(
                f"{self.model._meta.object_name} matching query does not exist."
            )
        raise self.model.MultipleObjectsReturned(
            f"get() returned more than one {self.model._meta.object_name} -- it returned "
            f"{len(found)} or more, from several shards!"
        )

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        for arg in args:
            kwargs[arg.default_alias] = arg
        targets = self._targets()
        if len(targets) == 1:
            with self._running_on(targets[0]):
                return models.QuerySet.aggregate(self, **kwargs)
        if self.query.is_sliced or self.query.distinct or self.query.group_by is not None:
            raise CrossShardError(
                f"{self.model._meta.label}: aggregate() over a slice, distinct() or annotate() "
                "of several shards cannot be merged; filter on the shard key."
            )
        per_shard: dict[str, Any] = {}
        merges: dict[str, Callable[[list[dict[str, Any]]], Any]] = {}
        for name, aggregate in kwargs.items():
            merges[name] = self._split_aggregate(name, aggregate, per_shard)
        answers = self._each(lambda qs: models.QuerySet.aggregate(qs, **per_shard), targets)
        return {name: merge(answers) for name, merge in merges.items()}

    def _split_aggregate(
        self, name: str, aggregate: Any, per_shard: dict[str, Any]
    ) -> Callable[[list[dict[str, Any]]], Any]:
        """Add what each shard computes for ``aggregate`` to ``per_shard``; return the merge."""
        if type(aggregate) not in MERGEABLE:
            raise CrossShardError(
                f"{self.model._meta.label}: {aggregate!r} over several shards cannot be "
                "computed exactly; use Count, Sum, Min, Max or Avg, or filter on the shard key."
            )
        default = aggregate.default
        plain = copy.deepcopy(aggregate)
        plain.default = None  # A default is applied once, after the merge.
        if aggregate.distinct and not (isinstance(aggregate, Count) and self._counts_key(plain)):
            raise CrossShardError(
                f"{self.model._meta.label}: {type(aggregate).__name__}(distinct=True) over "
                "several shards would take a value once per shard; only a Count of the shard "
                "key is exact. Filter on the key, or use for_key()."
            )

        def values(answers: list[dict[str, Any]], key: str) -> list[Any]:
            return [answer[key] for answer in answers if answer[key] is not None]

        def finish(value: Any) -> Any:
            return default if value is None else value

        if isinstance(aggregate, Avg):
            total, count = f"__fleet_sum_{name}", f"__fleet_count_{name}"
            sources, condition = aggregate.source_expressions, aggregate.filter
            per_shard[total] = Sum(sources[0], filter=condition)
            per_shard[count] = Count(sources[0], filter=condition)

            def average(answers: list[dict[str, Any]]) -> Any:
                n = sum(answer[count] for answer in answers)
                if not n:
                    return finish(None)
                s = _total(values(answers, total))
                if isinstance(s, Decimal):
                    return finish(s / Decimal(n))
                return finish(s / n)

            return average
        per_shard[name] = plain
        if isinstance(aggregate, Count):
            return lambda answers: sum(answer[name] for answer in answers)
        if isinstance(aggregate, Min | Max):
            source = aggregate.source_expressions[0]
            of = source.target.name if isinstance(source, Col) else getattr(source, "name", "")
            self._refuse_text(self._group().databases[0], [of], f"{type(aggregate).__name__}()")
        pick: Callable[[list[Any]], Any] = (
            _total if isinstance(aggregate, Sum) else min if isinstance(aggregate, Min) else max
        )
        return lambda answers: finish(pick(found) if (found := values(answers, name)) else None)

    def _counts_key(self, aggregate: Any) -> bool:
        key = shard_key(self.model)
        sources = aggregate.source_expressions
        if key is None or len(sources) != 1:
            return False
        if isinstance(sources[0], Col):  # Resolved: a values().annotate() aggregate.
            return bool(sources[0].target.column == key.field.column)
        return isinstance(sources[0], F) and sources[0].name in (key.field.name, key.attname)

    def raw(
        self, raw_query: Any, params: Any = (), translations: Any = None, using: str | None = None
    ) -> RawQuerySet[M]:
        """Raw SQL on one database: the pinned one, or a reference model's first copy."""
        using = using or self._pinned()
        if using is None:
            if shard_key(self.model) is not None:
                raise CrossShardError(
                    f"{self.model._meta.label} is sharded and raw SQL runs on one database: "
                    "say which with on_shard(alias).raw(...) or for_key(key).raw(...)."
                )
            using = self._group().databases[0]
        return super().raw(raw_query, params, translations, using)

    # --- Writes ---------------------------------------------------------------------------------

    def _writing(self, targets: Sequence[str]) -> Any:
        """One ``dbfleet.atomic`` over ``targets``; two-phase for copies if the group says so."""
        copies = shard_key(self.model) is None and self._pinned() is None
        return atomic(*targets, two_phase=copies and self._group().two_phase)

    def _write_targets(self) -> list[str]:
        if shard_key(self.model) is None and self._pinned() is None:
            return list(self._group().databases)  # Every copy of a reference model.
        return self._targets()

    def update(self, **kwargs: Any) -> int:
        key = shard_key(self.model)
        if key is not None and (key.field.name in kwargs or key.attname in kwargs):
            raise CrossShardError(
                f"{self.model._meta.label}: update() cannot change the shard key "
                f"{key.field.name!r}: the rows would stay on the old key's shard. Create "
                "them anew under the new key and delete the old ones."
            )
        targets = self._write_targets()
        with self._writing(targets):
            counts = self._each(lambda qs: models.QuerySet.update(qs, **kwargs), targets)
        return self._rows(counts)

    def _rows(self, counts: list[int]) -> int:
        """The rows a write changed: summed over shards; a reference model's, once."""
        if shard_key(self.model) is None and self._pinned() is None:
            return counts[0]  # Every copy changed the same rows.
        return sum(counts)

    def delete(self) -> tuple[int, dict[str, int]]:
        targets = self._write_targets()
        with self._writing(targets):
            answers = self._each(models.QuerySet.delete, targets)
        if shard_key(self.model) is None and self._pinned() is None:
            return _deleted_on_copies(answers)
        per_model: dict[str, int] = {}
        for _, counts in answers:
            for label, n in counts.items():
                per_model[label] = per_model.get(label, 0) + n
        return sum(per_model.values()), per_model

    def create(self, **kwargs: Any) -> M:
        instance = self.model(**kwargs)
        self._for_write = True
        if self._pinned() is not None:
            instance.save(force_insert=True, using=self._pinned())
        else:
            instance.save(force_insert=True)  # A reference model's save() writes every copy.
        return instance

    def get_or_create(self, defaults: Any = None, **kwargs: Any) -> tuple[M, bool]:
        found: tuple[M, bool] = models.QuerySet.get_or_create(
            self._one_for(kwargs, "get_or_create"), defaults, **kwargs
        )
        return found

    def update_or_create(
        self, defaults: Any = None, create_defaults: Any = None, **kwargs: Any
    ) -> tuple[M, bool]:
        found: tuple[M, bool] = models.QuerySet.update_or_create(
            self._one_for(kwargs, "update_or_create"), defaults, create_defaults, **kwargs
        )
        return found

    def _one_for(self, lookups: dict[str, Any], method: str) -> ShardedQuerySet[M]:
        """This query on the one database ``lookups`` name, for a read-then-write method."""
        targets = self.filter(**lookups)._write_targets()
        if len(targets) == 1:
            return self.using(targets[0])
        if shard_key(self.model) is None:
            raise CrossShardError(
                f"{self.model._meta.label} is a reference model and {method}() would write "
                "one copy only: use get(), then create() or update(), which write every copy."
            )
        raise ShardKeyRequired(
            f"{self.model._meta.label}.objects.{method}() looks up and writes in one "
            "transaction, on one database: include the shard key in its lookups."
        )

    def bulk_update(
        self, objs: Iterable[M], fields: Iterable[str], batch_size: int | None = None
    ) -> int:
        """Each instance updated on its own shard (a reference model's, on every copy)."""
        objs, fields, key = list(objs), list(fields), shard_key(self.model)
        if key is not None and (key.field.name in fields or key.attname in fields):
            raise CrossShardError(
                f"{self.model._meta.label}: bulk_update() cannot change the shard key "
                f"{key.field.name!r}: the rows would stay on the old key's shard."
            )
        pinned = self._pinned()
        if pinned is not None or key is None:
            targets = [pinned] if pinned is not None else list(self._group().databases)
            with self._writing(targets):
                counts = [
                    models.QuerySet.bulk_update(self.using(alias), objs, fields, batch_size)
                    for alias in targets
                ]
            return self._rows(counts)
        batches: dict[str, list[M]] = {}
        for obj in objs:
            batches.setdefault(obj._state.db or database_of(obj), []).append(obj)
        with atomic(*batches):
            return sum(
                models.QuerySet.bulk_update(self.using(alias), batch, fields, batch_size)
                for alias, batch in batches.items()
            )

    async def aiterator(self, chunk_size: int = 2000) -> AsyncIterator[M]:
        """``iterator()``, routed and merged as it is, a chunk at a time off the event loop."""
        rows = await sync_to_async(self.iterator)(chunk_size)

        def chunk() -> list[M]:
            return list(itertools.islice(rows, chunk_size))

        while found := await sync_to_async(chunk)():
            for row in found:
                yield row

    def bulk_create(self, objs: Iterable[M], *args: Any, **kwargs: Any) -> list[M]:
        objs = list(objs)
        pinned = self._pinned()
        # FleetIdField values first, before any write's transaction: one round trip per
        # database, and each row's id (its slot) then says where it goes.
        assign(self.model, objs, pinned)
        key = shard_key(self.model)
        if pinned is not None and key is not None:
            for obj in objs:
                _refuse_misplaced(obj, pinned)
        if pinned is not None or key is None:
            targets = [pinned] if pinned is not None else list(self._group().databases)
            with self._writing(targets):
                for alias in targets:
                    models.QuerySet.bulk_create(self.using(alias), objs, *args, **kwargs)
            return objs
        batches: dict[str, list[M]] = {}
        for obj in objs:
            batches.setdefault(database_of(obj), []).append(obj)
        with atomic(*batches):
            for alias, batch in batches.items():
                models.QuerySet.bulk_create(self.using(alias), batch, *args, **kwargs)
        return objs


def _compiled(queryset: models.QuerySet[Any], alias: str) -> tuple[Any, str, Sequence[Any]]:
    """(compiler, sql, params) of ``queryset`` on ``alias``; sql is empty if it matches nothing."""
    compiler = queryset.query.get_compiler(alias)
    try:
        sql, params = compiler.as_sql()
    except EmptyResultSet:
        return compiler, "", ()
    return compiler, sql, params


def _on_each(run: Callable[[str], T], targets: Sequence[str]) -> list[T]:
    """``run(alias)`` for each target, in parallel outside a transaction.

    The first target runs in the calling thread, the others on the fan-out
    threads, each with the caller's context variables. Inside a transaction
    on any of them everything runs on the caller's connections, one after the
    other, so that it sees (and takes part in) the transaction.
    """
    if (
        len(targets) <= 1
        or any(connections[alias].in_atomic_block for alias in targets)
        or threading.current_thread().name.startswith(POOL_NAME)  # A fan-out in a fan-out.
    ):
        return [run(alias) for alias in targets]
    pool = _fan_out_pool()
    futures = [
        pool.submit(contextvars.copy_context().run, _in_worker, run, alias) for alias in targets[1:]
    ]
    try:
        first = run(targets[0])
    finally:
        wait(futures)  # None is left running, even when this thread's part failed.
    return [first, *(future.result() for future in futures)]


_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()


def _fan_out_pool() -> ThreadPoolExecutor:
    """The process's fan-out threads (started on first use, and anew in a forked child)."""
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(FAN_OUT_THREADS - 1, POOL_NAME))
        return _POOL[0]


def _forget_pool() -> None:
    _POOL.clear()  # A forked child has none of its parent's threads.


os.register_at_fork(after_in_child=_forget_pool)


#: Context managers entered on a fan-out thread's connection around its part of a query
#: (``dbfleet.testing.capture_queries()`` records the shards' statements through it).
FAN_OUT_WRAPPERS: contextvars.ContextVar[
    tuple[Callable[[BaseDatabaseWrapper], AbstractContextManager[None]], ...]
] = contextvars.ContextVar("dbfleet_fan_out_wrappers", default=())


def _in_worker(run: Callable[[str], T], alias: str) -> T:
    """``run(alias)`` on a fan-out thread, on the thread's own connection to ``alias``.

    Its connections are kept as Django keeps a request's: closed after use unless
    ``CONN_MAX_AGE`` says to keep them (then reused while usable and not too old).
    That is every connection the work opened (a related query, or a fan-out of
    its own run in order here), not just the clone's.
    """
    connection = connections[alias]
    connection.close_if_unusable_or_obsolete()
    try:
        with ExitStack() as stack:
            for wrapper in FAN_OUT_WRAPPERS.get():
                stack.enter_context(wrapper(connection))
            return run(alias)
    finally:
        for opened in connections.all(initialized_only=True):
            if opened.settings_dict["CONN_MAX_AGE"] == 0:  # None: kept for good.
                opened.close()


def close_fan_out_connections(timeout: float = 10.0) -> None:
    """Close every connection the fan-out threads keep open (``CONN_MAX_AGE`` > 0), and stop them.

    Call it before dropping a database the threads may be connected to (a test
    run's teardown does, with persistent connections).
    """
    with _POOL_LOCK:
        if not _POOL:
            return
        pool = _POOL.pop()
    workers = FAN_OUT_THREADS - 1
    barrier = threading.Barrier(workers, timeout=timeout)  # One task per thread.

    def close() -> None:
        connections.close_all()
        barrier.wait()

    for future in [pool.submit(close) for _ in range(workers)]:
        future.result(timeout)
    pool.shutdown()


def _deleted_on_copies(answers: list[tuple[int, dict[str, int]]]) -> tuple[int, dict[str, int]]:
    """What deleting reference rows on every copy deleted, as delete() says it.

    Each copy deleted the same rows of the reference models: counted once. Sharded
    rows the deletion cascaded to are on their shard alone: counted on each.
    """
    per_model: dict[str, int] = {}
    for _, counts in answers:
        for label, n in counts.items():
            if shard_key(apps.get_model(label)) is None:
                per_model[label] = n
            else:
                per_model[label] = per_model.get(label, 0) + n
    return sum(per_model.values()), per_model


def _total(values: Sequence[Any]) -> Any:
    """The sum of ``values`` (at least one): numbers, decimals or durations."""
    return functools.reduce(operator.add, values)


def _unique(rows: Iterable[T]) -> Iterator[T]:
    """``rows`` without repeats (model instances or tuples: a fan-out's rows are hashable)."""
    seen: set[T] = set()
    for row in rows:
        if row not in seen:
            seen.add(row)
            yield row


_KEY_ATTNAMES: dict[type[models.Model], str | None] = {}
clears_on_reset(_KEY_ATTNAMES.clear)


def _remember_key(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    """Note the shard key an instance was loaded or saved with: the router refuses a change."""
    try:
        attname = _KEY_ATTNAMES[sender]
    except KeyError:
        key = shard_key(sender)
        attname = _KEY_ATTNAMES[sender] = None if key is None else key.attname
    values = instance.__dict__
    if attname is not None and attname in values:
        values[KEY_SEEN] = values[attname]


def _refuse_misplaced(instance: models.Model, using: str) -> None:
    """Raise CrossShardError unless ``instance`` is written where its key lives."""
    key = shard_key(type(instance))
    if key is None or (key.picks_slot and unallocated(getattr(instance, key.attname))):
        return  # Its own id, still to come: it takes a slot of the database written to.
    where = database_of(instance)
    if where != using:
        name = key.field.name
        raise CrossShardError(
            f"{type(instance)._meta.label} {instance.pk!r}: its shard key {name!r} lives on "
            f"{where!r}, and it is being written to {using!r}, where no query with its key "
            f"would find it. Save it without using= (or on {where!r})."
        )


def _check_placement(
    sender: type[models.Model], instance: models.Model, raw: bool, using: str, **kwargs: Any
) -> None:
    """pre_save: a sharded row is written where its key lives, and a saved row's key stays."""
    if raw or shard_key(sender) is None:
        return  # loaddata writes where it is told; a reference model has no key.
    refuse_key_change(instance)
    if not instance._state.adding and instance._state.db not in (None, using):
        raise CrossShardError(
            f"{sender._meta.label} {instance.pk!r} was read from {instance._state.db!r} and is "
            f"being saved to {using!r}: its shard key changed, and a saved row stays where its "
            "key put it. Create it anew under the new key and delete the old one."
        )
    _refuse_misplaced(instance, using)


def _reference_group(model: type[models.Model]) -> ShardGroup | None:
    """The shard group of a reference model; None for any other model."""
    group = get_topology().shard_group_for(model)
    return group if group is not None and shard_key(model) is None else None


def _writes_every_copy(cls: type[models.Model]) -> None:
    """Make ``save()`` and ``delete()`` of a reference model write every copy, in one atomic.

    Only when no database is named: ``save(using=alias)`` writes that copy only.
    Signals are sent once per copy.
    """
    save, delete = cls.save, cls.delete
    if getattr(save, "_fleet_copies", False):
        return  # Inherited from a model that has them already.

    @functools.wraps(save)
    def save_copies(
        self: models.Model, *args: Any, using: str | None = None, **kwargs: Any
    ) -> None:
        group = _reference_group(type(self)) if using is None else None
        if group is None:
            return save(self, *args, using=using, **kwargs)
        with atomic(*group.databases, two_phase=group.two_phase):
            # The first copy first, as bulk_create() does: a new row's id comes from its
            # sequence always (the others are given it), so the copies never disagree.
            for alias in group.databases:
                save(self, *args, using=alias, **kwargs)
        self._state.db = group.databases[0]  # The copy reads use.
        return None

    @functools.wraps(delete)
    def delete_copies(
        self: models.Model, using: str | None = None, *args: Any, **kwargs: Any
    ) -> tuple[int, dict[str, int]]:
        group = _reference_group(type(self)) if using is None else None
        if group is None:
            deleted: tuple[int, dict[str, int]] = delete(self, using, *args, **kwargs)
            return deleted
        pk, answers = self.pk, []
        with atomic(*group.databases, two_phase=group.two_phase):
            for alias in group.databases:
                self.pk = pk  # Django clears it once the row is deleted.
                answers.append(delete(self, alias, *args, **kwargs))
        return _deleted_on_copies(answers)

    save_copies._fleet_copies = True
    cls.save = save_copies  # type: ignore[method-assign]
    cls.delete = delete_copies  # type: ignore[method-assign]


class ShardedManager(models.Manager.from_queryset(ShardedQuerySet)):  # type: ignore[misc]
    """The manager of sharded and reference models (``objects = dbfleet.ShardedManager()``)."""

    def contribute_to_class(self, cls: type[models.Model], name: str) -> None:
        super().contribute_to_class(cls, name)
        if cls._meta.abstract:
            return  # Its concrete models get a copy of this manager.
        for signal in (signals.post_init, signals.post_save):
            signal.connect(_remember_key, sender=cls, weak=False, dispatch_uid=KEY_SEEN)
        signals.pre_save.connect(_check_placement, sender=cls, weak=False, dispatch_uid=KEY_SEEN)
        _writes_every_copy(cls)
