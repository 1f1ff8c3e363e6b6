"""Audit runs with their per-check figures, the dashboard, and 'run audit now'."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet, Sum
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from consistency import tasks
from consistency.admin import perms
from consistency.admin.drifts import drift_link
from consistency.engine.registry import registry
from consistency.models import AuditRun, CheckRun
from consistency.review import dashboard


class CheckRunInline(admin.TabularInline):
    model = CheckRun
    extra = 0
    can_delete = False
    FIGURES = [
        "check_name",
        "kind",
        "status",
        "strategy",
        "compared",
        "segments",
        "rows_fetched",
        "in_flight",
        "drift_found",
        "duration",
        "error",
    ]
    fields = tuple(FIGURES)
    readonly_fields = FIGURES
    ordering = ["check_name"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="drift")
    def drift_found(self, obj: CheckRun) -> str:
        if not obj.drift_count:
            return "0"
        return drift_link(str(obj.drift_count), check_name=obj.check_name)


@admin.register(AuditRun)
class AuditRunAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "started_at",
        "trigger",
        "schedule",
        "mode",
        "colored_status",
        "run_duration",
        "check_count",
        "drift_found",
    ]
    list_filter = ["status", "trigger", "mode", "schedule"]
    list_per_page = 50
    show_full_result_count = False
    inlines = [CheckRunInline]
    readonly_fields = [
        "trigger",
        "schedule",
        "checks",
        "mode",
        "since",
        "status",
        "started_at",
        "finished_at",
        "run_duration",
        "error",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[AuditRun]:
        return (
            super()
            .get_queryset(request)
            .annotate(_checks=Count("check_runs"), _drift=Sum("check_runs__drift_count"))
        )

    @admin.display(description="status", ordering="status")
    def colored_status(self, obj: AuditRun) -> str:
        return format_html(
            '<span class="consistency-status-{}">{}</span>', obj.status, obj.get_status_display()
        )

    @admin.display(description="duration")
    def run_duration(self, obj: AuditRun) -> str:
        return "-" if obj.duration is None else f"{obj.duration:.1f} s"

    @admin.display(description="checks")
    def check_count(self, obj: AuditRun) -> int:
        return getattr(obj, "_checks", 0)

    @admin.display(description="drift found")
    def drift_found(self, obj: AuditRun) -> int:
        return getattr(obj, "_drift", None) or 0

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("dashboard/", view(self.dashboard_view), name="consistency_dashboard"),
            path("run-now/", view(self.run_now_view), name="consistency_run_now"),
            *super().get_urls(),
        ]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "title": "Drift review dashboard",
            "checks": dashboard.latest_check_runs(),
            "open_drift": dashboard.open_drift(),
            "trend": dashboard.trend(),
            "runs": dashboard.recent_runs(),
            "can_run_audit": perms.can_run_audit(request),
            "check_names": [d.name for d in registry],
        }
        return TemplateResponse(request, "admin/consistency/dashboard.html", context)

    def run_now_view(self, request: HttpRequest) -> HttpResponse:
        if not perms.can_run_audit(request):
            raise PermissionDenied
        target = HttpResponseRedirect(reverse("admin:consistency_dashboard"))
        if request.method != "POST":
            return target
        checks = [c for c in request.POST.getlist("check") if c]
        unknown = [c for c in checks if c not in registry]
        if unknown:
            messages.error(request, f"Not started: unknown check(s) {', '.join(unknown)}.")
            return target
        tasks.admin_audit.delay(checks, request.user.pk)
        messages.success(request, f"Audit of {', '.join(checks) or 'all checks'} queued.")
        return target
