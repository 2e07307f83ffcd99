"""Django database backends dbfleet ships: ClickHouse as a server or embedded (chDB).

``ENGINE = "dbfleet.backends.clickhouse"`` (a ClickHouse server) and
``"dbfleet.backends.chdb"`` (ClickHouse in the process, through chDB) are both
django-clickhouse-backend's backend, which dbfleet reuses; they need the
``[clickhouse]`` or ``[chdb]`` extra, and nothing else in dbfleet does.
"""

from __future__ import annotations

import importlib

from django.core.exceptions import ImproperlyConfigured

#: What each extra installs, by the name it is imported as.
EXTRAS = {
    "clickhouse": {"clickhouse_backend": "django-clickhouse-backend"},
    "chdb": {"clickhouse_backend": "django-clickhouse-backend", "chdb": "chdb"},
}


def require(extra: str, module: str) -> None:
    """Import ``module`` of ``extra`` (to see that it is there); else say what to install."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise ImproperlyConfigured(
            f"ENGINE 'dbfleet.backends.{extra}' needs {EXTRAS[extra][module]}, which is not "
            f"installed ({error}). Install dbfleet with its extra: "
            f"pip install 'django-dbfleet[{extra}]'."
        ) from error
