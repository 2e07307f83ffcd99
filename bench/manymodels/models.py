"""``Model000`` ... ``Model199``: made with ``type()`` so the count is one constant."""

from __future__ import annotations

from typing import cast

from django.db import models

COUNT = 200


def make_model(index: int) -> type[models.Model]:
    """A concrete model named ``Model{index:03d}`` in this app."""
    attrs = {"__module__": __name__, "name": models.CharField(max_length=50)}
    return cast(type[models.Model], type(f"Model{index:03d}", (models.Model,), attrs))


GENERATED = tuple(make_model(index) for index in range(COUNT))
