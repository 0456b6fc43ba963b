"""Optional per-client rate limit (RATE_LIMIT, e.g. "60/minute"): flask-limiter, imported only when it is on.

Counts the requests that make work (POST, DELETE) per client address; pages, /health, /metrics, downloads
and status polls are never limited. Past the limit: 429 in the one error body, with Retry-After.
"""
from __future__ import annotations

from flask import Flask, request

from webapp.settings import WebSettings

CHEAP = ("GET", "HEAD", "OPTIONS")


def install(app: Flask, settings: WebSettings) -> None:
    """Attach flask-limiter to app when settings.rate_limit is set (in-memory counters, this process)."""
    if not settings.rate_limit:
        return
    try:
        from flask_limiter import Limiter
        from flask_limiter.util import get_remote_address
    except ImportError:
        raise ValueError("RATE_LIMIT is set but flask-limiter is not installed (pip install flask-limiter)") from None
    # application limits: one budget per client across all routes (default limits would count each route apart)
    limiter = Limiter(get_remote_address, app=app, application_limits=[settings.rate_limit],
                      application_limits_exempt_when=lambda: request.method in CHEAP, storage_uri="memory://",
                      headers_enabled=True)
    app.extensions["webapp_limiter"] = limiter
