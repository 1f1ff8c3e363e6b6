"""``manage.py seed``: fill every store with a consistent data set."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from consistency.seed.runner import SeedError, SeedOptions, SeedReport, run_seed
from consistency.stores.errors import StoreError


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = (
        "Fill both databases, the cache, the analytics store and the vector store with a realistic, "
        "consistent data set, deterministic for --seed. Refuses if the stores hold data, unless --flush."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--users", type=_positive, required=True, help="How many users to create.")
        parser.add_argument(
            "--seed", type=int, default=0, help="Random seed; the same seed gives the same ids."
        )
        parser.add_argument(
            "--batch-size", type=_positive, default=5_000, help="Users generated and written per round."
        )
        parser.add_argument("--skip-cache", action="store_true", help="Do not touch the cache.")
        parser.add_argument("--skip-analytics", action="store_true", help="Do not touch the analytics store.")
        parser.add_argument("--skip-vectors", action="store_true", help="Do not touch the vector store.")
        parser.add_argument(
            "--flush", action="store_true", help="Empty the seeded tables of every (non-skipped) store first."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            seed_options = SeedOptions(
                users=options["users"],
                seed=options["seed"],
                batch_size=options["batch_size"],
                cache=not options["skip_cache"],
                analytics=not options["skip_analytics"],
                vectors=not options["skip_vectors"],
                flush=options["flush"],
            )
            # A bar only for a person watching; logs and tests stay clean.
            with tqdm(
                total=seed_options.users, unit="user", file=sys.stderr, disable=not sys.stderr.isatty()
            ) as bar:
                report = run_seed(seed_options, progress=bar.update)
        except SeedError as exc:
            raise CommandError(str(exc), returncode=2) from exc
        except StoreError as exc:
            raise CommandError(f"store failure: {exc}", returncode=2) from exc
        self._summary(report)

    def _summary(self, report: SeedReport) -> None:
        rows = sorted(report.written.items())
        width = max(len(f"{store}  {table}") for (store, table), _ in rows)
        self.stdout.write(f"{'store  table':<{width}}  {'rows':>12}")
        for (store, table), count in rows:
            self.stdout.write(f"{store + '  ' + table:<{width}}  {count:>12,}")
        rate = report.total / report.seconds if report.seconds else 0.0
        self.stdout.write(
            self.style.SUCCESS(f"seeded {report.total:,} rows in {report.seconds:.1f}s ({rate:,.0f} rows/s)")
        )
