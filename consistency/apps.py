from django.apps import AppConfig


class ConsistencyConfig(AppConfig):
    name = "consistency"
    verbose_name = "Consistency"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from consistency import checks  # noqa: F401 - registers the system checks
        from consistency.review import history
        from consistency.stores import deadline
        from consistency.sync import signals

        signals.connect()
        deadline.connect()  # a client-side deadline on every PostgreSQL connection
        history.connect()  # drift sightings per run, and the schedule that started a run
