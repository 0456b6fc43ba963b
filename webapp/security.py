"""Per-request guards and headers: API key, CSRF token for page posts, security headers, request metrics."""
from __future__ import annotations

import hmac
import secrets
import time

from flask import Flask, g, request, session
from flask_babel import lazy_gettext as _l

from webapp.errors import CsrfFailed, Unauthorized
from webapp.state import state

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
# Downloads are capability URLs (their unguessable id is the secret), so pages can show them with <img>.
KEY_FREE_ENDPOINTS = ("api.result_png", "api.result_json")


def csrf_token() -> str:
    """The session's CSRF token (created on first use), for forms and the meta tag."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    """Refuse a page POST whose token (header X-CSRF-Token or form field csrf_token) is not the session's."""
    expected = session.get("csrf")
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token", "")
    if not expected or not hmac.compare_digest(str(sent), str(expected)):
        raise CsrfFailed(_l("This form has expired. Please reload the page and try again."))


def check_api_key() -> None:
    """When API_KEY is set, require it as a bearer token or X-API-Key on /api and /v1."""
    key = state().settings.api_key
    if not key or request.endpoint in KEY_FREE_ENDPOINTS:
        return
    if not request.path.startswith(("/api/", "/v1/")):
        return
    auth = request.headers.get("Authorization", "")
    sent = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("X-API-Key", "")
    if not hmac.compare_digest(sent.encode(), key.encode()):
        raise Unauthorized(_l("A valid API key is required (Authorization: Bearer <key> or X-API-Key)."))


def before_request() -> None:
    """Start the request clock and check the API key (page posts check CSRF in their blueprint)."""
    g.started = time.perf_counter()
    check_api_key()


def after_request(response):
    """Add the security headers and count the request."""
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith(("/api/", "/v1/", "/health")):
        response.headers.setdefault("Cache-Control", "no-store")
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    started = g.get("started", time.perf_counter())
    state().metrics.request(route, response.status_code, time.perf_counter() - started)
    return response


def register(app: Flask) -> None:
    """Install the guards, the headers and the csrf_token() template global."""
    app.before_request(before_request)
    app.after_request(after_request)
    app.add_template_global(csrf_token)
