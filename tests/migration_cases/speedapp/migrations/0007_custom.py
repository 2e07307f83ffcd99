from django.db import migrations


class Touch(migrations.RunSQL):
    """An operation of the project's own: the worker cannot know what it does, so it runs."""


class Migration(migrations.Migration):
    dependencies = [("speedapp", "0006_data")]

    operations = [Touch("SELECT 1", migrations.RunSQL.noop, hints={"target_db": "books"})]
