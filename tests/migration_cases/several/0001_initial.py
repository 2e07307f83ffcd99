from django.db import migrations


class Migration(migrations.Migration):
    operations = [
        migrations.RunPython(migrations.RunPython.noop, hints={"target_db": 5}),
        migrations.RunPython(
            migrations.RunPython.noop,
            hints={"target_db": ["books", "bokks", "replica"], "model": "nowhere.Nothing"},
        ),
    ]
