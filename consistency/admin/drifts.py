"""Drift records: filtered list, side-by-side detail with history, and the review actions.

Every action checks its permission on the server (``review_drift`` for acknowledge,
mute and re-verify, ``repair_drift`` for repair) whether it comes from the list's
action menu or the detail page's buttons, and writes LogEntry and RepairLog rows.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from consistency import tasks
from consistency.admin import perms
from consistency.admin.filters import AgeFilter, CheckFilter, KindFilter, SeverityFilter, StoreFilter
from consistency.engine.redact import REDACTED, redact
from consistency.engine.registry import registry
from consistency.models import Drift, DriftSighting
from consistency.review import actions as review
from consistency.review.actions import ReviewError

HISTORY_LIMIT = 50


class MuteForm(forms.Form):
    until = forms.DateField(
        label="Mute until",
        help_text="The drift stays muted until 00:00 UTC on this date; the next audit after it reopens it.",
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    reason = forms.CharField(label="Reason", max_length=500, widget=forms.Textarea(attrs={"rows": 2}))

    def clean_until(self) -> dt.datetime:
        day: dt.date = self.cleaned_data["until"]
        if day <= timezone.now().date():
            raise forms.ValidationError(f"{day.isoformat()} is not after today: pick a later date.")
        return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)


def _shown(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str, sort_keys=True)


def side_by_side(drift: Drift) -> list[dict[str, Any]]:
    """One row per field: both sides' values (redacted again here), and whether they differ."""
    extra = getattr(registry.get(drift.check_name), "secret", ()) if drift.check_name in registry else ()
    source, target = redact(drift.source, extra), redact(drift.target, extra)
    names = list(dict.fromkeys([*(source or {}), *(target or {})]))
    listed = set(drift.fields or ())
    rows = []
    for name in names:
        s = (source or {}).get(name)
        t = (target or {}).get(name)
        both = source is not None and target is not None
        rows.append(
            {
                "name": name,
                "source": _shown(s) if source is not None else None,
                "target": _shown(t) if target is not None else None,
                "secret": REDACTED in (s, t),
                "differs": name in listed or (both and s != t),
            }
        )
    return rows


def _selected(queryset: QuerySet[Drift], request: HttpRequest) -> list[Drift] | None:
    drifts = list(Drift.objects.filter(pk__in=queryset.values("pk")).order_by("pk")[: perms.MAX_SELECTED + 1])
    if len(drifts) > perms.MAX_SELECTED:
        messages.error(
            request,
            f"{len(drifts) - 1}+ drifts selected; act on at most {perms.MAX_SELECTED} at a time "
            "(filter the list first, or use manage.py checkconsistency --repair).",
        )
        return None
    return drifts


@admin.register(Drift)
class DriftAdmin(admin.ModelAdmin):
    list_display = [
        "short_key",
        "check_name",
        "kind",
        "store",
        "severity",
        "status",
        "times_seen",
        "first_seen",
        "last_seen",
    ]
    list_display_links = ["short_key"]
    list_filter = [CheckFilter, KindFilter, StoreFilter, "status", SeverityFilter, AgeFilter]
    search_fields = ["key"]
    search_help_text = "A drift's key, exactly or its beginning."
    ordering = ["-last_seen", "-id"]
    list_per_page = 100
    show_full_result_count = False
    actions = ["acknowledge_selected", "mute_selected", "reverify_selected", "repair_selected"]
    detail_template = "admin/consistency/drift/detail.html"

    # --- permissions: drift is written by audits; people act on it only through the actions.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_review_permission(self, request: HttpRequest) -> bool:
        return perms.can_review(request)

    def has_repair_permission(self, request: HttpRequest) -> bool:
        return perms.can_repair(request)

    @admin.display(description="key", ordering="key")
    def short_key(self, obj: Drift) -> str:
        return obj.key if len(obj.key) <= 60 else obj.key[:57] + "..."

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Drift], search_term: str
    ) -> tuple[QuerySet[Drift], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        # Exact or prefix, case-sensitive: both use drift_key_idx.
        return queryset.filter(Q(key=term) | Q(key__startswith=term)), False

    # --- list actions
    @admin.action(description="Acknowledge selected drift", permissions=["review"])
    def acknowledge_selected(self, request: HttpRequest, queryset: QuerySet[Drift]) -> None:
        chosen = review.acknowledge(queryset, request.user)
        messages.success(request, f"Acknowledged {len(chosen)} drift(s).")

    @admin.action(description="Mute selected drift until a date", permissions=["review"])
    def mute_selected(self, request: HttpRequest, queryset: QuerySet[Drift]) -> HttpResponse | None:
        form = MuteForm(request.POST if "until" in request.POST else None)
        if form.is_bound and form.is_valid():
            chosen = review.mute(
                queryset, request.user, form.cleaned_data["until"], form.cleaned_data["reason"]
            )
            messages.success(request, f"Muted {len(chosen)} drift(s).")
            return None
        drifts = _selected(queryset, request)
        if drifts is None:
            return None
        return self._render(
            request,
            "admin/consistency/drift/mute.html",
            {"form": form, "drifts": drifts, "action": "mute_selected", "title": "Mute drift"},
        )

    @admin.action(description="Re-verify selected drift now", permissions=["review"])
    def reverify_selected(self, request: HttpRequest, queryset: QuerySet[Drift]) -> None:
        drifts = _selected(queryset, request)
        if drifts is None:
            return
        review.log(request.user, drifts, "Re-verify requested")
        for drift in drifts:
            tasks.reverify_drift.delay(drift.pk, request.user.pk)
        messages.success(request, f"Re-verifying {len(drifts)} drift(s); each page shows the outcome.")

    @admin.action(description="Repair selected drift…", permissions=["repair"])
    def repair_selected(self, request: HttpRequest, queryset: QuerySet[Drift]) -> HttpResponse | None:
        drifts = _selected(queryset, request)
        if drifts is None:
            return None
        if request.POST.get("confirm") == "yes":
            self._queue_repair(request, drifts)
            return None
        return self._render(
            request,
            "admin/consistency/drift/repair_confirm.html",
            {
                "plans": review.plan(drifts),
                "drifts": drifts,
                "action": "repair_selected",
                "title": "Repair drift",
            },
        )

    def _queue_repair(self, request: HttpRequest, drifts: list[Drift]) -> None:
        active = [d for d in drifts if d.status in review.ACTIVE]
        if not active:
            messages.warning(
                request, "Nothing to repair: the selected drift is already repaired or resolved."
            )
            return
        review.log(request.user, active, "Repair requested")
        tasks.repair_drifts.delay([d.pk for d in active], request.user.pk)
        messages.success(
            request, f"Repair of {len(active)} drift(s) queued; the drift page shows the outcome."
        )

    def _render(self, request: HttpRequest, template: str, context: dict[str, Any]) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            **context,
        }
        return TemplateResponse(request, template, context)

    # --- detail page and its action URLs
    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        info = "consistency_drift"
        return [
            path("<int:pk>/acknowledge/", view(self.acknowledge_view), name=f"{info}_acknowledge"),
            path("<int:pk>/mute/", view(self.mute_view), name=f"{info}_mute"),
            path("<int:pk>/reverify/", view(self.reverify_view), name=f"{info}_reverify"),
            path("<int:pk>/repair/", view(self.repair_view), name=f"{info}_repair"),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        drift = get_object_or_404(Drift.objects.select_related("first_run", "last_run"), pk=object_id)
        if not self.has_view_permission(request, drift):
            raise PermissionDenied
        return self._detail(request, drift, MuteForm())

    def _detail(self, request: HttpRequest, drift: Drift, mute_form: MuteForm) -> TemplateResponse:
        decl = registry.get(drift.check_name) if drift.check_name in registry else None
        sightings = DriftSighting.objects.filter(drift=drift).select_related("run").order_by("-run_id")
        entries = LogEntry.objects.filter(
            content_type=ContentType.objects.get_for_model(Drift), object_id=str(drift.pk)
        ).select_related("user")
        return self._render(
            request,
            self.detail_template,
            {
                "title": f"Drift {drift.kind} in {drift.check_name}",
                "original": drift,
                "drift": drift,
                "decl": decl,
                "rows": side_by_side(drift),
                "sightings": list(sightings[:HISTORY_LIMIT]),
                "sighting_count": sightings.count(),
                "repairs": list(
                    drift.repairs.select_related("performed_by").order_by("-created_at")[:HISTORY_LIMIT]
                ),
                "entries": list(entries.order_by("-action_time")[:HISTORY_LIMIT]),
                "active": drift.status in review.ACTIVE,
                "can_review": perms.can_review(request),
                "can_repair": perms.can_repair(request),
                "mute_form": mute_form,
            },
        )

    def _acting_on(self, request: HttpRequest, pk: int, allowed: bool) -> Drift:
        if not allowed:
            raise PermissionDenied
        return get_object_or_404(Drift, pk=pk)

    def _back(self, drift: Drift) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:consistency_drift_change", args=[drift.pk]))

    def acknowledge_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        drift = self._acting_on(request, pk, perms.can_review(request))
        if request.method != "POST":
            return self._back(drift)
        done = review.acknowledge(Drift.objects.filter(pk=drift.pk), request.user)
        if done:
            messages.success(request, "Drift acknowledged.")
        else:
            messages.warning(request, f"Nothing to acknowledge: the drift is {drift.get_status_display()}.")
        return self._back(drift)

    def mute_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        drift = self._acting_on(request, pk, perms.can_review(request))
        if request.method != "POST":
            return self._back(drift)
        form = MuteForm(request.POST)
        if not form.is_valid():
            problems = "; ".join(f"{name}: {' '.join(map(str, errs))}" for name, errs in form.errors.items())
            messages.error(request, f"Not muted: {problems}")
            return self._detail(request, drift, form)
        try:
            review.mute(
                Drift.objects.filter(pk=drift.pk),
                request.user,
                form.cleaned_data["until"],
                form.cleaned_data["reason"],
            )
        except ReviewError as exc:
            messages.error(request, f"Not muted: {exc}")
        else:
            messages.success(request, f"Drift muted until {form.cleaned_data['until']:%Y-%m-%d}.")
        return self._back(drift)

    def reverify_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        drift = self._acting_on(request, pk, perms.can_review(request))
        if request.method == "POST":
            review.log(request.user, [drift], "Re-verify requested")
            tasks.reverify_drift.delay(drift.pk, request.user.pk)
            messages.success(request, "Re-verify queued; the outcome appears in the history below.")
        return self._back(drift)

    def repair_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        drift = self._acting_on(request, pk, perms.can_repair(request))
        if request.method == "POST" and request.POST.get("confirm") == "yes":
            self._queue_repair(request, [drift])
            return self._back(drift)
        return self._render(
            request,
            "admin/consistency/drift/repair_confirm.html",
            {"plans": review.plan([drift]), "drifts": [drift], "single": drift, "title": "Repair drift"},
        )


def drift_link(text: str, **filters: str) -> str:
    """A link to the drift list with ``filters`` applied (used by the runs and the dashboard)."""
    query = "&".join(f"{k}={v}" for k, v in filters.items())
    return format_html('<a href="{}?{}">{}</a>', reverse("admin:consistency_drift_changelist"), query, text)
