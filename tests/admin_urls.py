"""The stock ``admin.site`` with a routed model (``Book``, in 'books') and an unrouted one.

``tests/test_admin.py`` drives it through its views. The admins note, each time they
save or delete, which databases had a transaction open at that moment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db import connections
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest
from django.urls import path

from tests.library.models import Author, Book

if TYPE_CHECKING:  # the stubs make ModelAdmin generic; at run time it is not
    BookAdminBase = admin.ModelAdmin[Book]
    AuthorAdminBase = admin.ModelAdmin[Author]
else:
    BookAdminBase = AuthorAdminBase = admin.ModelAdmin

#: For each save or delete, in order: the aliases that had a transaction open.
written_in: list[set[str]] = []


def note_transactions() -> None:
    written_in.append(
        {alias for alias in ("default", "books") if connections[alias].in_atomic_block}
    )


@admin.register(Book)
class BookAdmin(BookAdminBase):
    list_display = ["id", "title"]
    list_editable = ["title"]
    fields = ["title", "content"]

    def save_model(
        self, request: HttpRequest, obj: Book, form: ModelForm[Any], change: bool
    ) -> None:
        note_transactions()
        super().save_model(request, obj, form, change)

    def delete_model(self, request: HttpRequest, obj: Book) -> None:
        note_transactions()
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Book]) -> None:
        note_transactions()
        super().delete_queryset(request, queryset)


@admin.register(Author)
class AuthorAdmin(AuthorAdminBase):
    fields = ["first_name", "last_name"]

    def save_model(
        self, request: HttpRequest, obj: Author, form: ModelForm[Any], change: bool
    ) -> None:
        note_transactions()
        super().save_model(request, obj, form, change)


urlpatterns = [path("admin/", admin.site.urls)]
