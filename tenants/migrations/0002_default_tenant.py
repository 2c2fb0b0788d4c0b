"""The built-in `default` tenant the master key executes under."""

from django.db import migrations


def create_default(apps, schema_editor):  # type: ignore[no-untyped-def]
    tenant = apps.get_model("tenants", "Tenant")
    tenant.objects.get_or_create(slug="default", defaults={"name": "Default (master key)"})


class Migration(migrations.Migration):
    dependencies = [("tenants", "0001_initial")]
    operations = [migrations.RunPython(create_default, migrations.RunPython.noop)]
