from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("slow", "0002_nap")]

    operations = [migrations.AddField("nap", "size", models.IntegerField(default=0))]
