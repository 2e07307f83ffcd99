from django.apps import AppConfig, apps
from django.core.signals import request_finished, request_started
from django.db import connections
from django.db.backends.signals import connection_created


class DbfleetConfig(AppConfig):
    name = "dbfleet"
    verbose_name = "dbfleet"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from dbfleet import checks  # noqa: F401  (registers the system checks)
        from dbfleet.conf import fleet_settings
        from dbfleet.replicas.guard import install_wrappers
        from dbfleet.replicas.scopes import end_implicit_scope
        from dbfleet.transactions.guard import install_write_guard

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
