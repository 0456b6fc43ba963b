"""Per-request guards and headers: API key (for the API, and for the pages unless PUBLIC_PAGES), failed-key
throttling, CSRF token for page posts, trusted proxies, security headers, request metrics."""
from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque

from flask import Flask, g, redirect, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_babel import lazy_gettext as _l
from werkzeug.middleware.proxy_fix import ProxyFix

from runtime.errors import RuntimeFailure
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
# Pages that must stay reachable without the key: where it is entered, and the language switch.
OPEN_PAGES = ("pages.login", "pages.login_post", "pages.set_language")
FAILURES_ALLOWED = 10  # wrong keys per client address within FAILURE_WINDOW_S before it must wait
FAILURE_WINDOW_S = 300.0
FAILURE_CLIENTS = 10_000  # addresses remembered at once (oldest forgotten first): bounded memory


class TooManyFailures(RuntimeFailure):
    """Too many wrong API keys from one client address in a short time."""

    code = "rate_limited"
    status = 429


class FailureThrottle:
    """Counts failed authentications per client address in a sliding window, in bounded memory."""

    def __init__(self, allowed: int = FAILURES_ALLOWED, window_s: float = FAILURE_WINDOW_S,
                 clients: int = FAILURE_CLIENTS):
        self.allowed, self.window_s, self.clients = allowed, window_s, clients
        self._failures: OrderedDict[str, deque] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        """Raise TooManyFailures (429 with Retry-After) while client has used up its failures."""
        with self._lock:
            times = self._recent(client, time.monotonic())
            if len(times) >= self.allowed:
                wait = int(times[0] + self.window_s - time.monotonic()) + 1
                error = TooManyFailures(_l("Too many wrong API keys. Please wait a few minutes and try again."))
                error.retry_after = max(wait, 1)
                raise error

    def failed(self, client: str) -> None:
        """Record one failed authentication of client."""
        with self._lock:
            self._recent(client, time.monotonic()).append(time.monotonic())
            self._failures.move_to_end(client)
            while len(self._failures) > self.clients:
                self._failures.popitem(last=False)

    def _recent(self, client: str, now: float) -> deque:
        times = self._failures.setdefault(client, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the cookie marked Secure whenever the request came over HTTPS
    (directly, or through a trusted proxy that says so in X-Forwarded-Proto)."""

    def get_cookie_secure(self, app) -> bool:
        """SESSION_COOKIE_SECURE, or True for a request that arrived over HTTPS."""
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def client_key() -> str:
    """Who is asking, for per-client shares of the stores and throttles: the client address (the real one
    behind a trusted proxy, see TRUSTED_PROXIES). Not the API key: every API client may share one."""
    return "addr:" + (request.remote_addr or "unknown")


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


def sent_key() -> str:
    """The API key the request carries (Authorization: Bearer, or X-API-Key), or ""."""
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("X-API-Key", "")


def key_matches(sent: str) -> bool:
    """True when sent is API_KEY (compared in constant time); failures count towards the throttle."""
    throttle: FailureThrottle = state().auth_failures
    client = request.remote_addr or "unknown"
    throttle.check(client)
    if hmac.compare_digest(sent.encode(), state().settings.api_key.encode()):
        return True
    throttle.failed(client)
    return False


def page_fingerprint() -> str:
    """What a page session holds once the key was entered: changes when API_KEY or SECRET_KEY change."""
    settings = state().settings
    return hmac.new(settings.secret_key.encode(), settings.api_key.encode(), hashlib.sha256).hexdigest()[:32]


def check_api_key():
    """When API_KEY is set: /api and /v1 need it as a bearer token or X-API-Key; pages need it entered once
    on /login (kept in the session) unless PUBLIC_PAGES is on. Static files, /health, /metrics and the
    capability-URL downloads stay open."""
    settings = state().settings
    if not settings.api_key or request.endpoint in KEY_FREE_ENDPOINTS:
        return None
    if request.path.startswith(("/api/", "/v1/")):
        if not key_matches(sent_key()):
            raise Unauthorized(_l("A valid API key is required (Authorization: Bearer <key> or X-API-Key)."))
        return None
    if request.blueprint != "pages" or settings.public_pages or request.endpoint in OPEN_PAGES:
        return None
    if hmac.compare_digest(str(session.get("auth", "")), page_fingerprint()):
        return None
    if request.method == "GET":
        return redirect(url_for("pages.login", next=request.full_path.rstrip("?")), 303)
    raise Unauthorized(_l("Please enter the API key first (reload the page)."))


def before_request():
    """Start the request clock and check the API key (page posts check CSRF in their blueprint)."""
    g.started = time.perf_counter()
    return check_api_key()


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


def register(app: Flask, trusted_proxies: int = 0) -> None:
    """Install the guards, the headers, the session cookie rules, the csrf_token() template global, and
    (TRUSTED_PROXIES > 0) the real client address and scheme from that many proxies' X-Forwarded-* headers."""
    if trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=trusted_proxies, x_proto=trusted_proxies)
    app.session_interface = SessionInterface()
    app.extensions["webapp"].auth_failures = FailureThrottle()
    app.before_request(before_request)
    app.after_request(after_request)
    app.add_template_global(csrf_token)
