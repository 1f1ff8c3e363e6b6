from django.apps import AppConfig


class AuthServiceConfig(AppConfig):
    """The auth service's schema, mirrored on the ``auth`` database."""

    name = "consistency.auth_service"
    label = "auth_service"
    verbose_name = "Auth service (mirror)"
    default_auto_field = "django.db.models.BigAutoField"
