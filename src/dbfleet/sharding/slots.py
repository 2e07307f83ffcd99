"""Where a key's rows live: its slot (a stable hash), and the database that holds the slot.

The hash is BLAKE2b with an 8-byte digest over a tagged encoding of the key,
read as an unsigned big-endian integer, modulo the group's ``slots``:

- an ``int``: ``b"i"`` and its 16-byte big-endian two's complement;
- a ``str``: ``b"s"`` and its UTF-8 bytes;
- a ``uuid.UUID``: ``b"u"`` and its 16 bytes;
- ``bytes``: ``b"b"`` and the bytes.

It depends on nothing but the value (not on ``PYTHONHASHSEED``, the platform
or the Python version); tests/test_sharding_slots.py pins test vectors. A key
that is (or refers to) a ``FleetIdField`` is not hashed: the id carries its slot.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import FieldDoesNotExist
from django.db import models

from dbfleet.conf import clears_on_reset, get_topology
from dbfleet.exceptions import CrossShardError, ShardKeyRequired
from dbfleet.topology import ShardGroup, owner_label

#: Bits of a FleetIdField value, from the lowest: sequence, slot, milliseconds.
SEQUENCE_BITS = 12
SLOT_BITS = 10


def key_bytes(value: object) -> bytes:
    """The bytes of a key value that the slot hash reads."""
    if isinstance(value, bool):
        raise TypeError(f"A shard key cannot be a bool ({value!r}).")
    if isinstance(value, int):
        return b"i" + value.to_bytes(16, "big", signed=True)
    if isinstance(value, str):
        return b"s" + value.encode()
    if isinstance(value, uuid.UUID):
        return b"u" + value.bytes
    if isinstance(value, bytes):
        return b"b" + value
    raise TypeError(
        f"A shard key must be an int, a str, a UUID or bytes, not {type(value).__name__} "
        f"({value!r})."
    )


def hash_slot(value: object, slots: int) -> int:
    """The slot of a (hashed) key value, among ``slots``."""
    digest = hashlib.blake2b(key_bytes(value), digest_size=8).digest()
    return int.from_bytes(digest, "big") % slots


def slot_of_id(fleet_id: int) -> int:
    """The slot a ``FleetIdField`` value carries."""
    return (fleet_id >> SEQUENCE_BITS) & ((1 << SLOT_BITS) - 1)


#: Fork-safe: processes forked from one parent would otherwise pick the same slots.
_RANDOM = random.SystemRandom()


def choose_slot(group: ShardGroup, alias: str | None = None) -> int:
    """A slot at random for a new row that brings its own key (one of ``alias``'s, if given)."""
    slots = group.slots_of(alias) if alias is not None else range(0)
    return _RANDOM.choice(slots or range(group.slots))


def home_slot(alias: str) -> int:
    """The slot in the ids a database hands out to models that are not sharded.

    The first slot the database holds in its shard group, so that those ids
    differ from every id of the group too; 0 for a database outside any group.
    """
    for group in get_topology().shard_groups.values():
        slots = group.slots_of(alias)
        if slots:
            return slots[0]
    return 0


def unallocated(value: object) -> bool:
    """Whether a key value is still to come: None, or a FleetIdField id not yet allocated."""
    return value is None or getattr(value, "fleet_id_pending", False)


@dataclass(frozen=True)
class ShardKey:
    """How to find the slot of a sharded model's rows."""

    group: ShardGroup
    #: The key field (a foreign key, or a plain field).
    field: models.Field[Any, Any]
    #: The field whose values the key holds (a foreign key's target).
    target: models.Field[Any, Any]
    #: Whether the key's values are FleetIdField ids, which carry their slot.
    carries_slot: bool

    @property
    def attname(self) -> str:
        return str(self.field.attname)

    @property
    def picks_slot(self) -> bool:
        """Whether the key is the model's own FleetIdField: a new row gets a slot at random."""
        return self.carries_slot and self.field is self.target

    def instance_slot(self, instance: models.Model) -> int:
        """The slot of ``instance``: its key's, or one picked once for a new row with its own id."""
        value = getattr(instance, self.attname)
        if not unallocated(value):
            return self.slot(value)
        if self.picks_slot:
            picked: int | None = getattr(instance, "_fleet_slot", None)
            if picked is None:
                # Kept on the instance: the router asks before save(), the field when it inserts.
                picked = instance._fleet_slot = choose_slot(self.group)  # type: ignore[attr-defined]
            return picked
        raise ShardKeyRequired(
            f"{type(instance)._meta.label} is sharded by {self.field.name!r}, and this "
            f"instance has none: set {self.field.name!r} before saving it."
        )

    def slot(self, value: object) -> int:
        """The slot of the key value ``value`` (a model instance stands for its primary key)."""
        if isinstance(value, models.Model):
            value = value.pk
        if value is None:
            raise TypeError("A shard key cannot be None.")
        value = self.target.to_python(value)
        if self.carries_slot:
            assert isinstance(value, int)  # A FleetIdField's to_python() gives an int.
            slot = slot_of_id(value)
            if slot >= self.group.slots:
                raise ValueError(
                    f"{value!r} is not an id of shard group {self.group.name!r}: it carries "
                    f"slot {slot}, and the group has {self.group.slots}."
                )
            return slot
        return hash_slot(value, self.group.slots)

    def database(self, value: object) -> str:
        """The database that holds the rows of key value ``value``."""
        return self.group.database_for_slot(self.slot(value))


_KEYS: dict[str, ShardKey | None] = {}


@clears_on_reset
def _forget_keys() -> None:
    _KEYS.clear()


def shard_key(model: Any) -> ShardKey | None:
    """The shard key of a sharded model (None for any other model, reference models included)."""
    label = owner_label(model)
    try:
        return _KEYS[label]
    except KeyError:
        pass
    found: ShardKey | None = None
    group = get_topology().shard_group_of.get(label)
    if group is not None and label in group.keys:
        try:
            field = model._meta.concrete_model._meta.get_field(group.keys[label])
        except FieldDoesNotExist:
            field = None  # Not a field of the model: such a key routes nothing.
        if field is not None and field.concrete:
            target = field.target_field if field.many_to_one or field.one_to_one else field
            # FleetIdField says so (``carries_slot``) without this module importing it.
            found = ShardKey(group, field, target, getattr(target, "carries_slot", False))
    _KEYS[label] = found
    return found


def shard_for(model: type[models.Model] | models.Model, key: object) -> str:
    """The database that holds the rows of a sharded model with key value ``key``."""
    found = shard_key(model)
    if found is None:
        name = model._meta.label
        raise TypeError(
            f"{name} is not a sharded model: list it under the keys of a group in "
            'DBFLEET["SHARDS"].'
        )
    return found.database(key)


def database_of(instance: models.Model) -> str:
    """The database a sharded model's instance is written to: where its key lives.

    A new row whose key is its own ``FleetIdField`` and has no value yet gets a
    slot at random (kept on the instance, ``_fleet_slot``); its id, allocated
    when it is inserted, carries that slot.
    """
    key = shard_key(type(instance))
    if key is None:
        raise TypeError(f"{type(instance)._meta.label} is not sharded by a key.")
    return key.group.database_for_slot(key.instance_slot(instance))


#: Where an instance keeps the shard key it was loaded or saved with.
KEY_SEEN = "_dbfleet_key_seen"


def refuse_key_change(instance: models.Model) -> None:
    """Raise CrossShardError if a saved instance's shard key is not the one it was saved with."""
    key = shard_key(type(instance))
    if key is None or instance._state.adding or KEY_SEEN not in instance.__dict__:
        return
    before, now = instance.__dict__[KEY_SEEN], getattr(instance, key.attname)
    if before is not None and key.target.to_python(before) != key.target.to_python(now):
        raise CrossShardError(
            f"{type(instance)._meta.label} {instance.pk!r}: its shard key {key.field.name!r} "
            f"changed from {before!r} to {now!r}, and a saved row stays where its key put it. "
            "Create it anew under the new key and delete the old one."
        )
