"""The Django internals the migrate worker relies on, in one place, and a guard on them.

dbfleet's worker (``dbfleet.migrating.worker``) runs Django's own ``migrate``
command with one change: its ``MigrationExecutor`` applies a migration that does
nothing on the database (every operation routed elsewhere) by advancing the
project state without rendering it and recording the migration, instead of
re-rendering and cloning the model state for every operation as Django does.
That needs these private parts of Django:

- ``migrate.Command.handle`` makes its executor by the module-global name
  ``MigrationExecutor`` and calls ``executor.migrate(...)``: ``fast_executor()``
  sets that name to ``FleetExecutor`` for the run.
- ``MigrationExecutor.migrate`` calls ``_migrate_all_forwards(state, plan,
  full_plan, fake=..., fake_initial=...)``, which ``FleetExecutor`` overrides,
  keeping its loop.
- ``apply_migration`` is what applying a migration that runs nothing amounts to:
  ``progress_callback("apply_start")``, ``Migration.apply`` (for each operation:
  a clone of the state, ``state_forwards``, ``database_forwards`` that the router
  turns into nothing), ``record_migration``, ``progress_callback("apply_success")``.
- ``record_migration`` takes the migration in Django 5.2 and ``(app_label,
  name)`` from 6.0 on (which also records a squashed migration itself).
- ``ProjectState.apps`` is a ``cached_property``: the rendered apps are
  ``state.__dict__["apps"]``, dropped to stop re-rendering on each change.
- For a database with nothing to apply, ``signal_up_to_date()`` does what
  ``migrate.Command.handle`` does with an empty plan, in the calling process,
  with ``MigrationExecutor._create_project_state`` and ``StateApps``' methods.

``VETTED`` holds, for each Django feature version, a fingerprint of each of those
functions as read and checked against the code here. ``changed()`` says which
differ in the running Django; the worker then runs Django's ``migrate``
unchanged (slower, never wrong), and ``tests/test_migrate_worker.py`` fails,
naming them, until someone has read the new code and updated this module.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import django
from django.contrib.contenttypes.management import RenameContentType
from django.core.management.base import OutputWrapper
from django.db import router, transaction
from django.db.migrations import Migration
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.operations import fields, models, special
from django.db.migrations.operations.base import Operation
from django.db.migrations.state import ModelState, ProjectState, StateApps

from dbfleet.routing import Router

#: Django's operations whose ``database_forwards`` does nothing at all.
STATE_ONLY = frozenset(
    {models.AlterModelOptions, models.AlterModelManagers, models.AlterConstraint}
)
#: Django's operations that act on one model only if ``Operation.allow_migrate_model``
#: allows it, by the attribute naming it (RenameModel asks about its new name).
MODEL_OPERATIONS: dict[type[Operation], str] = {
    **dict.fromkeys(
        (
            models.CreateModel,
            models.DeleteModel,
            models.AlterModelTable,
            models.AlterModelTableComment,
            models.AlterUniqueTogether,
            models.AlterIndexTogether,
            models.AlterOrderWithRespectTo,
        ),
        "name_lower",
    ),
    models.RenameModel: "new_name_lower",
    **dict.fromkeys(
        (
            fields.AddField,
            fields.RemoveField,
            fields.AlterField,
            fields.RenameField,
            models.AddIndex,
            models.RemoveIndex,
            models.RenameIndex,
            models.AddConstraint,
            models.RemoveConstraint,
        ),
        "model_name_lower",
    ),
}


def _database_forwards(kind: type[Operation]) -> tuple[str, str]:
    """(module, qualname) of the ``database_forwards`` that ``kind`` runs."""
    owner = next(klass for klass in kind.__mro__ if "database_forwards" in vars(klass))
    return owner.__module__, f"{owner.__name__}.database_forwards"


#: The functions fingerprinted: (module, qualified name).
MIRRORED = (
    ("django.core.management.commands.migrate", "Command.handle"),
    ("django.db.migrations.executor", "MigrationExecutor.migrate"),
    ("django.db.migrations.executor", "MigrationExecutor._migrate_all_forwards"),
    ("django.db.migrations.executor", "MigrationExecutor.apply_migration"),
    ("django.db.migrations.executor", "MigrationExecutor.record_migration"),
    ("django.db.migrations.executor", "MigrationExecutor._create_project_state"),
    ("django.db.migrations.migration", "Migration.apply"),
    ("django.db.migrations.migration", "Migration.mutate_state"),
    ("django.db.migrations.state", "ProjectState.apps"),
    # What skipped() knows of each operation: what its database_forwards asks first.
    ("django.db.migrations.operations.base", "Operation.allow_migrate_model"),
    ("django.db.models.options", "Options.can_migrate"),
    *sorted(
        {
            _database_forwards(kind)
            for kind in (
                *STATE_ONLY,
                *MODEL_OPERATIONS,
                special.RunSQL,
                special.RunPython,
                special.SeparateDatabaseAndState,
            )
        }
    ),
    ("django.contrib.contenttypes.management", "RenameContentType._rename"),
)

#: What 5.2, 6.0 and 6.1 share (read in 5.2.19, 6.0.10 and 6.1.3).
_COMMON = {
    "migrate:Command.handle": "091ab4f6d869c2c4",
    "executor:MigrationExecutor.migrate": "4488a2efaec8c088",
    "executor:MigrationExecutor._migrate_all_forwards": "9f457ee294a81b82",
    "executor:MigrationExecutor._create_project_state": "ce66d26355b628d2",
    "migration:Migration.apply": "76053c6638e6892a",
    "migration:Migration.mutate_state": "a38442cb49c78244",
    "state:ProjectState.apps": "f25eae671ac0af2d",
    "base:Operation.allow_migrate_model": "d1f081dddc648e40",
    "options:Options.can_migrate": "549e05c7002a0210",
    "fields:AddField.database_forwards": "91e57d133262bf6a",
    "fields:AlterField.database_forwards": "bf0124269377a7d4",
    "fields:RemoveField.database_forwards": "c99cd75e320496c2",
    "fields:RenameField.database_forwards": "2a1e0f77be628652",
    "models:AddConstraint.database_forwards": "b9fa48affb8b8196",
    "models:AddIndex.database_forwards": "2eaf7bba7fe3f709",
    "models:AlterConstraint.database_forwards": "82788386ba9829ba",
    "models:AlterModelManagers.database_forwards": "82788386ba9829ba",
    "models:AlterModelOptions.database_forwards": "82788386ba9829ba",
    "models:AlterModelTable.database_forwards": "d3256387f086734a",
    "models:AlterModelTableComment.database_forwards": "782a4a5f7469e55e",
    "models:AlterOrderWithRespectTo.database_forwards": "6eefc4a7a646d6a9",
    "models:AlterTogetherOptionOperation.database_forwards": "0c228f53418cc81e",
    "models:CreateModel.database_forwards": "94634025ec02ecd8",
    "models:DeleteModel.database_forwards": "2ae4d31fe7ed9a96",
    "models:RemoveConstraint.database_forwards": "bbb6ae7400383417",
    "models:RemoveIndex.database_forwards": "6f7e1d233b7f9302",
    "models:RenameIndex.database_forwards": "22e6564a20c8b489",
    "models:RenameModel.database_forwards": "c67649dfd49908b8",
    "special:RunPython.database_forwards": "dda0d012fbd06289",
    "special:RunSQL.database_forwards": "38ac36fae7b5ae80",
    "special:SeparateDatabaseAndState.database_forwards": "4cefb4999c8ae958",
}
_EXECUTOR_5 = {
    "executor:MigrationExecutor.apply_migration": "6dfd5a790ff63173",
    "executor:MigrationExecutor.record_migration": "41b88a77f2effd33",
}
# record_migration(app_label, name), which also records a squashed migration itself.
_EXECUTOR_6 = {
    "executor:MigrationExecutor.apply_migration": "2bc3d3e11f484674",
    "executor:MigrationExecutor.record_migration": "e797c3809c61fcdd",
}
_RENAME = "management:RenameContentType._rename"
#: Django feature version -> key() -> fingerprint of the code that was read.
VETTED: dict[str, dict[str, str]] = {
    "5.2": {**_COMMON, **_EXECUTOR_5, _RENAME: "2da3bcec9a50215d"},
    "6.0": {**_COMMON, **_EXECUTOR_6, _RENAME: "2da3bcec9a50215d"},
    # 6.1 warns when a renamed content type clashes; what it asks the router is the same.
    "6.1": {**_COMMON, **_EXECUTOR_6, _RENAME: "d33192e780ead7ce"},
}


@functools.cache
def _module_tree(module: str) -> ast.Module:
    path = inspect.getsourcefile(importlib.import_module(module))
    if path is None:
        raise OSError(f"no source for {module}")
    return ast.parse(Path(path).read_text(encoding="utf-8"))


def fingerprint(module: str, qualname: str) -> str:
    """A hash of the function's code, blind to comments, docstrings and layout."""
    node: ast.AST = _module_tree(module)
    for name in qualname.split("."):
        node = next(
            child
            for child in ast.iter_child_nodes(node)
            if isinstance(child, ast.ClassDef | ast.FunctionDef) and child.name == name
        )
    return hashlib.sha256(_canonical(node).encode()).hexdigest()[:16]


def _canonical(node: object) -> str:
    """The AST as text; empty fields left out, so that Python versions that add one agree."""
    if isinstance(node, list):
        return "[" + ",".join(_canonical(item) for item in node) + "]"
    if not isinstance(node, ast.AST):
        return repr(node)
    body = getattr(node, "body", None)
    if (
        isinstance(node, ast.FunctionDef | ast.ClassDef)
        and body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]  # The docstring.
    fields = []
    for name in node._fields:
        value = body if name == "body" and body is not None else getattr(node, name, None)
        if value is None or value == []:
            continue
        fields.append(f"{name}={_canonical(value)}")
    return f"{type(node).__name__}({','.join(fields)})"


def key(module: str, qualname: str) -> str:
    """``"executor:MigrationExecutor.migrate"``: the module's last name is unique here."""
    return f"{module.rpartition('.')[2]}:{qualname}"


def feature_version() -> str:
    """``"5.2"``: the Django release series running."""
    return f"{django.VERSION[0]}.{django.VERSION[1]}"


@functools.cache
def changed() -> tuple[str, ...]:
    """The mirrored functions whose code differs from what was vetted for this Django."""
    vetted = VETTED.get(feature_version(), {})
    found = []
    for module, qualname in MIRRORED:
        try:
            current = fingerprint(module, qualname)
        except (OSError, StopIteration, SyntaxError):
            current = ""  # No source to read (a zipped or compiled install): not vetted.
        if vetted.get(key(module, qualname)) != current:
            found.append(f"{module}.{qualname}")
    return tuple(found)


def record_migration(executor: MigrationExecutor, migration: Migration) -> None:
    """Record ``migration`` as applied, as ``apply_migration`` does."""
    recorder: Any = executor  # Its signature depends on the Django version.
    if django.VERSION >= (6, 0):
        recorder.record_migration(migration.app_label, migration.name)
    else:
        recorder.record_migration(migration)


def is_rendered(state: ProjectState) -> bool:
    """Whether the state's apps (its models as classes) are rendered."""
    return "apps" in state.__dict__


def drop_rendered(state: ProjectState) -> None:
    """Forget the rendered apps: later changes then update the model states only."""
    state.__dict__.pop("apps", None)


def allowed(alias: str, app_label: str, **hints: Any) -> bool:
    """The routers' ``allow_migrate``; True when they fail, for Django to fail the same way."""
    try:
        return bool(router.allow_migrate(alias, app_label, **hints))
    except Exception:  # noqa: BLE001  (a ``db`` hint's TypeError, say: Django's to raise)
        return True


def only_dbfleet_routers() -> bool:
    """Whether ``dbfleet.Router`` itself answers every ``allow_migrate``.

    Django asks about a model with the class as a ``model`` hint, which a worker
    that renders nothing cannot give. ``dbfleet.Router`` answers a class exactly
    as its ``app_label.model_name`` (proxies aside, which Django never migrates);
    another router might not, so with one the worker trusts only ``RunSQL`` and
    ``RunPython``, which Django asks about with their hints alone.
    """
    return all(type(each) is Router for each in router.routers)


def skipped(alias: str, app_label: str, operation: Operation) -> bool:
    """Whether the operation's ``database_forwards`` does nothing on ``alias`` (False if unsure).

    Only Django's own operation classes are known (and contenttypes' RenameContentType,
    which its pre_migrate adds after each RenameModel); a subclass or any other
    operation may do anything, so it counts as running.
    """
    kind = type(operation)
    if kind is special.SeparateDatabaseAndState:
        return all(
            skipped(alias, app_label, inner)
            for inner in operation.database_operations  # type: ignore[attr-defined]
        )
    if kind in (special.RunSQL, special.RunPython, RenameContentType):
        if not allowed(alias, app_label, **operation.hints):  # type: ignore[attr-defined]
            return True
        # It renames a content type only where the router allows ContentType.
        return (
            kind is RenameContentType
            and only_dbfleet_routers()
            and not allowed(alias, "contenttypes", model_name="contenttype")
        )
    if kind in STATE_ONLY:
        return True
    attribute = MODEL_OPERATIONS.get(kind)
    if attribute is None:
        return False
    if kind is models.CreateModel:
        options = operation.options  # type: ignore[attr-defined]
        if options.get("proxy") or options.get("managed") is False:
            return True  # Options.can_migrate() says no before any router is asked.
    return only_dbfleet_routers() and not allowed(
        alias, app_label, model_name=getattr(operation, attribute)
    )


class FleetExecutor(MigrationExecutor):
    """Django's executor, except for migrations with nothing to run on its database.

    ``runs_here(migration)`` says whether any operation of a migration could run
    on this database; one that cannot is recorded with its state advanced but
    neither rendered nor run. ``keep_rendered(index)`` says, at a migration that
    is skipped, whether to keep the rendered apps up to date anyway (a migration
    that runs comes soon, and rendering everything again would cost more).
    """

    runs_here: Callable[[Migration], bool]
    fake_initial_candidate: Callable[[Migration], bool]

    def _migrate_all_forwards(
        self,
        state: ProjectState,
        plan: list[tuple[Migration, bool]],
        full_plan: list[tuple[Migration, bool]],
        fake: bool,
        fake_initial: bool,
    ) -> ProjectState:
        if fake:
            # Nothing runs and Django renders once: its own loop is as fast.
            return super()._migrate_all_forwards(state, plan, full_plan, fake, fake_initial)  # type: ignore[misc, no-any-return]
        migrations_to_run = {migration for migration, _ in plan}
        order = [migration for migration, _ in full_plan if migration in migrations_to_run]
        runs = [
            self.runs_here(migration) or (fake_initial and self.fake_initial_candidate(migration))
            for migration in order
        ]
        records = ExitStack()
        with records:
            for index, migration in enumerate(order):
                if runs[index]:
                    records.close()  # Commit the records before anything runs.
                    if not is_rendered(state):
                        if self.progress_callback:
                            self.progress_callback("render_start")
                        state.apps  # noqa: B018  (render all, as Django does)
                        if self.progress_callback:
                            self.progress_callback("render_success")
                    state = self.apply_migration(
                        state, migration, fake=fake, fake_initial=fake_initial
                    )
                    continue
                if not keep_rendered(runs, index):
                    drop_rendered(state)
                if not index or runs[index - 1]:
                    # The records of a run of skipped migrations go in one transaction:
                    # a commit each (a disk flush each) would cost more than the rest.
                    # Interrupted, none is kept, and running them again changes nothing.
                    records.enter_context(transaction.atomic(using=self.connection.alias))
                state = self.record_skipped(state, migration)
        return state

    def record_skipped(self, state: ProjectState, migration: Migration) -> ProjectState:
        """``apply_migration`` for a migration none of whose operations runs here."""
        if self.progress_callback:
            self.progress_callback("apply_start", migration, False)
        migration.mutate_state(state, preserve=False)
        record_migration(self, migration)
        if self.progress_callback:
            self.progress_callback("apply_success", migration, False)
        return state


#: A skipped migration keeps the rendered apps current when a migration that runs is
#: at most this many migrations ahead: updating them costs about a tenth of a full
#: render per operation (the model and its relations are rendered again).
KEEP_RENDERED_WITHIN = 3


def keep_rendered(runs: list[bool], index: int) -> bool:
    """Whether a migration that runs comes within ``KEEP_RENDERED_WITHIN`` after ``index``."""
    return any(runs[index + 1 : index + 1 + KEEP_RENDERED_WITHIN])


@contextmanager
def fast_executor(
    runs_here: Callable[[Migration], bool], fake_initial_candidate: Callable[[Migration], bool]
) -> Iterator[None]:
    """Make Django's ``migrate`` command use a ``FleetExecutor`` while inside."""
    from django.core.management.commands import migrate

    executor: Any = type(
        "FleetExecutor",
        (FleetExecutor,),
        {
            "runs_here": staticmethod(runs_here),
            "fake_initial_candidate": staticmethod(fake_initial_candidate),
        },
    )
    saved = migrate.MigrationExecutor  # type: ignore[attr-defined]
    migrate.MigrationExecutor = executor  # type: ignore[attr-defined]
    try:
        yield
    finally:
        migrate.MigrationExecutor = saved  # type: ignore[attr-defined]


def signal_up_to_date(
    alias: str,
    *,
    verbosity: int,
    interactive: bool,
    stdout: OutputWrapper,
    states: dict[Any, Any],
    executor: MigrationExecutor | None = None,
) -> bool:
    """What Django's ``migrate`` does on ``alias`` when nothing is pending; False if it can't.

    That is ``migrate.Command.handle`` with an empty plan, minus its output-only
    parts (the autodetector's "changes not yet in a migration" notice): the
    history checked, ``pre_migrate`` and ``post_migrate`` sent with the project
    state the recorded migrations make, rendered (``post_migrate``'s with the real
    apps' models rendered again, as Django does), and squashed migrations whose
    replaced ones are all recorded are recorded. Databases with the same
    migrations recorded get the same rendered apps: ``states`` keeps them for the
    run; ``executor``, one that just planned ``alias``, saves loading the
    migrations again. False (nothing done) when something is pending after all, the migration
    graph has conflicts or there is no django_migrations table: then Django's
    ``migrate`` itself must run.
    """
    from django.core.management.sql import emit_post_migrate_signal, emit_pre_migrate_signal
    from django.db import connections

    connection = connections[alias]
    connection.prepare_database()
    if executor is None:
        executor = MigrationExecutor(connection)
    loader = executor.loader
    loader.check_consistent_history(connection)
    targets = loader.graph.leaf_nodes()
    if loader.detect_conflicts() or executor.migration_plan(targets):
        return False
    if not executor.recorder.has_table():
        return False
    if verbosity >= 1:
        stdout.write("Operations to perform:")
        stdout.write(
            "  Apply all migrations: " + (", ".join(sorted({a for a, _ in targets})) or "(none)")
        )
    key = (
        frozenset(loader.graph.nodes),
        frozenset(key for key in loader.applied_migrations if key in loader.graph.nodes),
    )
    found = states.setdefault(key, {})
    if "pre" not in found:
        private: Any = executor
        found["pre"] = private._create_project_state(with_applied_migrations=True)
    pre_migrate_state: ProjectState = found["pre"]
    emit_pre_migrate_signal(
        verbosity, interactive, alias, stdout=stdout, apps=pre_migrate_state.apps, plan=[]
    )
    if verbosity >= 1:
        stdout.write("Running migrations:")
        stdout.write("  No migrations to apply.")
    if loader.replacements:  # Else it reads every record to find nothing to do.
        executor.check_replacements()
    if "post" not in found:
        found["post"] = post_migrate_apps(pre_migrate_state.clone())
    emit_post_migrate_signal(
        verbosity, interactive, alias, stdout=stdout, apps=found["post"], plan=[]
    )
    return True


def post_migrate_apps(post_migrate_state: ProjectState) -> StateApps:
    """The apps ``migrate`` sends with ``post_migrate``: real apps' models rendered again."""
    from django.apps import apps

    post_migrate_state.clear_delayed_apps_cache()
    post_apps = post_migrate_state.apps
    with post_apps.bulk_update():
        model_keys = []
        for model_state in post_apps.real_models:
            model_key = model_state.app_label, model_state.name_lower
            model_keys.append(model_key)
            post_apps.unregister_model(*model_key)
    post_apps.render_multiple(
        [ModelState.from_model(apps.get_model(*model)) for model in model_keys]
    )
    return post_apps
