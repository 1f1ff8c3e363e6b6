"""``manage.py storesummary``: what each store holds, and whether the pairs agree."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from consistency.seed import summary
from consistency.seed.runner import DB_STORE, store_errors
from consistency.stores.errors import StoreError


class Command(BaseCommand):
    help = (
        "Count the rows, keys, events and vectors in every store and check that the pairs that must "
        "agree do. Exit 0 when they agree, 1 when they do not, 2 when a store fails."
    )
    # A diagnostic: it must run when system checks fail.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--skip-cache", action="store_true", help="Do not count cache keys.")
        parser.add_argument("--skip-analytics", action="store_true", help="Do not read the analytics store.")
        parser.add_argument("--skip-vectors", action="store_true", help="Do not read the vector store.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            counts, agreements = self._gather(options)
        except StoreError as exc:
            raise CommandError(f"store failure: {exc}", returncode=2) from exc
        width = max(len(f"{c.store}  {c.table}") for c in counts)
        self.stdout.write(f"{'store  table':<{width}}  {'rows':>12}")
        for c in counts:
            self.stdout.write(f"{c.store + '  ' + c.table:<{width}}  {c.rows:>12,}")
        self.stdout.write("")
        for agreement in agreements:
            line = agreement.describe()
            self.stdout.write(self.style.SUCCESS(line) if agreement.ok else self.style.ERROR(line))
        failed = [a for a in agreements if not a.ok]
        if failed:
            raise CommandError("stores disagree: " + " | ".join(a.describe() for a in failed), returncode=1)

    def _gather(self, options: dict[str, Any]) -> tuple[list[summary.Count], list[summary.Agreement]]:
        with store_errors(f"{DB_STORE['auth']} or {DB_STORE['default']}"):
            counts = summary.database_counts()
            agreements = [summary.users_agree()]
        if not options["skip_cache"]:
            counts += summary.cache_counts()
        if not options["skip_analytics"]:
            from consistency.stores.analytics import get_analytics

            store = get_analytics()
            extra, checks = summary.analytics_report(store)
            counts += extra
            agreements += checks
        if not options["skip_vectors"]:
            from consistency.stores.vectors import get_vectors

            with store_errors("milvus"):
                extra, checks = summary.vectors_report(get_vectors())
            counts += extra
            agreements += checks
        return counts, agreements
