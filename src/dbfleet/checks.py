"""System checks. Their ids, one per problem, are in ``dbfleet.check_ids``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import FieldDoesNotExist
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
from dbfleet.sharding.query import ShardedManager
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
            if not vendor.replicates and _same_file(config.get("NAME"), theirs) is False:
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
        if there is group:
            if sharded or related._meta.label_lower in group.reference:
                continue  # Co-located, or a copy on every shard.
            problem = (
                f"a reference model, copied to every shard, refers to {related._meta.label}, "
                "whose rows are each on one shard"
            )
            fix = f"make {related._meta.label} a reference model too, or drop the relation"
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
