"""The Django admin on routed models: an object and its log entry commit together.

Django's admin runs each write in ``transaction.atomic(using=router.db_for_write(self.model))``
and records it in a ``LogEntry``, written where ``LogEntry`` is written: ``default``.
For a model routed to another database the log entry would commit on its own, at
once, whatever the object's transaction then does; the write guard refuses it.
:func:`install` makes the views that write run, for such a model, in one
``dbfleet.atomic`` over both databases (Django's own block nests inside it as a
savepoint). For a model that lives with ``LogEntry`` the views are Django's, untouched.

(Not ``dbfleet/admin.py``: the admin imports that module of every app to register
the app's models.)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, Concatenate, ParamSpec

from django.contrib.admin import ModelAdmin
from django.contrib.admin.models import LogEntry
from django.http import HttpRequest, HttpResponseBase

from dbfleet.routing import database_for
from dbfleet.transactions import atomic

P = ParamSpec("P")

#: The ``ModelAdmin`` views that write when posted to: the add and change form
#: (with Django 6.1's change form actions), the delete view, and the change list,
#: whose ``list_editable`` saves and actions (``delete_selected``) write; Django runs
#: those actions in no transaction at all, and logs a deletion before deleting.
WRITING_VIEWS = ("changeform_view", "changelist_view", "delete_view")
#: The methods for which Django's views open no transaction.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

_WRAPPERS: set[object] = set()


def admin_databases(model_admin: ModelAdmin[Any]) -> list[str]:
    """The databases an admin write touches: the model's and then, if another, ``LogEntry``'s."""
    model = database_for(model_admin.model, write=True)
    log = database_for(LogEntry, write=True)
    return [model] if log == model else [model, log]


def spanning_log_entries(
    view: Callable[Concatenate[ModelAdmin[Any], HttpRequest, P], HttpResponseBase],
) -> Callable[Concatenate[ModelAdmin[Any], HttpRequest, P], HttpResponseBase]:
    """Run ``view``, when it may write, in one block on the model's and ``LogEntry``'s databases."""

    @wraps(view)
    def wrapper(
        model_admin: ModelAdmin[Any], request: HttpRequest, /, *args: P.args, **kwargs: P.kwargs
    ) -> HttpResponseBase:
        if request.method not in SAFE_METHODS:
            databases = admin_databases(model_admin)
            if len(databases) > 1:
                with atomic(*databases):
                    return view(model_admin, request, *args, **kwargs)
        return view(model_admin, request, *args, **kwargs)

    _WRAPPERS.add(wrapper)
    return wrapper


def install() -> None:
    """Wrap ``ModelAdmin``'s writing views (once), for every admin site and subclass."""
    for name in WRITING_VIEWS:
        view = getattr(ModelAdmin, name)
        if view not in _WRAPPERS:
            setattr(ModelAdmin, name, spanning_log_entries(view))
