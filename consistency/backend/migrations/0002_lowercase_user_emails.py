"""Lower-case ``users.email``, keeping each changed address in ``email_before_lowercase``.

The reverse puts the kept addresses back and drops the column. Two addresses that
differ only by case would collide on the unique index, so the forward step refuses
them by name instead of failing half-way.
"""

from django.db import migrations, models
from django.db.models import Count, F
from django.db.models.functions import Lower


def lowercase_emails(apps, schema_editor):
    User = apps.get_model("backend", "User")
    users = User.objects.using(schema_editor.connection.alias)
    clashes = list(
        users.annotate(folded=Lower("email"))
        .values("folded")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .values_list("folded", flat=True)[:5]
    )
    if clashes:
        raise RuntimeError(
            "backend.0002: cannot lower-case users.email, these addresses differ only by case: "
            + ", ".join(clashes)
            + ". Merge or rename those users first."
        )
    users.exclude(email=Lower("email")).update(email_before_lowercase=F("email"), email=Lower("email"))


def restore_emails(apps, schema_editor):
    User = apps.get_model("backend", "User")
    users = User.objects.using(schema_editor.connection.alias)
    users.filter(email_before_lowercase__isnull=False).update(
        email=F("email_before_lowercase"), email_before_lowercase=None
    )


class Migration(migrations.Migration):

    dependencies = [
        ("backend", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="user",
            name="email_before_lowercase",
            field=models.CharField(blank=True, editable=False, max_length=255, null=True),
        ),
        migrations.RunPython(lowercase_emails, restore_emails),
    ]
