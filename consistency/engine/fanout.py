"""Fan-out: one full row parity audit split into segment tasks that any Celery worker can take.

1. The coordinator (the process running the audit, inside ``run_audit``, so the run is
   recorded like any other) cuts each side into TID ranges (``AuditSegment`` rows) and
   sends one ``consistency.audit_segment`` task per segment.
2. Whoever gets to a segment first claims it (a row update, so exactly one claimer):
   the helper tasks, and the coordinator itself, which works through the pending
   segments instead of waiting (so a single worker never deadlocks on its own audit).
   A scan segment streams its range's fingerprints into an IBLT, stores the table's
   cells in the segment and spills (fingerprint, TID) records to a local file.
3. The coordinator sums the partials per side (IBLTs add up), subtracts and decodes:
   the fingerprints only one side holds.
4. Locate segments find those fingerprints' rows: from the scan's spill file when it is
   on this machine, else by scanning the range again with the fingerprints as a filter.
5. Settle and confirm exactly as the single-process audit does: re-read by key after the
   settle delay; report only what still differs; rows changed since the audit began, or
   since they were located, are 'in flight'.

No snapshot is shared across workers: each segment reads its own. A row that moves between
segments while they are read is seen twice or not at all, which only adds a candidate the
confirmation finds equal on both sides; a row changed during the audit is in flight. A
segment claimed by a worker that died is taken over by its redelivered task (same task id)
or, after ``FANOUT_LEASE_SECONDS``, by the coordinator; a segment is completed once, by its
current claimer only. A failed segment fails the check (never 'no drift').
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction
from django.db.models import Count, Q
from django.utils import timezone

from consistency.conf import app_settings
from consistency.engine.declarations import Declaration, RowParity, bind_row_parity
from consistency.engine.findings import AuditContext, Finding
from consistency.engine.redact import mask_urls
from consistency.engine.rowdiff import make_sides
from consistency.engine.rowside import TID_SIZE, UNIT_ROWS, Row, RowSide
from consistency.models import AuditSegment, CheckRun, Drift
from consistency.stores.errors import describe_failure

if TYPE_CHECKING:
    import numpy as np

    from consistency.engine.iblt import IBLT

logger = logging.getLogger("consistency.fanout")

SCAN, LOCATE = "scan", "locate"
SIDES = ("source", "target")
_POLL = 0.05  # seconds between looks at segments other workers hold
_BLOCK = 1 << 20  # spill records read back at a time


class SegmentFailed(RuntimeError):
    """A segment of a fanned-out audit failed: the check fails with it."""


# -- which checks fan out --------------------------------------------------------------------


def fan_out(decl: Declaration, *, min_rows: int | None = None, segments: int | None = None) -> Declaration:
    """``decl`` as a fanned-out check when it is a row parity between PostgreSQL databases
    (14+, as Django 5.2 requires: TID range scans) with at least ``min_rows`` (``FANOUT_ROWS``)
    rows on its larger side; else ``decl`` itself."""
    from consistency.fanout_tasks import audit_segment

    if type(decl) is not RowParity or audit_segment.app.conf.task_always_eager:
        return decl  # in-process mode (no broker): nobody to fan out to
    threshold = app_settings.FANOUT_ROWS if min_rows is None else min_rows
    if threshold is None:
        return decl  # fan-out switched off
    try:
        source, target = make_sides(bind_row_parity(decl))
        if source.dialect != "sql":
            return decl
        if max(source.estimate_rows(), target.estimate_rows()) < threshold:
            return decl
    except Exception:
        return decl  # a store that is down: the audit itself records the failure
    values = {f.name: getattr(decl, f.name) for f in dataclasses.fields(decl) if f.init}
    return FannedOutRowParity(**values, segments=segments or int(app_settings.FANOUT_SEGMENTS))


@dataclasses.dataclass(frozen=True)
class FannedOutRowParity(RowParity):
    """A row parity check whose full audit runs as segment tasks; same name, same records."""

    segments: int = 16

    def audit(self, ctx: AuditContext) -> tuple[list[Finding], dict[str, Any]]:
        if ctx.since is not None:
            return super().audit(ctx)  # an incremental audit reads the index, one query: no fan-out
        return Coordinator(self, ctx).run()


# -- segments: layout, claim, work -------------------------------------------------------------


def _layout(side: RowSide, *, exact: bool = False) -> tuple[int, int]:
    """(blocks, estimated rows) of the side's table.

    Planning reads the statistics (``relpages``, as the planner does) and takes no lock on
    the table; ``exact`` measures the relation (the open-ended last segment, at scan time).
    """
    size = "pg_relation_size(c.oid) / current_setting('block_size')::bigint"
    blocks = size if exact else f"CASE WHEN c.relpages > 0 THEN c.relpages ELSE {size} END"
    with side.connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {blocks}, greatest(c.reltuples, 0)::bigint FROM pg_class c WHERE c.oid = %s::regclass",
            [side.regclass],  # quoted: regclass parses identifier syntax
        )
        found, tuples = cursor.fetchone()
    return int(found), int(tuples)


def plan(
    job: uuid.UUID, check: str, side_name: str, side: RowSide, segments: int, cells: int
) -> list[AuditSegment]:
    """``segments`` TID ranges over the side's table, the last one open-ended (rows moved or
    added past the end while the audit runs are read too); each is read in ranges of about
    ``UNIT_ROWS`` rows, one query each."""
    blocks, tuples = _layout(side)
    per = -(-max(blocks, 1) // max(1, segments))
    unit = min(per, max(1, UNIT_ROWS * blocks // (tuples if tuples > 0 else 50 * max(blocks, 1))))
    starts = list(range(0, max(blocks, 1), per))
    return [
        AuditSegment(
            job=job,
            check_name=check,
            side=side_name,
            phase=SCAN,
            index=i,
            block_from=start,
            block_to=None if i == len(starts) - 1 else start + per,
            unit_blocks=unit,
            cells=cells,
        )
        for i, start in enumerate(starts)
    ]


def _ranges(segment: AuditSegment, side: RowSide) -> Iterator[str]:
    """SQL conditions for the segment's units (integers only, so the literals are safe), for
    statements run with a parameter list: ``side.table`` has its ``%`` doubled."""
    open_ended = segment.block_to is None
    end = (
        max(_layout(side, exact=True)[0], segment.block_from + 1)
        if open_ended
        else int(segment.block_to or 0)
    )
    starts = range(segment.block_from, end, segment.unit_blocks)
    ctid = f"{side.table}.ctid"
    for i, start in enumerate(starts):
        last = i == len(starts) - 1
        upper = (
            "" if last and open_ended else f" AND {ctid} < '({min(start + segment.unit_blocks, end)},0)'::tid"
        )
        yield f"{ctid} >= '({start},0)'::tid{upper}"


def spill_dir(job: uuid.UUID | str) -> Path:
    """Where this machine's workers keep the job's (fingerprint, TID) spill files."""
    return Path(tempfile.gettempdir()) / "consistency-fanout" / str(job)


def _spill_base(segment: AuditSegment) -> Path:
    return spill_dir(segment.job) / f"{segment.side}-{segment.index}"


def _scan(segment: AuditSegment, side: RowSide) -> tuple[IBLT, int]:
    """Stream the segment's fingerprints into an IBLT (one snapshot) and spill them with their TIDs."""
    from consistency.engine.iblt import IBLT

    table, rows = IBLT(segment.cells), 0
    base = _spill_base(segment)
    base.parent.mkdir(parents=True, exist_ok=True)
    suffix = f".{os.getpid()}.{uuid.uuid4().hex[:8]}"
    fp_tmp, tid_tmp = Path(f"{base}.fp{suffix}"), Path(f"{base}.tid{suffix}")
    try:
        with (
            side.snapshot(),
            fp_tmp.open("wb") as fp_out,
            tid_tmp.open("wb") as tid_out,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="consistency-fanout") as pool,
        ):

            def consume(fps: np.ndarray, tids: bytes) -> None:
                table.add(fps)
                fp_out.write(fps.astype("<i8", copy=False).tobytes())
                tid_out.write(tids)

            # One unit is added to the table while PostgreSQL computes the next: the worker
            # keeps its database session busy instead of taking turns with it.
            pending: Future[None] | None = None
            for where in _ranges(segment, side):
                for fps, tids in side.stream_unit(side.packed_sql(f" WHERE {where}"), []):
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(consume, fps, tids)
                    rows += len(fps)
            if pending is not None:
                pending.result()
        # Complete files only, under their final names: a crashed attempt leaves none behind.
        os.replace(fp_tmp, f"{base}.fp")
        os.replace(tid_tmp, f"{base}.tid")
    finally:
        fp_tmp.unlink(missing_ok=True)
        tid_tmp.unlink(missing_ok=True)
    return table, rows


def _from_spill(segment: AuditSegment, wanted: np.ndarray) -> list[bytes] | None:
    """TIDs of the wanted fingerprints in the scan's spill file, or None when it is not on this machine."""
    import numpy as np

    base = _spill_base(segment)
    fp_path, tid_path = Path(f"{base}.fp"), Path(f"{base}.tid")
    if not (fp_path.exists() and tid_path.exists()):
        return None
    positions: list[int] = []
    with fp_path.open("rb") as f:
        offset = 0
        while data := f.read(8 * _BLOCK):
            block = np.frombuffer(data, dtype="<i8")
            positions += (offset + np.flatnonzero(np.isin(block, wanted))).tolist()
            offset += len(block)
    found = []
    with tid_path.open("rb") as f:
        for position in positions:
            f.seek(position * TID_SIZE)
            found.append(f.read(TID_SIZE))
    return found


def _locate(segment: AuditSegment, side: RowSide) -> list[list[Any]]:
    """[key, fingerprint] of the segment's rows whose fingerprint is wanted: TIDs from the spill
    file (rows that moved since are not found: they changed during the audit), else a scan of
    the range that filters on the fingerprint; rows are read back by TID and kept if they still match."""
    import numpy as np

    wanted = np.frombuffer(bytes(segment.wanted or b""), dtype="<i8")
    if not len(wanted):
        return []
    wanted_set = set(wanted.tolist())
    with side.snapshot():
        tids = _from_spill(segment, wanted)
        if tids is None:
            tids = []
            fp_sql = side.fp_sql()
            with side.connection.cursor() as cursor:
                for where in _ranges(segment, side):
                    cursor.execute(
                        f"SELECT tidsend({side.table}.ctid) FROM {side.table}"
                        f" WHERE {where} AND {fp_sql} = ANY(%s::bigint[])",
                        [wanted.tolist()],
                    )
                    tids += [bytes(tid) for (tid,) in cursor.fetchall()]
        rows = side.rows_by_locators(tids) if tids else []
    return [[row.key, row.fp] for row in rows if row.fp in wanted_set]


def claim(job: uuid.UUID, owner: str, phase: str, segment_id: int | None = None) -> AuditSegment | None:
    """Claim one pending segment of ``job`` (``segment_id``, or the first pending one) for ``owner``.

    A segment already running under ``owner`` is claimed again: that is its task, redelivered
    after the worker that held it died.
    """
    with transaction.atomic(using=AuditSegment.objects.db):
        if segment_id is None:
            found = (
                AuditSegment.objects.select_for_update(skip_locked=True)
                .filter(job=job, phase=phase, status=AuditSegment.Status.PENDING)
                .order_by("side", "index")
                .first()
            )
        else:
            found = (
                AuditSegment.objects.select_for_update()
                .filter(pk=segment_id)
                .filter(
                    Q(status=AuditSegment.Status.PENDING)
                    | Q(status=AuditSegment.Status.RUNNING, claimed_by=owner)
                )
                .first()
            )
        if found is None:
            return None
        found.status, found.claimed_by, found.claimed_at = AuditSegment.Status.RUNNING, owner, timezone.now()
        found.worker = f"{socket.gethostname()}:{os.getpid()}"
        found.attempts += 1
        found.save(update_fields=["status", "claimed_by", "claimed_at", "worker", "attempts"])
    return found


def _complete(segment: AuditSegment, owner: str, **values: Any) -> bool:
    """Record the segment's outcome, if ``owner`` still holds it (a segment completes once)."""
    held = AuditSegment.objects.filter(pk=segment.pk, status=AuditSegment.Status.RUNNING, claimed_by=owner)
    return held.update(**values) == 1


def work(segment: AuditSegment, owner: str) -> bool:
    """Scan or locate a claimed segment and store the outcome; False if it failed (recorded)."""
    from consistency.engine.registry import registry

    try:
        decl = registry.get(segment.check_name)
        source, target = make_sides(bind_row_parity(decl))  # type: ignore[arg-type]
        side = source if segment.side == "source" else target
        if segment.phase == SCAN:
            table, rows = _scan(segment, side)
            partial = (
                table.fp.astype("<u8", copy=False).tobytes() + table.check.astype("<u8", copy=False).tobytes()
            )
            _complete(segment, owner, status=AuditSegment.Status.DONE, partial=partial, rows=rows)
        else:
            found = _locate(segment, side)
            _complete(segment, owner, status=AuditSegment.Status.DONE, found=found, rows=len(found))
        return True
    except Exception as exc:
        message = mask_urls(describe_failure(exc))
        logger.error("segment %s failed: %s", segment, message)
        _complete(segment, owner, status=AuditSegment.Status.FAILED, error=message[:2000])
        return False


def work_on(segment_id: int, owner: str) -> str:
    """The segment task: claim segment ``segment_id`` unless someone else has; work on it."""
    segment = AuditSegment.objects.filter(pk=segment_id).only("job", "phase").first()
    if segment is None:
        return "gone"  # the audit ended (its segments are deleted when it does)
    claimed = claim(segment.job, owner, segment.phase, segment_id)
    if claimed is None:
        return "taken"
    return "done" if work(claimed, owner) else "failed"


def load_partial(segment: AuditSegment) -> IBLT:
    import numpy as np

    from consistency.engine.iblt import IBLT

    table = IBLT(segment.cells)
    cells = np.frombuffer(bytes(segment.partial or b""), dtype="<u8")
    size = len(table.fp)
    table.fp, table.check = cells[:size].astype(np.uint64), cells[size:].astype(np.uint64)
    return table


def delete_job(job: uuid.UUID) -> None:
    AuditSegment.objects.filter(job=job).delete()
    shutil.rmtree(spill_dir(job), ignore_errors=True)


def delete_stale(older_than: dt.timedelta = dt.timedelta(days=1)) -> int:
    """Drop the segments (and this machine's spill files) of audits whose coordinator died."""
    jobs = set(
        AuditSegment.objects.filter(created_at__lt=timezone.now() - older_than).values_list("job", flat=True)
    )
    for job in jobs:
        delete_job(job)
    root = spill_dir("x").parent
    cutoff = time.time() - older_than.total_seconds()
    for path in root.glob("*") if root.exists() else ():
        if path.stat().st_mtime < cutoff:
            shutil.rmtree(path, ignore_errors=True)
    return len(jobs)


# -- the coordinator -------------------------------------------------------------------------


def _cells(check: str) -> int:
    """IBLT sub-table size for every segment: room for the drift this check had last time.

    A retry costs another fanned-out scan here (no local spill to refill from), so the
    table is sized from the check's history; drift beyond it falls back to one process.
    """
    from consistency.engine.ibltsize import MAX_CELLS

    last = (
        CheckRun.objects.filter(check_name=check, status__in=["ok", "drift"])
        .order_by("-id")
        .values_list("drift_count", "in_flight")
        .first()
    )
    unresolved = [Drift.Status.OPEN, Drift.Status.ACKNOWLEDGED, Drift.Status.MUTED]
    expected = Drift.objects.filter(check_name=check, status__in=unresolved).count() + sum(last or (0, 0))
    return int(min(MAX_CELLS, max(app_settings.IBLT_MIN_CELLS, 2 * expected)))


class Coordinator:
    """Runs one fanned-out audit of one check: plan, dispatch, work alongside, merge, confirm."""

    def __init__(self, decl: FannedOutRowParity, ctx: AuditContext) -> None:
        self.decl, self.ctx = decl, ctx
        self.bound = bind_row_parity(decl)
        self.source, self.target = make_sides(self.bound)
        self.job = uuid.uuid4()
        self.owner = f"coordinator:{self.job}"
        self.figures: dict[str, Any] = {"strategy": "fanout", "mode": "full"}

    @property
    def sides(self) -> dict[str, RowSide]:
        return {"source": self.source, "target": self.target}

    def run(self) -> tuple[list[Finding], dict[str, Any]]:
        delete_stale()
        try:
            return self._run()
        finally:
            delete_job(self.job)

    def _run(self) -> tuple[list[Finding], dict[str, Any]]:
        began = time.monotonic()
        cells = _cells(self.decl.name)
        segments = [
            s
            for name, side in self.sides.items()
            for s in plan(self.job, self.decl.name, name, side, self.decl.segments, cells)
        ]
        self._start(segments, SCAN)
        totals: dict[str, IBLT] = {}
        rows = dict.fromkeys(SIDES, 0)
        for segment in AuditSegment.objects.filter(job=self.job, phase=SCAN).order_by("side", "index"):
            part = load_partial(segment)
            if segment.side in totals:
                totals[segment.side].merge(part)
            else:
                totals[segment.side] = part
            rows[segment.side] += segment.rows
        self.figures["scan_seconds"] = round(time.monotonic() - began, 3)
        self.figures["workers"] = len(
            set(AuditSegment.objects.filter(job=self.job, phase=SCAN).values_list("worker", flat=True))
        )
        self.figures.update(
            compared=max(rows.values()),
            segments=len(segments),
            source_rows=rows["source"],
            target_rows=rows["target"],
        )
        decoded = totals["source"].subtract(totals["target"]).decode()
        if not decoded.complete:
            logger.warning("%s: drift beyond the fan-out tables; auditing in one process", self.decl.name)
            findings, figures = RowParity.audit(self.decl, self.ctx)
            return findings, {**figures, "strategy": f"fanout-fallback+{figures.get('strategy')}"}
        located = self._locate({"source": decoded.left, "target": decoded.right})
        self.figures["locate_seconds"] = round(time.monotonic() - began - self.figures["scan_seconds"], 3)
        unlocated = len(decoded.left) + len(decoded.right) - sum(len(v) for v in located.values())
        findings = self._confirm(located["source"], located["target"], unlocated)
        self.figures["seconds"] = round(time.monotonic() - began, 3)
        logger.info("fan-out figures of %s: %s", self.decl.name, json.dumps(self.figures, sort_keys=True))
        return findings, self.figures

    def _start(self, segments: list[AuditSegment], phase: str) -> None:
        """Store the segments, send their tasks, and work through them until all are done."""
        from celery import group

        from consistency.fanout_tasks import audit_segment

        made = AuditSegment.objects.bulk_create(segments)
        try:
            group(audit_segment.si(s.pk) for s in made).apply_async()
        except Exception as exc:  # a broker that is down: the coordinator does every segment itself
            logger.warning("fan-out tasks not sent (%s); the coordinator works alone", describe_failure(exc))
        self._drain(phase)

    def _drain(self, phase: str) -> None:
        lease = dt.timedelta(seconds=float(app_settings.FANOUT_LEASE_SECONDS))
        mine = AuditSegment.objects.filter(job=self.job, phase=phase)
        while True:
            segment = claim(self.job, self.owner, phase)
            if segment is not None:
                work(segment, self.owner)
                if self.ctx.progress is not None and phase == SCAN:
                    self.ctx.progress(AuditSegment.objects.get(pk=segment.pk).rows)
                continue
            states = dict(mine.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
            failed = mine.filter(status=AuditSegment.Status.FAILED).first()
            if failed is not None:
                raise SegmentFailed(f"{phase} segment {failed.side} #{failed.index} failed: {failed.error}")
            if not states.get(AuditSegment.Status.PENDING) and not states.get(AuditSegment.Status.RUNNING):
                return
            # A claimer silent for longer than the lease is presumed dead: its segment is redone.
            mine.filter(status=AuditSegment.Status.RUNNING, claimed_at__lt=timezone.now() - lease).update(
                status=AuditSegment.Status.PENDING
            )
            time.sleep(_POLL)

    def _locate(self, wanted: dict[str, list[int]]) -> dict[str, dict[str, int]]:
        """key -> fingerprint of the rows holding each side's decoded fingerprints."""
        import numpy as np

        located: dict[str, dict[str, int]] = {name: {} for name in SIDES}
        scans = (
            AuditSegment.objects.filter(job=self.job, phase=SCAN).defer("partial").order_by("side", "index")
        )
        segments = [
            AuditSegment(
                job=self.job,
                check_name=s.check_name,
                side=s.side,
                phase=LOCATE,
                index=s.index,  # the scan segment's range, whose spill file it reads if it can
                block_from=s.block_from,
                block_to=s.block_to,
                unit_blocks=s.unit_blocks,
                cells=s.cells,
                wanted=np.array(sorted(set(wanted[s.side])), dtype="<i8").tobytes(),
            )
            for s in scans
            if wanted[s.side]
        ]
        if not segments:
            return located
        self._start(segments, LOCATE)
        for segment in AuditSegment.objects.filter(job=self.job, phase=LOCATE):
            located[segment.side].update((key, int(fp)) for key, fp in segment.found)
        return located

    def _confirm(
        self, first_source: dict[str, int], first_target: dict[str, int], unlocated: int
    ) -> list[Finding]:
        """Settle and confirm, as ``rowdiff.diff_rows`` does: report only what still differs."""
        keys = sorted(set(first_source) | set(first_target))
        self.figures.update(rows_fetched=len(first_source) + len(first_target), candidates=len(keys))
        in_flight = unlocated  # rows that changed between their scan and their location
        findings: list[Finding] = []
        if keys:
            if self.ctx.settle > 0:
                time.sleep(self.ctx.settle)
            now_source = self.source.rows_by_keys(keys)
            now_target = self.target.rows_by_keys(keys)
            labels = [f.label for f in self.bound.fields]
            secret = {f.label for f in self.bound.fields if f.secret}
            for key in keys:
                src, tgt = now_source.get(key), now_target.get(key)
                if src is None and tgt is None:
                    continue  # gone from both sides: transient
                if src is not None and tgt is not None and src.fp == tgt.fp:
                    continue  # equal now: transient
                if _moved_since(src, self.ctx.started_at) or _moved_since(tgt, self.ctx.started_at):
                    in_flight += 1
                    continue
                if _changed(first_source.get(key), src) or _changed(first_target.get(key), tgt):
                    in_flight += 1  # it moved between its scan and the re-read
                    continue
                findings.append(
                    Finding(
                        check=self.decl.name,
                        kind="missing" if tgt is None else "extra" if src is None else "mismatch",
                        key=key,
                        fields=_differing(src, tgt, labels),
                        source=_shown(src, secret),
                        target=_shown(tgt, secret),
                    )
                )
        self.figures["in_flight"] = in_flight
        for alias in {self.source.alias, self.target.alias}:
            connections[alias].close_if_unusable_or_obsolete()
        return findings


def _moved_since(row: Row | None, started_at: dt.datetime) -> bool:
    return row is not None and row.updated is not None and row.updated >= started_at


def _changed(first_fp: int | None, now: Row | None) -> bool:
    return first_fp is not None and (now is None or now.fp != first_fp)


def _differing(source: Row | None, target: Row | None, labels: Sequence[str]) -> tuple[str, ...]:
    if source is None or target is None:
        return ()
    return tuple(label for label, a, b in zip(labels, source.norm, target.norm, strict=True) if a != b)


def _shown(row: Row | None, secret: set[str]) -> dict[str, Any] | None:
    if row is None:
        return None
    return {label: ("<redacted>" if label in secret else value) for label, value in row.raw.items()}
