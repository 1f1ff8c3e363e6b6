"""Drift review: what the admin does with the audit's findings.

The services the admin views and the Celery tasks call: acknowledge, mute,
re-verify and repair drift, start an audit, and the figures of the dashboard.
They wrap the engine (``consistency.engine``) without changing it.
"""
