"""``dbfleet.Router``: Django's four router questions, answered from the topology."""

from __future__ import annotations

from typing import Any

from django.db import models, router

from dbfleet.conf import get_topology


class Router:
    """Routes models to databases as ``DBFLEET["ROUTES"]`` says.

    Each answer is a dictionary lookup in the cached topology. ``None`` means
    "no opinion" (Django asks the next router, then uses ``default``).
    """

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str | None:
        return get_topology().models[model]

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str | None:
        return get_topology().models[model]

    def allow_relation(self, obj1: models.Model, obj2: models.Model, **hints: Any) -> bool:
        """Allow a relation only between objects of one group (a primary and its replicas)."""
        topology = get_topology()
        db1 = obj1._state.db or topology.database_for_model(type(obj1))
        db2 = obj2._state.db or topology.database_for_model(type(obj2))
        return topology.same_group(db1, db2)

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool:
        """Migrate a model only on its database, and never on a replica.

        Hints route operations without a model (``RunPython``, ``RunSQL``):
        ``target_db`` names the database (or a list of them), ``model`` names
        the model whose database it follows (a class or ``"app_label.Model"``).
        Without hints an operation follows its app, or ``DEFAULT_DATABASE``
        when the app's models live in more than one database.
        """
        topology = get_topology()
        if topology.is_replica(db):
            return False
        target_db = hints.get("target_db")
        if target_db is not None:
            return db == target_db if isinstance(target_db, str) else db in target_db
        model = hints.get("model")
        if isinstance(model, str):
            return db == topology.database_for_label(model)
        if model is not None:
            return db == topology.database_for_model(model)
        if model_name is not None:
            return db == topology.database_for_label(f"{app_label}.{model_name}")
        return db == topology.database_for_app_operations(app_label)


def database_for(model_or_instance: type[models.Model] | models.Model, write: bool = False) -> str:
    """The database a model (or an instance) is read from, or written to with ``write=True``.

    This is Django's own answer, through every router in ``DATABASE_ROUTERS``:
    what the ORM will use for ``Model.objects`` or ``instance.save()``.
    """
    if isinstance(model_or_instance, models.Model):
        model, hints = type(model_or_instance), {"instance": model_or_instance}
    else:
        model, hints = model_or_instance, {}
    if write:
        return router.db_for_write(model, **hints)
    return router.db_for_read(model, **hints)
