from django.db import migrations, models


class Migration(migrations.Migration):
    # Written before the squash: Django follows it to the squashed migration.
    dependencies = [("speedapp", "0003_item_count")]

    operations = [
        migrations.RenameField(model_name="shelf", old_name="label", new_name="name"),
        migrations.AlterField(
            model_name="item", name="title", field=models.CharField(max_length=120)
        ),
        migrations.AddIndex(
            model_name="item", index=models.Index(fields=["title"], name="speedapp_title_idx")
        ),
        migrations.AddConstraint(
            model_name="shelf",
            constraint=models.CheckConstraint(condition=~models.Q(name=""), name="speedapp_named"),
        ),
        migrations.RemoveField(model_name="item", name="code"),
    ]
