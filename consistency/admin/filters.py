"""List filters whose choices come from the registry and the models, never from a scan of the drift."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from consistency.engine.declarations import Severity
from consistency.engine.findings import KINDS
from consistency.engine.registry import registry


class _ChoiceFilter(admin.SimpleListFilter):
    field = ""

    def choices_list(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return self.choices_list()

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(**{self.field: value}) if value else queryset


class CheckFilter(_ChoiceFilter):
    title = "check"
    parameter_name = field = "check_name"

    def choices_list(self) -> list[tuple[str, str]]:
        return [(d.name, d.name) for d in registry]


class KindFilter(_ChoiceFilter):
    title = "kind"
    parameter_name = field = "kind"

    def choices_list(self) -> list[tuple[str, str]]:
        return [(k, k) for k in KINDS]


class StoreFilter(_ChoiceFilter):
    title = "store"
    parameter_name = field = "store"

    def choices_list(self) -> list[tuple[str, str]]:
        return [(s, s) for s in sorted({d.store for d in registry})]


class SeverityFilter(_ChoiceFilter):
    title = "severity"
    parameter_name = field = "severity"

    def choices_list(self) -> list[tuple[str, str]]:
        return [(s.value, s.value) for s in Severity]


class AgeFilter(admin.SimpleListFilter):
    """How long ago the drift was first seen."""

    title = "age"
    parameter_name = "age"
    SPANS = {"1d": (None, 1), "7d": (None, 7), "30d": (None, 30), "older": (30, None)}

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("1d", "first seen today (24 h)"),
            ("7d", "in the last 7 days"),
            ("30d", "in the last 30 days"),
            ("older", "more than 30 days ago"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        span = self.SPANS.get(self.value() or "")
        if span is None:
            return queryset
        now = timezone.now()
        older, newer = span
        if newer is not None:
            queryset = queryset.filter(first_seen__gte=now - dt.timedelta(days=newer))
        if older is not None:
            queryset = queryset.filter(first_seen__lt=now - dt.timedelta(days=older))
        return queryset
