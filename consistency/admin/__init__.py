"""The admin for drift review: audit runs, drift, the dashboard and the schedules' runs.

Importing this package registers the model admins (``admin.autodiscover``).
"""

from consistency.admin import beat, drifts, runs

__all__ = ["beat", "drifts", "runs"]
