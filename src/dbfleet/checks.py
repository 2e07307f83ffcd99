"""System checks. Their ids, one per problem, are in ``dbfleet.check_ids``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.core.management.commands import migrate
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, models, router
from django.db.migrations.recorder import MigrationRecorder
from django.db.utils import load_backend

from dbfleet import vendors
from dbfleet.check_ids import CheckId
from dbfleet.conf import OBJ, did_you_mean, fleet_settings, get_topology
from dbfleet.migrating.lint import Kind, disk_migrations, lint
from dbfleet.migrating.plan import first_line, migratable_databases, runs_on
from dbfleet.replicas import Health, replica_health
from dbfleet.routing import Router, relations
from dbfleet.sharding.query import ShardedManager, co_located
from dbfleet.topology import ShardGroup, Topology, split_route_key

TAG = "dbfleet"


@register(TAG)
def check_settings(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """E001-E004, E007-E011, E019-E030: problems found while reading ``DBFLEET``."""
    return list(fleet_settings().problems)


@register(TAG, Tags.models)
def check_route_targets(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E005, E006, E016: every route names an installed app or a concrete model."""
    errors: list[CheckMessage] = []
    labels = [config.label for config in apps.get_app_configs()]
    for key in fleet_settings().routes:
        app_label, model_name = split_route_key(key)
        where = f'DBFLEET["ROUTES"][{key!r}]'
        try:
            app_config = apps.get_app_config(app_label)
        except LookupError:
            errors.append(
                Error(
                    f"{where} names app {app_label!r}, which is not installed.",
                    hint="Route an app label from INSTALLED_APPS (an AppConfig's label, "
                    f"not its module path).{did_you_mean(app_label, labels)}",
                    obj=OBJ,
                    id=CheckId.ROUTE_TO_UNKNOWN_APP,
                )
            )
            continue
        if model_name is None:
            continue
        try:
            model = app_config.get_model(model_name)
        except LookupError:
            names = [model._meta.object_name or "" for model in app_config.get_models()]
            errors.append(
                Error(
                    f"{where} names model {key.partition('.')[2]!r}, which app {app_label!r} "
                    "does not have.",
                    hint=f"Models of {app_label!r}: {', '.join(sorted(names)) or 'none'}."
                    + did_you_mean(key.partition(".")[2], names),
                    obj=OBJ,
                    id=CheckId.ROUTE_TO_UNKNOWN_MODEL,
                )
            )
            continue
        owner: Any = model._meta.auto_created or model._meta.concrete_model
        if owner is not model:
            kind = "proxy" if model._meta.proxy else "auto-created"
            errors.append(
                Error(
                    f"{where} routes {kind} model {model._meta.label!r}, which shares its "
                    f"database with {owner._meta.label!r} and always lives where it does.",
                    hint=f'Route "{owner._meta.label}" instead, or remove this route.',
                    obj=OBJ,
                    id=CheckId.ROUTE_TO_DEPENDENT_MODEL,
                )
            )
    return errors


def _router_path(instance: object) -> str:
    return f"{type(instance).__module__}.{type(instance).__qualname__}"


@register(TAG)
def check_router_installed(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E012, E013: ``dbfleet.Router`` is installed and no earlier router overrides it."""
    if not fleet_settings().configured:
        return []
    routers = router.routers
    position = next((i for i, r in enumerate(routers) if isinstance(r, Router)), None)
    if position is None:
        return [
            Error(
                "DBFLEET is set but dbfleet.Router is not in DATABASE_ROUTERS, so no route "
                "is applied.",
                hint='Add "dbfleet.Router" to DATABASE_ROUTERS, first unless another router '
                "must decide before it.",
                obj="settings.DATABASE_ROUTERS",
                id=CheckId.ROUTER_NOT_INSTALLED,
            )
        ]
    topology = get_topology()
    errors: list[CheckMessage] = []
    for earlier in routers[:position]:
        for model in apps.get_models():
            overridden = _overridden(earlier, model, topology)
            if overridden:
                errors.append(
                    Error(
                        f"{_router_path(earlier)} comes before dbfleet.Router in "
                        f"DATABASE_ROUTERS and {overridden}",
                        hint='Put "dbfleet.Router" first in DATABASE_ROUTERS, or make '
                        f"{_router_path(earlier)} return None for models dbfleet routes.",
                        obj=model,
                        id=CheckId.EARLIER_ROUTER_OVERRIDES,
                    )
                )
    return errors


def _overridden(earlier: Any, model: type[models.Model], topology: Topology) -> str:
    """How ``earlier`` contradicts dbfleet for ``model``, or ``""``."""
    expected = topology.models[model]
    if expected is None:
        return ""
    for method in ("db_for_read", "db_for_write"):
        answer = getattr(earlier, method, None) and getattr(earlier, method)(model)
        if answer is not None and answer != expected:
            return f"its {method}() sends {model._meta.label} to {answer!r}, not {expected!r}."
    return ""


def _is_auth_to_contenttypes(model: type[models.Model], related: type[models.Model]) -> bool:
    return model._meta.app_label == "auth" and related._meta.app_label == "contenttypes"


@register(TAG, Tags.models)
def check_relations(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """E014, W002: relations between models in different groups; E015: auth vs contenttypes."""
    topology = get_topology()
    errors: list[CheckMessage] = []
    for model in apps.get_models():
        if model._meta.proxy or topology.shard_group_for(model) is not None:
            continue  # A sharded or reference model's relations: check_shard_models.
        here = topology.database_for_model(model)
        for field, related in relations(model):
            there = topology.database_for_model(related)
            if topology.same_group(here, there):
                continue
            if _is_auth_to_contenttypes(model, related):
                errors.append(
                    Error(
                        f"auth lives in {here!r} and contenttypes in {there!r}: auth's "
                        "permissions refer to content types, and both are created together "
                        "by migrate's post_migrate handlers.",
                        hint=f'Route "auth" and "contenttypes" to one database, e.g. '
                        f'"contenttypes": {here!r} in DBFLEET["ROUTES"].',
                        obj=field,
                        id=CheckId.AUTH_APART_FROM_CONTENTTYPES,
                    )
                )
                continue
            where = (
                f"{model._meta.label}.{field.name} relates {model._meta.label} (database "
                f"{here!r}) to {related._meta.label} (database {there!r})"
            )
            if getattr(field, "db_constraint", True):
                errors.append(
                    Error(
                        f"{where}; a foreign key constraint cannot span two databases.",
                        hint=f"Route {model._meta.label} and {related._meta.label} to one "
                        "database, or make the relation soft: "
                        + (
                            "a through model in one of the databases holding plain id fields."
                            if field.many_to_many
                            else f"db_constraint=False, assigned by id ({field.name}_id = ...), "
                            f"or a plain {field.name}_id field."
                        ),
                        obj=field,
                        id=CheckId.RELATION_ACROSS_GROUPS,
                    )
                )
            else:
                errors.append(
                    Warning(
                        f"{where}; without a constraint it can be read, but dbfleet.Router "
                        "refuses assigning an instance across databases, and joins across "
                        "it (select_related, filters on its fields) fail.",
                        hint=f"Assign it by id ({field.name}_id = obj.pk) and query each side "
                        "on its own, or route both models to one database.",
                        obj=field,
                        id=CheckId.SOFT_RELATION_ACROSS_GROUPS,
                    )
                )
    return errors


@register(TAG)
def check_replica_mirrors(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W001: in tests a replica mirrors its primary (dbfleet sets TEST["MIRROR"] if unset)."""
    warnings: list[CheckMessage] = []
    for primary, replicas in fleet_settings().replicas.items():
        for replica in replicas:
            test_settings = settings.DATABASES[replica.alias].get("TEST") or {}
            mirror = test_settings.get("MIRROR")
            if mirror != primary:
                warnings.append(
                    Warning(
                        f"Replica {replica.alias!r} mirrors {mirror!r} in tests, not its "
                        f"primary {primary!r}: its reads in tests would not see the test data "
                        "written to the primary.",
                        hint=f'Set DATABASES["{replica.alias}"]["TEST"] = '
                        f'{{"MIRROR": "{primary}"}}.',
                        obj="settings.DATABASES",
                        id=CheckId.REPLICA_MIRRORS_ANOTHER_DATABASE,
                    )
                )
    return warnings


#: The check each kind of migration hint problem is reported as.
MIGRATION_CHECKS: dict[Kind, tuple[type[Error] | type[Warning], CheckId]] = {
    Kind.DB_HINT: (Error, CheckId.DB_HINT),
    Kind.UNKNOWN_TARGET: (Error, CheckId.HINT_TO_UNKNOWN_DATABASE),
    Kind.REPLICA_TARGET: (Error, CheckId.HINT_TO_REPLICA),
    Kind.UNKNOWN_MODEL: (Error, CheckId.HINT_TO_UNKNOWN_MODEL),
    # An error since the operation would run on the wrong database: was UNHINTED_OPERATION,
    # a warning (dbfleet.W003, now never reported; ids are not reused).
    Kind.UNHINTED: (Error, CheckId.UNHINTED_OPERATION_IN_SPLIT_APP),
}


@register(TAG)
def check_migration_hints(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E017, E018, E031, E032, E034: migration hints that crash, route nowhere, or are missing."""
    messages: list[CheckMessage] = []
    for finding in lint():
        level, check_id = MIGRATION_CHECKS[finding.kind]
        messages.append(
            level(
                f"{finding.location()} {finding.problem}.",
                hint=f"Use {finding.fix}.",
                obj=f"{finding.app_label}.{finding.migration}",
                id=check_id,
            )
        )
    return messages


# Tagged "database" only: Django 6 runs tagged checks on every database, and
# `check --tag dbfleet` should not connect anywhere.
@register(Tags.database)
def check_prepared_transactions(
    app_configs: Sequence[Any] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[CheckMessage]:
    """W004: PostgreSQL refuses two-phase commit until prepared transactions are enabled."""
    if databases is None:
        return []
    topology = get_topology()
    warnings: list[CheckMessage] = []
    for alias in databases:
        connection = connections[alias]
        if not vendors.of(connection).two_phase or topology.is_replica(alias):
            continue
        if vendors.of(connection).prepared_transactions_limit(connection) == 0:
            warnings.append(
                Warning(
                    f"Database {alias!r} (PostgreSQL) has max_prepared_transactions = 0, so it "
                    "cannot take part in dbfleet.atomic(..., two_phase=True).",
                    hint="Run ALTER SYSTEM SET max_prepared_transactions = 64 (at least the "
                    "number of two-phase transactions that may run at once) and restart the "
                    "server. If you never use two_phase=True, add 'dbfleet.W004' to "
                    "SILENCED_SYSTEM_CHECKS.",
                    obj=f"settings.DATABASES[{alias!r}]",
                    id=CheckId.NO_PREPARED_TRANSACTIONS,
                )
            )
    return warnings


def _same_file(mine: object, theirs: object) -> bool | None:
    """Whether two SQLite NAMEs are one file (a str or a Path, relative or not); None: unknown."""
    if not mine or not theirs:
        return None
    return os.path.realpath(str(mine)) == os.path.realpath(str(theirs))


@register(TAG)
def check_replica_databases(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W005, W006: what the settings alone show to be wrong with a replica's database."""
    found: list[CheckMessage] = []
    for primary, replicas in fleet_settings().replicas.items():
        for replica in replicas:
            config = settings.DATABASES.get(replica.alias, {})
            vendor = vendors.of_engine(load_backend(config["ENGINE"]).DatabaseWrapper.vendor)
            obj = f"settings.DATABASES[{replica.alias!r}]"
            theirs = settings.DATABASES.get(primary, {}).get("NAME")
            # A ClickHouse replica (it replicates not either) is dbfleet.E045's.
            sqlite_like = vendor.transactional and not vendor.replicates
            if sqlite_like and _same_file(config.get("NAME"), theirs) is False:
                found.append(
                    Warning(
                        f"Replica {replica.alias!r} of {primary!r} is the SQLite file "
                        f"{config.get('NAME')!r}, not its primary's: SQLite does not replicate, "
                        "so its reads would miss every write to the primary.",
                        hint=f"Give {replica.alias!r} the primary's NAME (a second alias of one "
                        f"file), or remove it from DBFLEET['REPLICAS'][{primary!r}].",
                        obj=obj,
                        id=CheckId.REPLICA_ON_ANOTHER_SQLITE_FILE,
                    )
                )
            option = vendor.connect_timeout_option
            if option is not None and option not in (config.get("OPTIONS") or {}):
                found.append(
                    Warning(
                        f"Replica {replica.alias!r} has no connect timeout: a server that "
                        "accepts the connection and never answers would hang every read "
                        "sent there, instead of its failing over to the primary.",
                        hint=f'Set DATABASES[{replica.alias!r}]["OPTIONS"][{option!r}] = 5 '
                        "(seconds).",
                        obj=obj,
                        id=CheckId.REPLICA_WITHOUT_CONNECT_TIMEOUT,
                    )
                )
    return found


@register(Tags.database)
def check_replicas_replicate(
    app_configs: Sequence[Any] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[CheckMessage]:
    """W007: a replica whose database is writable and replicates from nothing."""
    if databases is None:
        return []
    found: list[CheckMessage] = []
    for health in replica_health(databases):
        if health.state is Health.NOT_A_REPLICA:
            found.append(
                Warning(
                    f"{health.problem}. dbfleet sends no read there.",
                    hint=f"Point DATABASES[{health.alias!r}] at a replica of {health.primary!r} "
                    f"(its HOST and PORT), or remove it from DBFLEET['REPLICAS'].",
                    obj=f"settings.DATABASES[{health.alias!r}]",
                    id=CheckId.REPLICA_DOES_NOT_REPLICATE,
                )
            )
    return found


def inside_migrate() -> bool:
    """Whether the checks run inside Django's ``migrate`` (or a subclass, as dbfleet's worker).

    The check framework is not told which command runs it, so look up the stack.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if isinstance(frame.f_locals.get("self"), migrate.Command):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


@register(Tags.database)
def check_unapplied_migrations(
    app_configs: Sequence[Any] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[CheckMessage]:
    """W008, W009: a database with unapplied migrations, or one that could not be asked.

    Plain ``manage.py migrate`` migrates one database and ``runserver`` only
    looks at ``default``; this names every database left behind. It reads one
    table per database, on a probe connection: a server that is down costs at
    most ``PROBE_TIMEOUT``. Django's ``migrate`` runs the database checks of
    the database it is about to migrate: there, both would only be noise.
    """
    if databases is None or inside_migrate():
        return []
    migratable = set(migratable_databases())
    chosen = [alias for alias in databases if alias in migratable]
    graph = disk_migrations().graph
    found: list[CheckMessage] = []
    with vendors.probing(chosen, fleet_settings().seconds["PROBE_TIMEOUT"]):
        for alias in chosen:
            obj = f"settings.DATABASES[{alias!r}]"
            try:
                applied = set(MigrationRecorder(connections[alias]).applied_migrations())
            except DatabaseError as error:
                found.append(
                    Warning(
                        f"Database {alias!r} could not be asked which migrations it has "
                        f"({first_line(error)}), so dbfleet.W008 cannot say whether it is "
                        "up to date.",
                        hint="Check that its server is up; `manage.py fleet status` shows "
                        "every database.",
                        obj=obj,
                        id=CheckId.MIGRATIONS_UNKNOWN,
                    )
                )
                continue
            pending = [
                migration
                for key, migration in graph.nodes.items()
                if key not in applied
                # A squashed migration is applied where everything it replaces is.
                and not (migration.replaces and set(migration.replaces) <= applied)
                and runs_on(alias, migration)
            ]
            if pending:
                apps = sorted({migration.app_label for migration in pending})
                found.append(
                    Warning(
                        f"Database {alias!r} has {len(pending)} unapplied migration(s) "
                        f"(apps: {', '.join(apps)}). `manage.py migrate` migrates only "
                        f"{DEFAULT_DB_ALIAS!r} unless told --database.",
                        hint="Run `manage.py fleet migrate`: it migrates every database.",
                        obj=obj,
                        id=CheckId.UNAPPLIED_MIGRATIONS,
                    )
                )
    return found


@register(TAG, Tags.models)
def check_shard_models(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E040-E044, W010: each shard group's engines, and its models' keys, managers and fields."""
    errors: list[CheckMessage] = []
    for group in get_topology().shard_groups.values():
        where = f'DBFLEET["SHARDS"][{group.name!r}]'
        engines = {alias: connections[alias].vendor for alias in group.databases}
        if len(set(engines.values())) > 1:
            listed = ", ".join(f"{alias} ({vendor})" for alias, vendor in engines.items())
            errors.append(
                Error(
                    f"{where} puts one model's rows on different engines: {listed}.",
                    hint="A shard group runs the same SQL on each database and merges the "
                    "answers: give it databases of one engine.",
                    obj=OBJ,
                    id=CheckId.SHARD_ENGINES_DIFFER,
                )
            )
        for label in sorted({*group.keys, *group.reference}):
            try:
                model = apps.get_model(label)
            except (LookupError, ValueError):
                errors.append(
                    Error(
                        f"{where} names model {label!r}, which is not installed.",
                        hint='Name models as "app_label.ModelName", of an app in INSTALLED_APPS.',
                        obj=OBJ,
                        id=CheckId.SHARD_UNKNOWN_MODEL_OR_KEY,
                    )
                )
                continue
            errors += _check_shard_model(group, model, where)
    return errors


def _check_shard_model(
    group: ShardGroup, model: type[models.Model], where: str
) -> list[CheckMessage]:
    meta = model._meta
    errors: list[CheckMessage] = []
    if not isinstance(model._default_manager, ShardedManager):
        errors.append(
            Error(
                f"{meta.label} is in shard group {group.name!r}, and its default manager "
                f"{model._default_manager.name!r} is a {type(model._default_manager).__name__}: "
                "its queries would run on one database, whatever their key.",
                hint="Give it objects = dbfleet.ShardedManager() (first, if it has several).",
                obj=model,
                id=CheckId.SHARDED_WITHOUT_MANAGER,
            )
        )
    key_name = group.keys.get(meta.label_lower)
    if key_name is None:  # A reference model: a full copy on every database of the group.
        key = None
    else:
        try:
            key = meta.get_field(key_name)
        except FieldDoesNotExist:
            key = None
        if key is None or not key.concrete or key.many_to_many:
            names = [field.name for field in meta.concrete_fields]
            errors.append(
                Error(
                    f'{where}["keys"][{meta.label!r}] is {key_name!r}, which is not a field '
                    f"of {meta.label} with a column.",
                    hint=f"Name one of its fields: {', '.join(names)}."
                    + did_you_mean(key_name, names),
                    obj=model,
                    id=CheckId.SHARD_UNKNOWN_MODEL_OR_KEY,
                )
            )
            return errors
        if isinstance(meta.pk, models.AutoField | models.BigAutoField | models.SmallAutoField):
            errors.append(
                Error(
                    f"{meta.label} is sharded and its primary key {meta.pk.name!r} is "
                    "auto-incremented: each shard counts on its own, and their ids collide.",
                    hint="Use id = dbfleet.FleetIdField(primary_key=True): unique on every "
                    "shard, and it carries the row's slot.",
                    obj=meta.pk,
                    id=CheckId.SHARDED_AUTO_PRIMARY_KEY,
                )
            )
        errors += _unique_without_key(model, key)
    errors += _shard_relations(group, model, sharded=key is not None)
    return errors


def _unique_without_key(model: type[models.Model], key: Any) -> list[CheckMessage]:
    """W010: what is unique per shard only (a FleetIdField is unique everywhere)."""
    meta = model._meta
    uniques: list[tuple[str, tuple[str, ...]]] = [
        (field.name, (field.name,))
        for field in meta.concrete_fields
        if field.unique and not getattr(field, "carries_slot", False)
    ]
    uniques += [(repr(tuple(names)), tuple(names)) for names in meta.unique_together]
    uniques += [
        (constraint.name, tuple(constraint.fields))
        for constraint in meta.constraints
        if isinstance(constraint, models.UniqueConstraint) and constraint.fields
    ]
    return [
        Warning(
            f"{meta.label}: {what} is unique on each shard only, since it leaves out the "
            f"shard key {key.name!r}: two shards can hold the same value.",
            hint=f"Add {key.name!r} to it, or use a dbfleet.FleetIdField (unique everywhere)"
            " if it is the primary key.",
            obj=model,
            id=CheckId.UNIQUE_WITHOUT_SHARD_KEY,
        )
        for what, names in uniques
        if key.name not in names and key.attname not in names
    ]


def _shard_relations(
    group: ShardGroup, model: type[models.Model], sharded: bool
) -> list[CheckMessage]:
    """E044: what a shard cannot hold a foreign key's target for."""
    topology = get_topology()
    errors: list[CheckMessage] = []
    for field, related in relations(model):
        there = topology.shard_group_for(related)
        if there is group and related._meta.label_lower in group.reference:
            continue  # A copy on every shard.
        if there is group and not sharded:
            problem = (
                f"a reference model, copied to every shard, refers to {related._meta.label}, "
                "whose rows are each on one shard"
            )
            fix = f"make {related._meta.label} a reference model too, or drop the relation"
        elif there is group and not co_located(field, group):
            if not getattr(field, "db_constraint", True):
                continue  # Soft: queries through it are refused, assigning by id works.
            problem = (
                f"it is not {model._meta.label}'s shard key, so the {related._meta.label} it "
                "refers to may be on another shard"
            )
            fix = "make it the shard key, or the relation soft with db_constraint=False"
        elif there is group:
            continue  # Co-located by the key.
        elif not getattr(field, "db_constraint", True):
            continue  # Soft, and assigned by id: the router still keeps each side apart.
        else:
            home = (
                f"shard group {there.name!r}"
                if there
                else repr(topology.database_for_model(related))
            )
            problem = f"its target {related._meta.label} lives in {home}, not on these shards"
            fix = (
                f"make {related._meta.label} a reference model of {group.name!r}, or make the "
                "relation soft with db_constraint=False (and assign it by id)"
            )
        errors.append(
            Error(
                f"{model._meta.label}.{field.name}: {problem}.",
                hint=f"A shard holds its own rows and the group's reference models only: {fix}.",
                obj=field,
                id=CheckId.SHARD_RELATION,
            )
        )
    return errors


def _without_transactions() -> list[str]:
    """The databases without transactions (ClickHouse), known from their settings alone."""
    found = []
    for alias, config in settings.DATABASES.items():
        try:
            vendor = vendors.of_settings(config)
        except ImproperlyConfigured:
            continue  # A backend that cannot load: Django says so when it connects.
        if not vendor.transactional:
            found.append(alias)
    return found


@register(TAG)
def check_clickhouse_databases(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E045-E049: what a ClickHouse database cannot be in the fleet; chDB's data directory."""
    errors: list[CheckMessage] = []
    clickhouse = set(_without_transactions())
    fleet = fleet_settings()
    for primary, replicas in fleet.replicas.items():
        listed = {primary: f"gives {primary!r}, a ClickHouse database, replicas"}
        for replica in replicas:
            listed[replica.alias] = (
                f"lists {replica.alias!r}, a ClickHouse database, as a replica of {primary!r}"
            )
        for alias, what in listed.items():
            if alias in clickhouse:
                errors.append(
                    Error(
                        f"DBFLEET['REPLICAS'] {what}: "
                        "dbfleet reads from a replica what its primary's transactions "
                        "committed, and ClickHouse has no transactions (it replicates on its "
                        "own, table by table).",
                        hint=f"Remove {alias!r} from DBFLEET['REPLICAS']; route ClickHouse "
                        "models to it with DBFLEET['ROUTES'].",
                        obj=OBJ,
                        id=CheckId.CLICKHOUSE_IN_REPLICAS,
                    )
                )
    for group in get_topology().shard_groups.values():
        for alias in group.databases:
            if alias in clickhouse:
                errors.append(
                    Error(
                        f"DBFLEET['SHARDS'][{group.name!r}] names {alias!r}, a ClickHouse "
                        "database: a shard group writes its reference models to every "
                        "database in one dbfleet.atomic, which ClickHouse, without "
                        "transactions, cannot make atomic.",
                        hint=f"Take {alias!r} out of the shard group: route ClickHouse models "
                        "to it with DBFLEET['ROUTES'] (ClickHouse spreads a table over shards "
                        "itself, with a Distributed table).",
                        obj=OBJ,
                        id=CheckId.CLICKHOUSE_IN_SHARD_GROUP,
                    )
                )
    if fleet.default_database in clickhouse:
        errors.append(
            Error(
                f"DEFAULT_DATABASE is {fleet.default_database!r}, a ClickHouse database: "
                "unrouted models (auth, contenttypes, sessions, dbfleet's own) live and "
                "migrate there, and dbfleet.atomic(two_phase=True) records its decisions "
                "there; they need transactions and unique keys, which ClickHouse has not.",
                hint="Set DBFLEET['DEFAULT_DATABASE'] (or DATABASES['default']) to a "
                "PostgreSQL, MariaDB/MySQL or SQLite database, and route the ClickHouse "
                f"models to {fleet.default_database!r} with DBFLEET['ROUTES'].",
                obj=OBJ,
                id=CheckId.CLICKHOUSE_DEFAULT_DATABASE,
            )
        )
    paths: dict[str, str] = {}
    for alias, config in settings.DATABASES.items():
        path = vendors.embedded_data_directory(config)
        if path == "":
            errors.append(
                Error(
                    f"DATABASES[{alias!r}] is on chDB and has no OPTIONS['path']: chDB keeps "
                    "its databases in a data directory, and NAME is a database in it.",
                    hint=f"Set DATABASES[{alias!r}]['OPTIONS'] = "
                    "{'path': BASE_DIR / 'var' / 'warehouse'}.",
                    obj=f"settings.DATABASES[{alias!r}]",
                    id=CheckId.CHDB_WITHOUT_PATH,
                )
            )
        elif path is not None:
            paths[alias] = path
    if len(set(paths.values())) > 1:
        named = ", ".join(f"{alias!r} ({path})" for alias, path in paths.items())
        first = next(iter(paths.values()))
        errors.append(
            Error(
                f"These chDB databases have different data directories: {named}. chDB "
                "opens one data directory per process, so only the first one used would work.",
                hint=f"Give them all OPTIONS['path'] = {first!r}: each NAME is a database of "
                "its own in it.",
                obj="settings.DATABASES",
                id=CheckId.CHDB_PATHS_DIFFER,
            )
        )
    return errors


@register(TAG, Tags.models)
def check_synced_models(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E050-E054: each synced model's source and fields, and where it and its source live."""
    from dbfleet.analytics.spec import spec_of, synced_models

    errors: list[CheckMessage] = []
    for model in synced_models():
        spec = spec_of(model)
        if spec is None:  # pragma: no cover  (synced_models() has only synced models)
            continue
        label = model._meta.label
        if spec.source is None:
            labels = [m._meta.label for m in apps.get_models()]
            errors.append(
                Error(
                    (
                        f"{label} is a synced model, and its source {spec.source_label!r} "
                        "cannot be found"
                        if spec.source_label
                        else f"{label} is a synced model without a source"
                    )
                    + f": {spec.problem}.",
                    hint='Name an installed model: class Sync: source = "app_label.ModelName" '
                    "(or the model class itself)." + did_you_mean(spec.source_label, labels),
                    obj=model,
                    id=CheckId.SYNCED_SOURCE_NOT_FOUND,
                )
            )
            continue
        source = spec.source._meta.label
        for unmapped in spec.unmapped:
            errors.append(
                Error(
                    f"{label} copies {source}.{unmapped.field}, a {unmapped.type}, which has "
                    "no ClickHouse type dbfleet maps it to.",
                    hint=f"Declare {unmapped.field!r} on {model.__name__} with a field of "
                    "clickhouse_backend.models that holds its values, or copy the other fields "
                    f"only: class Sync: fields = [...] without {unmapped.field!r}.",
                    obj=model,
                    id=CheckId.SYNCED_FIELD_UNMAPPED,
                )
            )
        names = [field.name for field in spec.source._meta.concrete_fields]
        for name in spec.unknown:
            errors.append(
                Error(
                    f"{label}'s `class Sync: fields` names {name!r}, which is not a field of "
                    f"{source} with a column.",
                    hint=f"Name fields of {source}: {', '.join(names)}."
                    + did_you_mean(name, names),
                    obj=model,
                    id=CheckId.SYNCED_FIELD_UNKNOWN,
                )
            )
        errors += _synced_databases(model, spec.source)
    return errors


def _synced_databases(model: type[models.Model], source: type[models.Model]) -> list[CheckMessage]:
    """E053-E054: a copy that is not on ClickHouse; a source whose changes are not captured."""
    errors: list[CheckMessage] = []
    copy_alias, source_alias = router.db_for_write(model), router.db_for_write(source)
    found = {}
    for alias in (copy_alias, source_alias):
        try:
            found[alias] = vendors.of_settings(settings.DATABASES.get(alias) or {})
        except ImproperlyConfigured:
            found[alias] = vendors.Vendor  # A backend that cannot load: Django says so.
    label = model._meta.label
    if found[copy_alias] is not vendors.ClickHouse:
        engine = settings.DATABASES.get(copy_alias, {}).get("ENGINE", "?")
        errors.append(
            Error(
                f"{label} is a ClickHouse copy of {source._meta.label}, and it is routed to "
                f"{copy_alias!r} ({engine}), which is not a ClickHouse database.",
                hint="Route it (or its app) to a database with ENGINE "
                "'dbfleet.backends.chdb' or 'dbfleet.backends.clickhouse': "
                f"DBFLEET['ROUTES'][{model._meta.app_label!r}] = 'warehouse'.",
                obj=model,
                id=CheckId.SYNCED_COPY_NOT_ON_CLICKHOUSE,
            )
        )
    if not found[source_alias].captures_changes:
        engine = settings.DATABASES.get(source_alias, {}).get("ENGINE", "?")
        errors.append(
            Error(
                f"{label} copies {source._meta.label}, which lives in {source_alias!r} "
                f"({engine}): dbfleet captures the changes of PostgreSQL, MariaDB/MySQL and "
                "SQLite tables only (with triggers), so none of its changes would be copied.",
                hint=f"Keep {source._meta.label} on a PostgreSQL, MariaDB/MySQL or SQLite "
                "database, or copy it another way.",
                obj=model,
                id=CheckId.SYNCED_SOURCE_NOT_CAPTURED,
            )
        )
    return errors
