"""One migration, two databases: each operation runs only where its data lives.

The AddFields follow their models (``Author`` in ``default``, ``Book`` in
``books``); the RunPython and RunSQL say where they belong with a
``target_db`` hint. Without hints they would run on ``DEFAULT_DATABASE``, where
there is no ``books_book`` table, because this app is split across databases.
"""

from typing import Any

from django.db import migrations, models


def title_books(apps: Any, schema_editor: Any) -> None:
    """Give each book a title: the first words of its content."""
    Book = apps.get_model("books", "Book")
    for book in Book.objects.using(schema_editor.connection.alias).filter(title=""):
        book.title = " ".join(book.content.split()[:4])
        book.save(update_fields=["title"])


class Migration(migrations.Migration):
    dependencies = [("books", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="author",
            name="email",
            field=models.EmailField(blank=True, default="", max_length=254),
        ),
        migrations.AddField(
            model_name="book",
            name="title",
            field=models.CharField(blank=True, default="", max_length=200),
        ),
        migrations.RunPython(title_books, migrations.RunPython.noop, hints={"target_db": "books"}),
        migrations.RunSQL(
            "UPDATE books_book SET title = 'Untitled' WHERE title = ''",
            migrations.RunSQL.noop,
            hints={"target_db": "books"},
        ),
    ]
