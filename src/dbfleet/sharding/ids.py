"""Global ids: ``FleetIdField``, 64 bits that are unique, grow with time and carry a slot.

An id is a positive signed 64-bit integer (a ``bigint``). From its highest bit::

    0 | milliseconds since EPOCH (41 bits) | slot (10 bits) | sequence (12 bits)

Each database that hands out ids keeps one counter ``T = milliseconds << 12 |
sequence`` (``vendors``: a sequence and a function on PostgreSQL, a MyISAM row
on MariaDB/MySQL, a row on SQLite). Allocating ``n`` ids moves it, in one
statement, to ``max(T + n, now + n - 1)``, ``now`` being this process's clock
as a counter value; the ids are the ``n`` values up to the new ``T``, each with
its slot put between the milliseconds and the sequence.

``T`` only grows, and the ids of a slot are allocated on the one database that
holds it, so no two ids of a shard group are equal, whatever the clocks of the
processes say: the clock only keeps the time part close to the time. Beyond
4096 ids in one millisecond on one database the counter borrows from the next
milliseconds: ids stay unique and increasing, their time runs ahead of the
clock until it catches up. The milliseconds run out (41 bits) in 2095.

A model that is not sharded gets the slot its database holds first in a shard
group, or 0 outside any: ids are unique across every table of a database and
across a shard group; two databases outside any group may hand out equal ids
(to rows of different tables).
"""

from __future__ import annotations

import datetime
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from typing import Any, NamedTuple

from django.apps import apps
from django.db import ProgrammingError, connections, models, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.fields import NOT_PROVIDED

from dbfleet import vendors
from dbfleet.conf import get_topology
from dbfleet.sharding.slots import (
    SEQUENCE_BITS,
    SLOT_BITS,
    choose_slot,
    home_slot,
    shard_key,
    slot_of_id,
    unallocated,
)
from dbfleet.transactions.guard import unguarded

#: Time zero of the ids' milliseconds.
EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
EPOCH_MS = int(EPOCH.timestamp()) * 1000
MILLISECOND_BITS = 41
#: The last millisecond an id can hold: 2095-09-07 15:47:35.551 UTC.
MAX_MILLISECONDS = (1 << MILLISECOND_BITS) - 1
SEQUENCE_MASK = (1 << SEQUENCE_BITS) - 1
#: Ids per millisecond per database before the counter borrows from the next millisecond.
IDS_PER_MILLISECOND = 1 << SEQUENCE_BITS


class FleetId(NamedTuple):
    """What an id says: its millisecond, its slot, its sequence within the millisecond."""

    time: datetime.datetime
    slot: int
    sequence: int


def parse(fleet_id: int | str) -> FleetId:
    """The millisecond (UTC), slot and sequence of a FleetIdField value."""
    value = int(fleet_id)
    if not 0 <= value < 1 << 63:
        raise ValueError(f"{fleet_id!r} is not a FleetIdField id: not a positive 64-bit integer.")
    milliseconds = value >> (SLOT_BITS + SEQUENCE_BITS)
    return FleetId(
        EPOCH + datetime.timedelta(milliseconds=milliseconds),
        slot_of_id(value),
        value & SEQUENCE_MASK,
    )


def first_id(at: datetime.datetime) -> int:
    """The least id of ``at`` or later: ``filter(id__gte=first_id(since))`` selects by time."""
    milliseconds = -((EPOCH - at) // datetime.timedelta(milliseconds=1))  # Rounded up.
    return max(milliseconds, 0) << (SLOT_BITS + SEQUENCE_BITS)


def compose(counter: int, slot: int) -> int:
    """The id of counter value ``counter`` (``milliseconds << 12 | sequence``) and ``slot``."""
    milliseconds, sequence = counter >> SEQUENCE_BITS, counter & SEQUENCE_MASK
    return (milliseconds << SLOT_BITS | slot) << SEQUENCE_BITS | sequence


def _now() -> int:
    """This process's clock as a counter value (its sequence part 0)."""
    return max(time.time_ns() // 1_000_000 - EPOCH_MS, 0) << SEQUENCE_BITS


# --- The counters ---------------------------------------------------------------------------


def install(connection: BaseDatabaseWrapper) -> None:
    """Create FleetIdField's counter on ``connection``'s database, unless it is there.

    ``migrate`` does it on every database where a model with a FleetIdField
    migrates; call this for tables made otherwise (by a schema editor in tests).
    """
    with unguarded():
        vendors.of(connection).install_id_counter(connection)


def models_with_ids() -> list[type[models.Model]]:
    """The installed models with a FleetIdField."""
    return [model for model in apps.get_models() if _id_fields(model)]


def install_after_migrate(sender: Any, *, using: str, **kwargs: Any) -> None:
    """``post_migrate``: the counter, on a database where a model with a FleetIdField migrates."""
    for model in models_with_ids():
        meta = model._meta
        # Unmanaged models too: their tables are made elsewhere, their ids here.
        if router.allow_migrate(using, meta.app_label, model_name=meta.model_name, model=model):
            install(connections[using])
            return


def _allocate(alias: str, count: int) -> int:
    """Move the counter of database ``alias`` on by ``count`` (one round trip); its new value."""
    connection = connections[alias]
    # dbfleet's own write, kept whatever the transaction open around it does.
    with unguarded():
        last = vendors.of(connection).allocate_ids(connection, count, _now())
    if last is None:
        raise ProgrammingError(
            f"FleetIdField's id counter is missing on database {alias!r}: run manage.py "
            f"migrate --database {alias} (or manage.py fleet migrate), which creates it "
            "wherever a model with a FleetIdField migrates; for tables made by hand, call "
            f"dbfleet.sharding.ids.install(connections[{alias!r}])."
        )
    if last >> SEQUENCE_BITS > MAX_MILLISECONDS:
        raise OverflowError(
            "FleetIdField has run out of ids: their 41 bits of milliseconds since "
            "2026-01-01 ended on 2095-09-07."
        )
    return last


def _id_fields(model: type[models.Model]) -> list[FleetIdField]:
    return [field for field in model._meta.concrete_fields if isinstance(field, FleetIdField)]


def _target(instance: models.Model, using: str | None) -> tuple[str, int]:
    """(the database whose counter allocates ``instance``'s ids, their slot)."""
    model = type(instance)
    key = shard_key(model)
    if key is None:
        # Not sharded (or a reference model): the database it is written to.
        database = using or router.db_for_write(model, instance=instance)
        return database, home_slot(database)
    group = key.group
    if key.picks_slot and unallocated(getattr(instance, key.attname)) and using in group.databases:
        picked: int | None = getattr(instance, "_fleet_slot", None)
        if picked is None or group.database_for_slot(picked) != using:
            # Written to `using` (on_shard(), save(using=...)): a slot that lives there.
            instance._fleet_slot = choose_slot(group, using)  # type: ignore[attr-defined]
    slot = key.instance_slot(instance)
    # A slot's ids come from the database that holds it, wherever this row is written.
    return group.database_for_slot(slot), slot


def _fill(wanted: Sequence[tuple[models.Model, FleetIdField]], using: str | None) -> list[int]:
    """An id for each (instance, field), in order: one allocation per database."""
    targets = [_target(instance, using) for instance, _ in wanted]
    counts: dict[str, int] = {}
    for database, _ in targets:
        counts[database] = counts.get(database, 0) + 1
    # Each database's block, handed out in order: the next free value of each.
    following = {database: _allocate(database, n) - n + 1 for database, n in counts.items()}
    found = []
    for database, slot in targets:
        found.append(compose(following[database], slot))
        following[database] += 1
    return found


def assign(
    model: type[models.Model], objs: Iterable[models.Model], using: str | None = None
) -> None:
    """Give each FleetIdField of ``objs`` that has no value an id: one round trip per database.

    ``using``: the database the rows go to, if not where the router sends them.
    ``ShardedQuerySet.bulk_create()`` calls it; call it before anything else that
    writes many rows (Django's ``bulk_create`` does it itself for a FleetIdField
    primary key).
    """
    fields = _id_fields(model)
    if not fields:
        return
    wanted = [
        (obj, field)
        for obj in objs
        for field in fields
        if unallocated(obj.__dict__.get(field.attname))
    ]
    for (obj, field), value in zip(wanted, _fill(wanted, using), strict=True):
        setattr(obj, field.attname, value)


def new_ids(
    model: type[models.Model], count: int = 1, *, key: object = None, using: str | None = None
) -> list[int]:
    """``count`` ids for new rows of ``model``, in one round trip (with ``key``, its shard key).

    A model keyed by its own FleetIdField gets one slot at random for them all
    (one of ``using``'s if given); a model that is not sharded, the slot of the
    database it is written to (``using``, or the router's).
    """
    found = shard_key(model)
    if found is None:
        group = get_topology().shard_group_for(model)  # A reference model's: its first copy.
        database = using or (group.databases[0] if group else router.db_for_write(model))
        slot = home_slot(database)
    else:
        if key is None and not found.picks_slot:
            raise TypeError(
                f"{model._meta.label} is sharded by {found.field.name!r}: pass key=, the "
                "value of the rows' key, which decides their slot."
            )
        slot = found.slot(key) if key is not None else choose_slot(found.group, using)
        database = found.group.database_for_slot(slot)
    start = _allocate(database, count) - count + 1
    return [compose(counter, slot) for counter in range(start, start + count)]


# --- Values to come: allocated for a whole batch at once --------------------------------------


class _Pending:
    """A FleetIdField value to come, allocated with every other pending value of its batch.

    Django's ``bulk_create`` asks the primary key of each row for a value before
    it writes any (``get_pk_value_on_save``); each gets one of these, and the
    first written allocates them all, in one round trip per database.
    """

    __slots__ = ("__weakref__", "batch", "field", "instance", "value")
    #: What ``slots.unallocated`` looks for.
    fleet_id_pending = True

    def __init__(self, field: FleetIdField, instance: models.Model) -> None:
        self.field = field
        self.instance = instance
        self.value: int | None = None
        self.batch = _open_batch(type(instance))
        self.batch.append(weakref.ref(self))

    def current(self) -> bool:
        """Whether the instance still holds this value (not replaced since)."""
        return self.instance.__dict__.get(self.field.attname) is self

    def resolve(self, using: str | None) -> int:
        """The id: allocated now, with the rest of the batch, if it is not yet."""
        if self.value is None:
            _close_batch(type(self.instance), self.batch)
            found = [pending() for pending in self.batch]
            batch = [
                pending
                for pending in found
                if pending is not None and pending.value is None and pending.current()
            ]
            if self not in batch:
                batch.append(self)
            values = _fill([(pending.instance, pending.field) for pending in batch], using)
            for pending, value in zip(batch, values, strict=True):
                pending.value = value
                if pending.current():
                    setattr(pending.instance, pending.field.attname, value)
        assert self.value is not None
        return self.value

    def __repr__(self) -> str:
        return "<FleetIdField value, allocated when the row is written>"


#: (thread, model -> its open batch): values to come, allocated together. Per thread
#: as well as per context: a copied context (asgiref's threads) shares the dict.
_BATCHES: ContextVar[tuple[int, dict[type, list[weakref.ref[_Pending]]]] | None] = ContextVar(
    "dbfleet_fleet_id_batches", default=None
)


def _batches() -> dict[type, list[weakref.ref[_Pending]]]:
    state = _BATCHES.get()
    thread = threading.get_ident()
    if state is None or state[0] != thread:
        state = (thread, {})
        _BATCHES.set(state)
    return state[1]


def _open_batch(model: type) -> list[weakref.ref[_Pending]]:
    return _batches().setdefault(model, [])


def _close_batch(model: type, batch: list[weakref.ref[_Pending]]) -> None:
    batches = _batches()
    if batches.get(model) is batch:
        del batches[model]


# --- The field ----------------------------------------------------------------------------------


class FleetIdField(models.BigIntegerField):  # type: ignore[type-arg]
    """A 64-bit id, unique in its shard group and growing with time, that carries its slot.

    A new row gets one when it is written: the slot of its shard key (or, for a
    model keyed by this field, a slot at random). Django's serializers write it
    as a string (it exceeds JavaScript's 2**53) and read it back from one.
    """

    description = "64-bit id that carries its shard slot"
    #: What ``slots.shard_key`` looks for: the value carries its slot.
    carries_slot = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blank"] = True  # Given when the row is written, never by a form.
        super().__init__(*args, **kwargs)

    def deconstruct(self) -> tuple[str, str, Sequence[Any], dict[str, Any]]:
        name, _, args, kwargs = super().deconstruct()
        kwargs.pop("blank", None)
        return name, "dbfleet.FleetIdField", args, kwargs

    def has_default(self) -> bool:
        # Its value comes when the row is written, as from a default: so save() of a
        # new instance inserts without first trying an UPDATE (Django's rule for a
        # primary key with a default, such as UUIDField(default=uuid4)).
        return True

    def get_default(self) -> Any:
        return None if self.default is NOT_PROVIDED else super().get_default()

    def get_pk_value_on_save(self, instance: models.Model) -> Any:
        # Asked by save() and by bulk_create() (for every row before it writes any):
        # each id still to come joins its model's batch, allocated when the first is written.
        values = instance.__dict__
        for field in _id_fields(type(instance)):
            if field.attname in values and values[field.attname] is None:  # Not deferred.
                setattr(instance, field.attname, _Pending(field, instance))
        return getattr(instance, self.attname)

    def pre_save(self, model_instance: models.Model, add: bool) -> Any:
        value = getattr(model_instance, self.attname)
        if add and value is None:
            value = _Pending(self, model_instance)
            setattr(model_instance, self.attname, value)
        elif isinstance(value, str):
            value = self.to_python(value)
            setattr(model_instance, self.attname, value)
        return value

    def get_db_prep_save(self, value: Any, connection: BaseDatabaseWrapper) -> Any:
        if isinstance(value, _Pending):
            value = value.resolve(connection.alias)  # The database the row is written to.
        return super().get_db_prep_save(value, connection)

    def get_prep_value(self, value: Any) -> Any:
        if isinstance(value, _Pending):
            value = value.resolve(None)
        return super().get_prep_value(value)

    def value_from_object(self, obj: models.Model) -> Any:
        # What serializers write (and model_to_dict() gives): a string, which JSON
        # readers cannot round to a float. to_python() reads it back.
        value = getattr(obj, self.attname)
        if isinstance(value, _Pending):
            value = value.resolve(None)
        return None if value is None else str(value)

    def formfield(self, **kwargs: Any) -> None:
        return None  # Never typed in: given when the row is written.
