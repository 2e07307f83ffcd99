from typing import Any

from django.db import migrations, models


def first_shelf(apps: Any, schema_editor: Any) -> None:
    Shelf = apps.get_model("speedapp", "Shelf")
    Shelf.objects.using(schema_editor.connection.alias).create(name="first")


def only_on_books(apps: Any, schema_editor: Any) -> None:
    # Unhinted: runs where the app lives, and nowhere else.
    if schema_editor.connection.alias != "books":
        raise RuntimeError(f"ran on {schema_editor.connection.alias}")


class Migration(migrations.Migration):
    dependencies = [("speedapp", "0005_rename")]

    operations = [
        migrations.RunSQL(
            "CREATE INDEX speedapp_shelf_name_sql ON speedapp_shelf (name)",
            migrations.RunSQL.noop,
            hints={"target_db": "books"},
        ),
        migrations.RunPython(first_shelf, hints={"model": "speedapp.Shelf"}),
        migrations.RunPython(only_on_books),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddField(
                    model_name="shelf",
                    name="note",
                    field=models.CharField(max_length=20, null=True),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE speedapp_shelf ADD COLUMN note varchar(20) NULL",
                    hints={"target_db": "books"},
                ),
            ],
        ),
    ]
