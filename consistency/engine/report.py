"""Render an audit's results as a text table, JSON, or JUnit XML."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any
from xml.etree import ElementTree as ET

from django.core.serializers.json import DjangoJSONEncoder

from consistency.engine.findings import CheckResult
from consistency.models import AuditRun


def as_json_data(run: AuditRun, results: Sequence[CheckResult], limit: int | None = None) -> dict[str, Any]:
    return {
        "run": {
            "id": run.pk,
            "status": run.status,
            "started_at": run.started_at.isoformat(),
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        },
        "checks": [
            {
                "name": r.name,
                "kind": r.kind,
                "status": r.status,
                "compared": r.compared,
                "drift_count": r.drift_count,
                "error": r.error,
                "duration": round(r.duration, 3),
                "figures": r.figures,
                "drifts": [f.as_dict() for f in r.findings[:limit]],
            }
            for r in results
        ],
    }


def as_json(run: AuditRun, results: Sequence[CheckResult], limit: int | None = None) -> str:
    return json.dumps(as_json_data(run, results, limit), cls=DjangoJSONEncoder, indent=2, ensure_ascii=False)


def _short(value: Any, width: int = 40) -> str:
    text = (
        json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False) if not isinstance(value, str) else value
    )
    return text if len(text) <= width else text[: width - 1] + "…"


def as_text(run: AuditRun, results: Sequence[CheckResult], limit: int | None = 20) -> str:
    lines = [f"Audit run {run.pk}: {run.status.upper()}  ({run.mode}, {len(results)} checks)", ""]
    header = f"{'check':<36} {'status':<7} {'compared':>11} {'drift':>7}  {'time':>7}  details"
    lines += [header, "-" * len(header)]
    for r in results:
        kinds = Counter(f.kind for f in r.findings)
        details = r.error or ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "-"
        lines.append(
            f"{r.name:<36} {r.status:<7} {r.compared:>11,} {r.drift_count:>7,}  {r.duration:>6.2f}s  {details}"
        )
    for r in results:
        if not r.findings:
            continue
        lines += ["", f"{r.name}: {r.drift_count} drift"]
        for f in r.findings[:limit]:
            if f.kind == "mismatch":
                diffs = "; ".join(
                    f"{name}: {_short((f.source or {}).get(name))} != {_short((f.target or {}).get(name))}"
                    for name in f.fields
                )
                lines.append(f"  {f.kind:<9} {f.key}  {diffs}")
            else:
                lines.append(f"  {f.kind:<9} {f.key}  {f.detail}".rstrip())
        if limit is not None and r.drift_count > limit:
            lines.append(f"  … and {r.drift_count - limit} more (use --limit or --format json)")
    return "\n".join(lines) + "\n"


def as_junit(run: AuditRun, results: Sequence[CheckResult], limit: int | None = None) -> str:
    suite = ET.Element(
        "testsuite",
        name="checkconsistency",
        tests=str(len(results)),
        failures=str(sum(r.status == "drift" for r in results)),
        errors=str(sum(r.status == "error" for r in results)),
        time=f"{sum(r.duration for r in results):.3f}",
    )
    for r in results:
        case = ET.SubElement(
            suite, "testcase", classname=f"consistency.{r.kind}", name=r.name, time=f"{r.duration:.3f}"
        )
        if r.status == "error":
            ET.SubElement(case, "error", message=r.error or "error").text = r.error
        elif r.status == "drift":
            body = "\n".join(f"{f.kind} {f.key} {','.join(f.fields)}" for f in r.findings[:limit])
            ET.SubElement(case, "failure", message=f"{r.drift_count} drift").text = body
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


RENDERERS = {"text": as_text, "json": as_json, "junit": as_junit}
