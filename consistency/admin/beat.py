"""django-celery-beat's periodic tasks, each with a link to the audit runs it started."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from consistency.models import AuditRun


def runs_link(name: str, count: int) -> str:
    url = reverse("admin:consistency_auditrun_changelist")
    return format_html('<a href="{}?schedule={}">{} run(s)</a>', url, name, count)


class PeriodicTaskAdmin(BeatPeriodicTaskAdmin):
    """The beat admin, plus how many audit runs each schedule started, linked to their list."""

    list_display = (*BeatPeriodicTaskAdmin.list_display, "audit_runs")
    readonly_fields = (*BeatPeriodicTaskAdmin.readonly_fields, "audit_runs")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        runs = (
            AuditRun.objects.filter(schedule=OuterRef("name"))
            .order_by()
            .values("schedule")
            .annotate(n=Count("id"))
            .values("n")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(_audit_runs=Coalesce(Subquery(runs, output_field=IntegerField()), 0))
        )

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = list(super().get_fieldsets(request, obj))
        if obj is not None:
            fieldsets.append(("Audit runs", {"fields": ("audit_runs",)}))
        return fieldsets

    @admin.display(description="audit runs")
    def audit_runs(self, obj: PeriodicTask) -> str:
        count = getattr(obj, "_audit_runs", None)
        if count is None:
            count = AuditRun.objects.filter(schedule=obj.name).count()
        if not count and not obj.task.startswith("consistency.scheduled_audit"):
            return "-"
        return runs_link(obj.name, count)


if admin.site.is_registered(PeriodicTask):
    admin.site.unregister(PeriodicTask)
admin.site.register(PeriodicTask, PeriodicTaskAdmin)
