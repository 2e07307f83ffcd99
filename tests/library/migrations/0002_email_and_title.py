"""The bookstore article's migration: two databases, each operation where its data is."""

from typing import Any

from django.db import migrations, models


def title_books(apps: Any, schema_editor: Any) -> None:
    # Fails anywhere but on "books": no other database has the table.
    Book = apps.get_model("library", "Book")
    Book.objects.using(schema_editor.connection.alias).filter(title="").update(title="Untitled")


class Migration(migrations.Migration):
    dependencies = [("library", "0001_initial")]

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
            "CREATE INDEX library_book_title_idx ON library_book (title)",
            migrations.RunSQL.noop,
            hints={"target_db": "books"},
        ),
    ]
