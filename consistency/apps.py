from django.apps import AppConfig


class ConsistencyConfig(AppConfig):
    name = "consistency"
    verbose_name = "Consistency"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from consistency import checks  # noqa: F401 - registers the system checks
        from consistency.review import history
        from consistency.sync import signals

        signals.connect()
        history.connect()  # drift sightings per run, and the schedule that started a run
