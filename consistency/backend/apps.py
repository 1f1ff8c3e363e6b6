from django.apps import AppConfig


class BackendConfig(AppConfig):
    """The backend service's schema, mirrored on the ``default`` database."""

    name = "consistency.backend"
    label = "backend"
    verbose_name = "Backend service (mirror)"
    default_auto_field = "django.db.models.BigAutoField"
