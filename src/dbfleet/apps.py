from django.apps import AppConfig
from django.db.backends.signals import connection_created


class DbfleetConfig(AppConfig):
    name = "dbfleet"
    verbose_name = "dbfleet"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from dbfleet import checks  # noqa: F401  (registers the system checks)
        from dbfleet.transactions import install_write_guard

        connection_created.connect(install_write_guard, dispatch_uid="dbfleet.write_guard")
