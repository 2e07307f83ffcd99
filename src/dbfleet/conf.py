"""Read and validate ``settings.DBFLEET``; build and cache the topology.

Parsing never raises: every problem becomes a system check message (reported by
``manage.py check`` and before ``runserver``/``migrate``) and the bad entry is
left out, so a typo shows up as a check error with a hint, not as a traceback
at the first query.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS
from django.dispatch import receiver

from dbfleet.check_ids import CheckId
from dbfleet.topology import Replica, ShardGroup, Topology, split_route_key

KNOWN_KEYS = (
    "DEFAULT_DATABASE",
    "MAX_LAG",
    "PROBE_TIMEOUT",
    "READ_YOUR_WRITES",
    "READ_YOUR_WRITES_COOKIE",
    "READ_YOUR_WRITES_WINDOW",
    "RECOVERY_GRACE",
    "REPLICAS",
    "REPLICA_CHECK_INTERVAL",
    "REPLICA_COOLDOWN",
    "ROUTES",
    "SHARDS",
    "WRITE_GUARD",
)
SHARD_GROUP_KEYS = ("databases", "keys", "reference", "slots", "two_phase")
#: A ``FleetIdField`` has 10 bits for the slot.
MAX_SLOTS = 1024
SHARDS_SHAPE = (
    "Give each group its databases, the key field of each sharded model, the reference models "
    'and the number of slots: {"customers": {"databases": ["shard0", "shard1"], "keys": '
    '{"shop.Customer": "id", "shop.Order": "customer"}, "reference": ["shop.Product"], '
    '"slots": 1024}}.'
)


class WriteGuard(StrEnum):
    """``WRITE_GUARD``: what a write outside the transaction open on another database does."""

    WARN = "warn"
    RAISE = "raise"
    OFF = "off"


class ReadYourWrites(StrEnum):
    """``READ_YOUR_WRITES``: what keeps a user's next requests seeing their writes."""

    #: Reads stay on the primary for READ_YOUR_WRITES_WINDOW seconds.
    TIME = "time"
    #: Reads go to a replica that has replayed the write.
    POSITION = "position"


WRITE_GUARD_MODES = tuple(mode.value for mode in WriteGuard)
READ_YOUR_WRITES_MODES = tuple(mode.value for mode in ReadYourWrites)
#: Settings given in seconds: (default, what the number means for the hint, check id).
SECONDS = {
    "MAX_LAG": (
        5.0,
        "a replica further behind its primary than this is skipped",
        CheckId.BAD_MAX_LAG,
    ),
    "PROBE_TIMEOUT": (
        5.0,
        "dbfleet's own checks (replica health, `fleet status`, `fleet recover`) give up on a "
        "database that has not connected or answered in this long",
        CheckId.BAD_PROBE_TIMEOUT,
    ),
    "READ_YOUR_WRITES_WINDOW": (
        2.0,
        "after a write, ReadYourWritesMiddleware keeps that user's reads on the primary this long",
        CheckId.BAD_READ_YOUR_WRITES_WINDOW,
    ),
    "RECOVERY_GRACE": (
        60.0,
        "`fleet recover` waits this long before it rolls back a prepared transaction "
        "without a decision",
        CheckId.BAD_RECOVERY_GRACE,
    ),
    "REPLICA_CHECK_INTERVAL": (
        1.0,
        "each replica's reachability and lag is checked this often",
        CheckId.BAD_REPLICA_CHECK_INTERVAL,
    ),
    "REPLICA_COOLDOWN": (
        5.0,
        "a replica found unreachable or too far behind is skipped this long",
        CheckId.BAD_REPLICA_COOLDOWN,
    ),
}
COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
ROUTE_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)?", re.ASCII)
OBJ = "settings.DBFLEET"


@dataclass(frozen=True)
class FleetSettings:
    """The valid part of ``settings.DBFLEET`` and what was wrong with the rest."""

    configured: bool = False
    default_database: str = DEFAULT_DB_ALIAS
    routes: Mapping[str, str] = field(default_factory=dict)
    replicas: Mapping[str, tuple[Replica, ...]] = field(default_factory=dict)
    write_guard: WriteGuard | None = None  # None: "warn" when DEBUG is on or in tests, else "off"
    read_your_writes: ReadYourWrites = ReadYourWrites.TIME
    cookie: str = "dbfleet_primary"
    #: The settings in ``SECONDS``, by key.
    seconds: Mapping[str, float] = field(
        default_factory=lambda: {key: default for key, (default, *_) in SECONDS.items()}
    )
    shard_groups: tuple[ShardGroup, ...] = ()
    problems: tuple[CheckMessage, ...] = ()


def closest(value: object, choices: Iterable[str]) -> str | None:
    """The choice closest to ``value`` (a likely misspelling of it), or None."""
    if isinstance(value, str):
        matches = difflib.get_close_matches(value, list(choices), n=1)
        if matches:
            return matches[0]
    return None


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """``" Did you mean 'x'?"`` for a close match, else ``""``."""
    match = closest(value, choices)
    return f" Did you mean {match!r}?" if match else ""


def _choices(databases: Collection[str]) -> str:
    return ", ".join(repr(alias) for alias in sorted(databases))


def parse(raw: object, databases: Collection[str]) -> FleetSettings:
    """Validate a ``DBFLEET`` value against the aliases in ``DATABASES``."""
    if raw is None:
        return FleetSettings()
    if not isinstance(raw, Mapping):
        return FleetSettings(
            configured=True,
            problems=(
                Error(
                    f"DBFLEET must be a dict, not {type(raw).__name__}.",
                    hint='Set DBFLEET = {"ROUTES": {"app_label": "alias"}}, or remove it.',
                    obj=OBJ,
                    id=CheckId.DBFLEET_NOT_A_DICT,
                ),
            ),
        )

    problems: list[CheckMessage] = [
        Error(
            f"DBFLEET has an unknown key {key!r}.",
            hint=f"Valid keys: {', '.join(KNOWN_KEYS)}.{did_you_mean(key, KNOWN_KEYS)}",
            obj=OBJ,
            id=CheckId.UNKNOWN_KEY,
        )
        for key in raw
        if key not in KNOWN_KEYS
    ]

    default_database = raw.get("DEFAULT_DATABASE", DEFAULT_DB_ALIAS)
    if not isinstance(default_database, str) or default_database not in databases:
        problems.append(
            Error(
                f'DBFLEET["DEFAULT_DATABASE"] is {default_database!r}, which is not in DATABASES.',
                hint=f"Use one of {_choices(databases)}."
                + did_you_mean(default_database, databases),
                obj=OBJ,
                id=CheckId.UNKNOWN_DEFAULT_DATABASE,
            )
        )
        default_database = DEFAULT_DB_ALIAS

    replicas = _parse_replicas(raw.get("REPLICAS", {}), databases, problems)
    primary_of = {
        replica.alias: primary for primary, found in replicas.items() for replica in found
    }
    routes = _parse_routes(raw.get("ROUTES", {}), databases, primary_of, problems)
    shard_groups = _parse_shards(raw.get("SHARDS", {}), databases, primary_of, routes, problems)
    if default_database in primary_of:
        primary = primary_of[default_database]
        problems.append(
            Error(
                f'DBFLEET["DEFAULT_DATABASE"] is {default_database!r}, which is a replica of '
                f"{primary!r}.",
                hint=f'Replicas are never written to: set "DEFAULT_DATABASE": {primary!r}, its '
                "primary (unrouted models are still read from its replicas).",
                obj=OBJ,
                id=CheckId.DEFAULT_DATABASE_IS_A_REPLICA,
            )
        )
        default_database = DEFAULT_DB_ALIAS
    write_guard = raw.get("WRITE_GUARD")
    if write_guard is not None and write_guard not in WRITE_GUARD_MODES:
        problems.append(
            Error(
                f'DBFLEET["WRITE_GUARD"] is {write_guard!r}.',
                hint='Use "warn", "raise" or "off", or leave it out: then it warns when DEBUG '
                "is on and in tests." + did_you_mean(write_guard, WRITE_GUARD_MODES),
                obj=OBJ,
                id=CheckId.UNKNOWN_WRITE_GUARD,
            )
        )
        write_guard = None
    elif write_guard is not None:
        write_guard = WriteGuard(write_guard)
    seconds = {key: _parse_seconds(raw, key, problems) for key in SECONDS}
    mode = raw.get("READ_YOUR_WRITES", FleetSettings.read_your_writes)
    if mode not in READ_YOUR_WRITES_MODES:
        problems.append(
            Error(
                f'DBFLEET["READ_YOUR_WRITES"] is {mode!r}.',
                hint='Use "time" (after a write, a user reads from the primary for '
                'READ_YOUR_WRITES_WINDOW seconds) or "position" (from a replica that has '
                "replayed the write)." + did_you_mean(mode, READ_YOUR_WRITES_MODES),
                obj=OBJ,
                id=CheckId.UNKNOWN_READ_YOUR_WRITES,
            )
        )
        mode = FleetSettings.read_your_writes
    mode = ReadYourWrites(mode)
    cookie = raw.get("READ_YOUR_WRITES_COOKIE", FleetSettings.cookie)
    if not isinstance(cookie, str) or not COOKIE_NAME.fullmatch(cookie):
        problems.append(
            Error(
                f'DBFLEET["READ_YOUR_WRITES_COOKIE"] is {cookie!r}, which is not a cookie name.',
                hint="Use letters, digits and _ or -, such as the default 'dbfleet_primary'.",
                obj=OBJ,
                id=CheckId.BAD_COOKIE_NAME,
            )
        )
        cookie = FleetSettings.cookie
    return FleetSettings(
        configured=True,
        default_database=default_database,
        routes=routes,
        replicas=replicas,
        write_guard=write_guard,
        read_your_writes=mode,
        cookie=cookie,
        seconds=seconds,
        shard_groups=shard_groups,
        problems=tuple(problems),
    )


def _unquoted(value: object) -> str:
    """``" Write it without quotes: 2."`` for a number written as a string, else ``""``."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return ""
        return f" Write it without quotes: {number:g}."
    return ""


def _parse_seconds(raw: Mapping[str, Any], key: str, problems: list[CheckMessage]) -> float:
    default, meaning, check_id = SECONDS[key]
    value = raw.get(key, default)
    if type(value) in (int, float) and 0 <= value < float("inf"):
        return float(value)
    problems.append(
        Error(
            f'DBFLEET["{key}"] is {value!r}, which is not a number of seconds >= 0.',
            hint=f"Give a number of seconds >= 0 (default {default:g}): {meaning}."
            + _unquoted(value),
            obj=OBJ,
            id=check_id,
        )
    )
    return default


def _parse_routes(
    raw: object,
    databases: Collection[str],
    primary_of: Mapping[str, str],
    problems: list[CheckMessage],
) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        problems.append(
            Error(
                f'DBFLEET["ROUTES"] must be a dict, not {type(raw).__name__}.',
                hint='Map app labels or "app_label.Model" to database aliases: '
                '{"books": "books", "library.Loan": "loans"}.',
                obj=OBJ,
                id=CheckId.MALFORMED_ROUTES,
            )
        )
        return {}
    routes: dict[str, str] = {}
    for key, alias in raw.items():
        where = f'DBFLEET["ROUTES"][{key!r}]'
        if not isinstance(key, str) or not ROUTE_KEY.fullmatch(key):
            problems.append(
                Error(
                    f"{where} = {alias!r} is not a route: the key {key!r} is neither an app "
                    'label nor "app_label.Model".',
                    hint='A route maps an app label ("books") or a model ("books.Book") '
                    'to a database alias ("books").',
                    obj=OBJ,
                    id=CheckId.MALFORMED_ROUTES,
                )
            )
        elif not isinstance(alias, str):
            problems.append(
                Error(
                    f"{where} = {alias!r} is not a route: the value is not a database alias.",
                    hint=f"Give the alias as a string: one of {_choices(databases)}.",
                    obj=OBJ,
                    id=CheckId.MALFORMED_ROUTES,
                )
            )
        elif alias not in databases:
            problems.append(
                Error(
                    f"{where} names database {alias!r}, which is not in DATABASES.",
                    hint=f"Use one of {_choices(databases)}, or add {alias!r} to DATABASES."
                    + did_you_mean(alias, databases),
                    obj=OBJ,
                    id=CheckId.ROUTE_TO_UNKNOWN_DATABASE,
                )
            )
        elif alias in primary_of:
            problems.append(
                Error(
                    f"{where} routes to {alias!r}, which is a replica of {primary_of[alias]!r}.",
                    hint=f"Route to the primary, {key!r}: {primary_of[alias]!r}; reads go to "
                    "its replicas by themselves.",
                    obj=OBJ,
                    id=CheckId.ROUTE_TO_REPLICA,
                )
            )
        else:
            routes[key] = alias
    return routes


def _parse_shards(
    raw: object,
    databases: Collection[str],
    primary_of: Mapping[str, str],
    routes: Mapping[str, str],
    problems: list[CheckMessage],
) -> tuple[ShardGroup, ...]:
    def problem(message: str, hint: str, check_id: CheckId) -> None:
        problems.append(Error(message, hint=hint, obj=OBJ, id=check_id))

    if not isinstance(raw, Mapping):
        problem(
            f'DBFLEET["SHARDS"] must be a dict, not {type(raw).__name__}.',
            SHARDS_SHAPE,
            CheckId.MALFORMED_SHARDS,
        )
        return ()
    groups: list[ShardGroup] = []
    database_owner: dict[str, str] = {}
    model_owner: dict[str, str] = {}
    routed = {split_route_key(key) for key in routes}
    for name, entry in raw.items():
        where = f'DBFLEET["SHARDS"][{name!r}]'
        if not isinstance(name, str) or not isinstance(entry, Mapping):
            problem(f"{where} must be a dict with a name.", SHARDS_SHAPE, CheckId.MALFORMED_SHARDS)
            continue
        valid = True
        for key in entry:
            if key not in SHARD_GROUP_KEYS:
                valid = False
                problem(
                    f"{where} has an unknown key {key!r}.",
                    f"Valid keys: {', '.join(SHARD_GROUP_KEYS)}."
                    + did_you_mean(key, SHARD_GROUP_KEYS),
                    CheckId.MALFORMED_SHARDS,
                )
        aliases = entry.get("databases")
        if (
            not isinstance(aliases, list | tuple)
            or not aliases
            or not all(isinstance(alias, str) for alias in aliases)
            or len(set(aliases)) != len(aliases)
        ):
            problem(
                f'{where}["databases"] is {aliases!r}: it must be a list of distinct database '
                "aliases.",
                SHARDS_SHAPE,
                CheckId.MALFORMED_SHARDS,
            )
            continue
        for alias in aliases:
            if alias not in databases or alias in primary_of:
                valid = False
                what = (
                    f"a replica of {primary_of[alias]!r}"
                    if alias in primary_of
                    else "not in DATABASES"
                )
                problem(
                    f'{where}["databases"] names {alias!r}, which is {what}.',
                    f"Use primaries from {_choices(databases)}, or add {alias!r} to DATABASES."
                    + did_you_mean(alias, databases),
                    CheckId.SHARD_UNKNOWN_DATABASE,
                )
            elif alias in database_owner or alias in routes.values():
                valid = False
                other = (
                    f"shard group {database_owner[alias]!r}"
                    if alias in database_owner
                    else 'DBFLEET["ROUTES"]'
                )
                problem(
                    f'{where}["databases"] names {alias!r}, which {other} uses too.',
                    "Give each shard group databases of its own: a shard's rows are found by "
                    "its slot, and nothing else may live there.",
                    CheckId.SHARD_DATABASE_SHARED,
                )
            else:
                database_owner[alias] = name
        slots = entry.get("slots", MAX_SLOTS)
        if type(slots) is not int or not len(aliases) <= slots <= MAX_SLOTS:
            valid = False
            problem(
                f'{where}["slots"] is {slots!r}.',
                f"Use a whole number from {len(aliases)} (one per database) to {MAX_SLOTS} "
                "(what a FleetIdField can carry); the default is 1024. Fix it before any "
                "data exists: changing it moves every key.",
                CheckId.BAD_SHARD_SLOTS,
            )
        two_phase = entry.get("two_phase", False)
        if not isinstance(two_phase, bool):
            valid = False
            problem(
                f'{where}["two_phase"] is {two_phase!r}.',
                "Use True (reference models are written to every copy with a two-phase "
                "commit) or False.",
                CheckId.MALFORMED_SHARDS,
            )
        keys = entry.get("keys", {})
        reference = entry.get("reference", [])
        if not isinstance(keys, Mapping) or not all(
            isinstance(label, str) and isinstance(field_name, str)
            for label, field_name in keys.items()
        ):
            problem(
                f'{where}["keys"] is {keys!r}: it must map "app_label.Model" to the name of '
                "its key field.",
                SHARDS_SHAPE,
                CheckId.MALFORMED_SHARDS,
            )
            continue
        if not isinstance(reference, list | tuple) or not all(
            isinstance(label, str) for label in reference
        ):
            problem(
                f'{where}["reference"] is {reference!r}: it must be a list of "app_label.Model".',
                SHARDS_SHAPE,
                CheckId.MALFORMED_SHARDS,
            )
            continue
        labels: dict[str, str] = {}
        for label in (*keys, *reference):
            app_label, model_name = split_route_key(label)
            if model_name is None or not ROUTE_KEY.fullmatch(label):
                valid = False
                problem(
                    f'{where} names {label!r}, which is not "app_label.Model".',
                    SHARDS_SHAPE,
                    CheckId.MALFORMED_SHARDS,
                )
                continue
            lower = f"{app_label}.{model_name}"
            routed_by = (
                'DBFLEET["ROUTES"]'
                if (app_label, model_name) in routed or (app_label, None) in routed
                else None
            )
            placed_by = model_owner.get(lower) or ("this group" if lower in labels else routed_by)
            if placed_by:
                valid = False
                problem(
                    f"{where} names {label!r}, which {placed_by} places too.",
                    "Place each model once: in one shard group, as sharded (keys) or as a "
                    "reference model, and not in ROUTES.",
                    CheckId.MODEL_PLACED_TWICE,
                )
                continue
            labels[lower] = label
        if not valid:
            continue
        model_owner.update(dict.fromkeys(labels, f"shard group {name!r}"))
        groups.append(
            ShardGroup(
                name=name,
                databases=tuple(aliases),
                keys=MappingProxyType(
                    {lower: keys[label] for lower, label in labels.items() if label in keys}
                ),
                reference=frozenset(lower for lower, label in labels.items() if label not in keys),
                slots=slots,
                two_phase=two_phase,
            )
        )
    return tuple(groups)


#: The shape of REPLICAS, for the hints.
REPLICAS_SHAPE = (
    'Map each primary to a list of its replicas, each an alias or {"alias": ..., '
    '"weight": N}: {"default": ["replica1", {"alias": "replica2", "weight": 2}]}.'
)


def _parse_replicas(
    raw: object, databases: Collection[str], problems: list[CheckMessage]
) -> dict[str, tuple[Replica, ...]]:
    def malformed(what: str) -> None:
        problems.append(
            Error(
                f'DBFLEET["REPLICAS"]{what}.',
                hint=REPLICAS_SHAPE,
                obj=OBJ,
                id=CheckId.MALFORMED_REPLICAS,
            )
        )

    def unknown(alias: str, role: str) -> None:
        problems.append(
            Error(
                f'DBFLEET["REPLICAS"] names {role} {alias!r}, which is not in DATABASES.',
                hint=f"Use one of {_choices(databases)}, or add {alias!r} to DATABASES."
                + did_you_mean(alias, databases),
                obj=OBJ,
                id=CheckId.REPLICAS_UNKNOWN_DATABASE,
            )
        )

    if not isinstance(raw, Mapping):
        malformed(f" must be a dict, not {type(raw).__name__}")
        return {}
    seen: dict[str, str] = {}
    replicas: dict[str, tuple[Replica, ...]] = {}
    for primary, entries in raw.items():
        if not isinstance(primary, str):
            malformed(f" has a key {primary!r} that is not a database alias")
            continue
        if primary not in databases:
            unknown(primary, "primary")
            continue
        if not isinstance(entries, list | tuple):
            malformed(f"[{primary!r}] must be a list, not {type(entries).__name__}")
            continue
        found: list[Replica] = []
        for index, entry in enumerate(entries):
            replica = _parse_replica(entry, f'DBFLEET["REPLICAS"][{primary!r}][{index}]', problems)
            if replica is None:
                continue
            if replica.alias not in databases:
                unknown(replica.alias, "replica")
            elif replica.alias in seen:
                problems.append(
                    Error(
                        f"Replica {replica.alias!r} is listed under {seen[replica.alias]!r} "
                        f'and again under {primary!r} in DBFLEET["REPLICAS"].',
                        hint="A replica copies exactly one primary; keep it under that one.",
                        obj=OBJ,
                        id=CheckId.REPLICA_UNDER_TWO_PRIMARIES,
                    )
                )
            else:
                seen[replica.alias] = primary
                found.append(replica)
        replicas[primary] = tuple(found)
    for primary in list(replicas):
        if primary in seen:
            problems.append(
                Error(
                    f"{primary!r} is a replica of {seen[primary]!r} and also has replicas "
                    'in DBFLEET["REPLICAS"].',
                    hint=f"Move {', '.join(repr(r.alias) for r in replicas[primary])} under "
                    f"{seen[primary]!r}, the primary that {primary!r} copies; chained replicas "
                    "are not supported.",
                    obj=OBJ,
                    id=CheckId.CHAINED_REPLICA,
                )
            )
            del replicas[primary]
    return replicas


def _parse_replica(entry: object, where: str, problems: list[CheckMessage]) -> Replica | None:
    """The replica ``entry`` describes, or None after adding each of its problems."""
    if isinstance(entry, str):
        return Replica(entry)
    if not isinstance(entry, Mapping):
        problems.append(
            Error(
                f'{where} is {entry!r}, which is neither a database alias nor a dict with "alias".',
                hint=REPLICAS_SHAPE,
                obj=OBJ,
                id=CheckId.MALFORMED_REPLICAS,
            )
        )
        return None
    valid = True
    fixed = dict(entry)
    for key in entry:
        if key in ("alias", "weight"):
            continue
        valid = False
        meant = closest(key, ("alias", "weight"))
        value = fixed.pop(key)
        if meant and meant not in entry:
            fixed[meant] = value
        problems.append(
            Error(
                f"{where} = {dict(entry)!r} has the key {key!r}: a replica entry has only "
                '"alias" and "weight".' + (f" Did you mean {meant!r}?" if meant else ""),
                hint=f"Use {fixed!r}.",
                obj=OBJ,
                id=CheckId.UNKNOWN_REPLICA_KEY,
            )
        )
    alias = entry.get("alias")
    if not isinstance(alias, str):
        valid = False
        if "alias" in entry:
            what = f'its "alias" {alias!r} is not a database alias'
        else:
            what = 'it has no "alias"'
        named = {"alias": "replica2", **{k: v for k, v in fixed.items() if k != "alias"}}
        problems.append(
            Error(
                f"{where} = {dict(entry)!r}: {what}.",
                hint=f"Name the replica's database as a string: {named!r}.",
                obj=OBJ,
                id=CheckId.MALFORMED_REPLICAS,
            )
        )
    weight = entry.get("weight", 1)
    if type(weight) is not int or weight < 1:
        valid = False
        problems.append(
            Error(
                f'{where}["weight"] is {weight!r}, which is not a whole number >= 1 (a weight '
                "is the replica's share of the reads, relative to the other replicas).",
                hint=_weight_fix(fixed, weight),
                obj=OBJ,
                id=CheckId.BAD_REPLICA_WEIGHT,
            )
        )
    if not valid:
        return None
    assert isinstance(alias, str) and type(weight) is int  # For mypy: checked above.
    return Replica(alias, weight)


def _weight_fix(entry: Mapping[Any, Any], weight: object) -> str:
    """The hint for a bad replica weight: the entry as it should be written."""

    def use(number: int) -> str:
        return repr({**entry, "weight": number})

    if isinstance(weight, str):
        try:
            number = round(float(weight))
        except (ValueError, OverflowError):
            return f"Use a whole number, such as {use(1)}."
        return f"Write the number without quotes: {use(max(1, number))}."
    if isinstance(weight, bool):
        return f"Use a number, not {weight!r}: {use(1)}."
    if isinstance(weight, int):
        alias = entry.get("alias")
        return (
            f"Use a weight >= 1, such as {use(1)}. To send no reads to {alias!r}, remove it "
            "from the list."
        )
    if isinstance(weight, float) and math.isfinite(weight):
        return (
            f"Weights are whole numbers: use {use(max(1, round(weight)))}, or scale every "
            "weight of the group to whole numbers."
        )
    return f"Use a whole number, such as {use(1)}."


@functools.cache
def fleet_settings() -> FleetSettings:
    """The parsed ``settings.DBFLEET``, cached until a setting it reads changes."""
    return parse(getattr(settings, "DBFLEET", None), tuple(settings.DATABASES))


@functools.cache
def get_topology() -> Topology:
    """The fleet's topology, cached until ``DBFLEET``, ``DATABASES`` or the apps change."""
    config = fleet_settings()
    return Topology.build(
        databases=settings.DATABASES,
        default_database=config.default_database,
        routes=config.routes,
        replicas=config.replicas,
        models=apps.get_models(include_auto_created=True),
        shard_groups=config.shard_groups,
    )


class _Answers(dict[type, str | None]):
    """``model class -> router answer`` for the current topology, emptied on reset.

    The router reads this with one dictionary lookup, without a call to
    ``get_topology()``. Only installed models are stored: historical models made
    by migrations are answered by label and not kept alive.
    """

    def __missing__(self, model: type) -> str | None:
        models = get_topology().models
        answer = models[model]
        if model in models:
            self[model] = answer
        return answer


ANSWERS = _Answers()

#: The settings everything dbfleet caches is derived from.
WATCHED_SETTINGS = frozenset({"DBFLEET", "DATABASES", "INSTALLED_APPS", "MIGRATION_MODULES"})
#: How to empty each cache derived from the settings that lives outside this module.
_CLEARS: list[Callable[[], None]] = []


def clears_on_reset(clear: Callable[[], None]) -> Callable[[], None]:
    """Have ``reset()`` call ``clear`` too; returns it, so that it works as a decorator.

    A module that keeps something derived from the settings (a table built from
    the topology, the migrations on disk) registers its clear function here
    rather than receiving ``setting_changed`` itself: then one reset forgets
    everything at once, and nothing can be left over from the old settings.
    """
    if clear not in _CLEARS:
        _CLEARS.append(clear)
    return clear


def reset() -> None:
    """Forget the parsed settings, the topology and every cache registered to clear with them."""
    fleet_settings.cache_clear()
    get_topology.cache_clear()
    ANSWERS.clear()
    for clear in _CLEARS:
        clear()


@receiver(setting_changed)
def _setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in WATCHED_SETTINGS:
        reset()
