import os

from django.apps import AppConfig, apps
from django.core.signals import request_finished, request_started
from django.db import connections
from django.db.backends.signals import connection_created
from django.db.models.signals import post_migrate, pre_migrate


class DbfleetConfig(AppConfig):
    name = "dbfleet"
    verbose_name = "dbfleet"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # A `fleet migrate` worker: it ends with its parent. Removed from the
        # environment, so that a process the worker starts is not taken for one.
        if parent := os.environ.pop("DBFLEET_WORKER_PARENT", ""):
            from dbfleet.migrating.runner import die_with_parent

            die_with_parent(int(parent))
        from dbfleet import checks  # noqa: F401  (registers the system checks)
        from dbfleet.analytics.capture import install_after_migrate as capture_after_migrate
        from dbfleet.conf import fleet_settings
        from dbfleet.migrating.lock import lock_before_migrate
        from dbfleet.replicas.guard import install_wrappers
        from dbfleet.replicas.scopes import end_implicit_scope
        from dbfleet.sharding.ids import install_after_migrate
        from dbfleet.transactions.guard import install_write_guard

        # One migrator per database: every migrate takes the database's lock first.
        pre_migrate.connect(lock_before_migrate, dispatch_uid="dbfleet.migration_lock")
        # FleetIdField's counter, once per migrated database (sent for each app: ours only).
        post_migrate.connect(install_after_migrate, sender=self, dispatch_uid="dbfleet.fleet_ids")
        # The change capture of synced models' sources, after every migrate (a migration
        # may have rebuilt a table without its triggers).
        post_migrate.connect(capture_after_migrate, sender=self, dispatch_uid="dbfleet.capture")
        connection_created.connect(install_write_guard, dispatch_uid="dbfleet.write_guard")
        connection_created.connect(install_wrappers, dispatch_uid="dbfleet.replicas")
        for signal in (request_started, request_finished):
            signal.connect(end_implicit_scope, dispatch_uid="dbfleet.end_implicit_scope")
        if apps.is_installed("django.contrib.admin"):
            from dbfleet import admin_transactions

            admin_transactions.install()
        # In tests a replica is its primary's test mirror (Django's TEST["MIRROR"]),
        # unless its settings name one: the test runner creates no database for
        # it and its reads see the primary's test data. Django fills the TEST
        # dictionary itself; this only sets the one key it left empty.
        for primary, replicas in fleet_settings().replicas.items():
            for replica in replicas:
                test = connections.settings[replica.alias].setdefault("TEST", {})
                if not test.get("MIRROR"):
                    test["MIRROR"] = primary
