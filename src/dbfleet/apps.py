from django.apps import AppConfig


class DbfleetConfig(AppConfig):
    name = "dbfleet"
    verbose_name = "dbfleet"

    def ready(self) -> None:
        from dbfleet import checks  # noqa: F401  (registers the system checks)
