"""Production settings: ``project.settings`` plus HTTPS-only cookies and headers.

Use ``DJANGO_SETTINGS_MODULE=project.settings_production`` behind a TLS-terminating
proxy that sets ``X-Forwarded-Proto``; ``manage.py check --deploy`` is clean with it
(given ``SECRET_KEY``, ``DEBUG=false`` and strong store passwords).
"""

from project import env
from project.settings import *  # noqa: F403

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = True
SECURE_HSTS_SECONDS = int(env.number("SECURE_HSTS_SECONDS", 31_536_000))
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
