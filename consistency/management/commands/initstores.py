"""Create the analytics database and tables and the Milvus collection; safe to re-run.

The analytics schema is versioned (``consistency.stores.analytics_versions``): the
command brings it to the latest version, or to ``--analytics-version N``, forwards
or backwards.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from consistency.stores.analytics import AnalyticsStore, get_analytics
from consistency.stores.analytics_schema import TABLES
from consistency.stores.analytics_versions import LATEST, migrate_analytics
from consistency.stores.errors import StoreError
from consistency.stores.vectors import get_vectors


class Command(BaseCommand):
    help = "Create the ClickHouse/chDB tables and the Milvus collection if missing (idempotent)."
    # Setting the stores up is how a failing store check gets fixed: do not let checks block it.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--skip-analytics", action="store_true", help="Leave ClickHouse/chDB alone.")
        parser.add_argument("--skip-vectors", action="store_true", help="Leave Milvus alone.")
        parser.add_argument(
            "--analytics-version",
            type=int,
            metavar="N",
            help=f"Move the analytics schema to version N, forwards or backwards (default: latest, {LATEST}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if not options["skip_analytics"]:
                self._analytics(options["analytics_version"])
            if not options["skip_vectors"]:
                self._vectors()
        except StoreError as exc:
            raise CommandError(f"store {exc.store} is unavailable: {exc.message}", returncode=2) from exc
        except ValueError as exc:  # a malformed URL or setting, named by the message
            raise CommandError(f"configuration error: {exc}", returncode=2) from exc

    def _analytics(self, version: int | None) -> None:
        store = get_analytics()
        label = f"analytics ({store.kind}, database {store.database})"
        before = self._tables(store)
        created = [f"database {store.database}"] if store.created_database else []
        store.created_database = False
        steps = migrate_analytics(store, version)
        after = self._tables(store)
        created += [f"table {store.database}.{t}" for t in TABLES if t in after and t not in before]
        dropped = [f"table {store.database}.{t}" for t in TABLES if t in before and t not in after]
        at = f"schema version {LATEST if version is None else version}"
        if created or dropped:
            done = [f"created {', '.join(created)}"] if created else []
            done += [f"dropped {', '.join(dropped)}"] if dropped else []
            self.stdout.write(self.style.SUCCESS(f"{label}: {'; '.join(done)}; {at}"))
        elif steps:
            self.stdout.write(self.style.SUCCESS(f"{label}: {'; '.join(steps)}; {at}"))
        else:
            self.stdout.write(f"{label}: already present ({at})")

    @staticmethod
    def _tables(store: AnalyticsStore) -> set[str]:
        rows = store.query("SELECT name FROM system.tables WHERE database = %(db)s", {"db": store.database})
        return {row[0] for row in rows}

    def _vectors(self) -> None:
        store = get_vectors()
        label = f"vectors (milvus, collection {store.collection}, dim {store.dim})"
        if store.ensure_collection():
            self.stdout.write(self.style.SUCCESS(f"{label}: created collection {store.collection}"))
        else:
            self.stdout.write(f"{label}: already present")
