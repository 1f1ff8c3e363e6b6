"""Aggregate parity: daily count, tokens and cost per user, tool_usage_logs against its events.

Both sides group in their own database (ClickHouse over the latest live
versions). A differing (user, day) is drilled down to its rows: the ids whose
event is missing, extra or different are named in the finding.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Sum
from django.db.models.functions import TruncDate

from consistency.engine.analyticscheck import EventSide
from consistency.engine.analyticsfp import TOOL_USAGE
from consistency.engine.declarations import Declaration
from consistency.engine.findings import AuditContext, Finding
from consistency.stores.analytics import get_analytics
from consistency.stores.analytics_schema import latest_rows_sql
from consistency.stores.analytics_sql import sql_literal

FIGURES = ("count", "tokens", "cost")
SHOWN_IDS = 20


@dataclass(frozen=True)
class AnalyticsDailyParity(Declaration):
    """Per (user, UTC day): the same number of tool uses, tokens and cost on both sides."""

    source_alias: str = "default"

    kind = "aggregate"

    @property
    def store(self) -> str:
        return "clickhouse"

    def validate(self) -> None:
        return None

    def _source(self, where: dict[str, Any] | None = None) -> dict[tuple[str, dt.date], tuple[int, ...]]:
        qs = TOOL_USAGE.model._default_manager.using(self.source_alias).filter(**(where or {}))
        grouped = (
            qs.annotate(day=TruncDate("created_at"))
            .values("user_id", "day")
            .annotate(n=Count("pk"), tokens=Sum("tokens_used"), cost=Sum("cost_cents"))
            .order_by()
        )
        return {(g["user_id"], g["day"]): (g["n"], g["tokens"] or 0, g["cost"] or 0) for g in grouped}

    def _target(self, side: EventSide) -> dict[tuple[str, dt.date], tuple[int, ...]]:
        columns = ["user_id", "created_at", "tokens_used", "cost_cents"]
        latest = latest_rows_sql(TOOL_USAGE.table, columns, database=side.store.database)
        sql = (
            "SELECT user_id, toDate(created_at) AS day, count(), sum(tokens_used), sum(cost_cents) "
            f"FROM ({latest}) GROUP BY user_id, day"
        )
        return {(u, d): (int(n), int(t), int(c)) for u, d, n, t, c in side.store.query(sql)}

    def _drill(self, side: EventSide, user: str, day: dt.date) -> list[str]:
        start = dt.datetime.combine(day, dt.time(), dt.UTC)
        end = start + dt.timedelta(days=1)
        ours = {
            TOOL_USAGE.key_of(e[0]): TOOL_USAGE.fingerprint(e)
            for e in TOOL_USAGE.source_rows(
                self.source_alias, filters={"user_id": user, "created_at__gte": start, "created_at__lt": end}
            )
        }
        where = f"user_id = {sql_literal(user)} AND toDate(created_at) = {sql_literal(day)}"
        latest = latest_rows_sql(
            TOOL_USAGE.table, TOOL_USAGE.columns, database=side.store.database, where=where
        )
        theirs = {TOOL_USAGE.key_of(r[0]): TOOL_USAGE.fingerprint(r) for r in side.store.query(latest)}
        return sorted(str(k) for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))

    def audit(self, ctx: AuditContext) -> tuple[list[Finding], dict[str, Any]]:
        side = EventSide(get_analytics(), TOOL_USAGE)
        source, target = self._source(), self._target(side)
        findings = []
        for user, day in sorted(k for k in set(source) | set(target) if source.get(k) != target.get(k)):
            a, b = source.get((user, day), (0, 0, 0)), target.get((user, day), (0, 0, 0))
            fields = tuple(name for name, x, y in zip(FIGURES, a, b, strict=True) if x != y)
            ids = self._drill(side, user, day)
            shown = ", ".join(ids[:SHOWN_IDS]) + (
                f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else ""
            )
            findings.append(
                Finding(
                    self.name,
                    "mismatch",
                    f"{user}|{day.isoformat()}",
                    fields,
                    dict(zip(FIGURES, a, strict=True)),
                    dict(zip(FIGURES, b, strict=True)),
                    detail=f"user {user} on {day.isoformat()}: {', '.join(fields)} differ; rows: {shown or 'none'}",
                )
            )
        return findings, {"compared": len(set(source) | set(target))}
