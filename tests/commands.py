"""Run ``checkconsistency`` the way a shell would see it: exit code and standard output."""

from __future__ import annotations

from io import StringIO

from django.core.management import call_command
from django.core.management.base import CommandError


def checkconsistency(*args: str) -> tuple[int, str]:
    """``(exit code, stdout)`` of ``manage.py checkconsistency ARGS --settle 0``."""
    out = StringIO()
    try:
        call_command("checkconsistency", *args, "--settle", "0", stdout=out, stderr=StringIO())
    except CommandError as exc:
        return exc.returncode, out.getvalue()
    return 0, out.getvalue()
