"""Parity declarations for the stores beyond SQL: the cache, analytics and vectors.

Imported at the end of ``consistency/parity.py`` so the registry's autodiscovery
registers them with the SQL declarations.
"""

from __future__ import annotations

from consistency.engine.analyticscheck import AnalyticsRowParity
from consistency.engine.analyticsdaily import AnalyticsDailyParity
from consistency.engine.cachecheck import CacheParity
from consistency.engine.declarations import Severity
from consistency.engine.registry import register
from consistency.engine.vectorcheck import VectorParity
from consistency.stores.analytics_schema import MESSAGE_EVENTS, TOOL_USAGE_EVENTS

register(
    CacheParity(
        name="cache_auth_sessions",
        description="auth:session:{id} entries equal their auth_sessions row and expire.",
        entities=("auth_session",),
        tags=("cache", "auth"),
    ),
    CacheParity(
        name="cache_auth_users",
        description="auth:user:{id} entries equal their auth_users row and expire.",
        entities=("auth_user",),
        tags=("cache", "auth", "users"),
    ),
    CacheParity(
        name="cache_backend_users",
        description="backend:user:{id} entries equal their users row and expire.",
        entities=("backend_user",),
        tags=("cache", "backend", "users"),
    ),
    CacheParity(
        name="cache_backend_threads",
        description="backend:thread:{id} entries equal their threads row and expire.",
        entities=("backend_thread",),
        severity=Severity.WARNING,
        tags=("cache", "backend"),
    ),
)

register(
    AnalyticsRowParity(
        name="analytics_message_events",
        description="Every message has an equal live message_events row, and no other event lives.",
        table=MESSAGE_EVENTS,
        tags=("analytics",),
    ),
    AnalyticsRowParity(
        name="analytics_tool_usage_events",
        description="Every tool usage log has an equal live tool_usage_events row, and no other event lives.",
        table=TOOL_USAGE_EVENTS,
        tags=("analytics",),
    ),
    AnalyticsDailyParity(
        name="analytics_tool_usage_daily",
        description="Daily tool uses, tokens and cost per user agree between tool_usage_logs and its events.",
        tags=("analytics",),
    ),
)

register(
    VectorParity(
        name="vectors_message_embeddings",
        description="Every message's embedding_id has a vector in Milvus, and every vector belongs to a message.",
        tags=("vectors",),
    ),
)
