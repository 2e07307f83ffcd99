from __future__ import annotations

import json
import os
from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate, pre_migrate


def record(signal: str) -> Any:
    def receiver(sender: AppConfig, **kwargs: Any) -> None:
        path = os.environ.get("DBFLEET_SPEED_SIGNALS")
        if not path or sender.label != "speedapp":
            return
        entry = {
            "signal": signal,
            "using": kwargs["using"],
            "verbosity": kwargs["verbosity"],
            "interactive": kwargs["interactive"],
            "plan": [[str(migration), backwards] for migration, backwards in kwargs["plan"]],
            "models": sorted(model._meta.label_lower for model in kwargs["apps"].get_models()),
            "stdout": "stdout" in kwargs,
            "pid": os.getpid(),
        }
        with open(path, "a") as file:
            file.write(json.dumps(entry) + "\n")

    return receiver


class SpeedAppConfig(AppConfig):
    name = "tests.migration_cases.speedapp"
    label = "speedapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        pre_migrate.connect(record("pre_migrate"), weak=False)
        post_migrate.connect(record("post_migrate"), weak=False)
