from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("speedapp", "0004_changes")]

    operations = [
        migrations.RenameModel(old_name="Item", new_name="Article"),
        migrations.AlterUniqueTogether(name="article", unique_together={("shelf", "title")}),
    ]
