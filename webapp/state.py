"""What the app holds between requests: settings, engine, stores and metrics."""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from webapp.metrics import Metrics
from webapp.settings import WebSettings
from webapp.store import ResultStore, SessionStore


@dataclass
class AppState:
    """Shared, thread-safe objects of one app instance (kept in app.extensions["webapp"])."""

    settings: WebSettings
    engine: object  # runtime.engine.Engine (or a test double with the same methods)
    sessions: SessionStore
    results: ResultStore
    metrics: Metrics

    @classmethod
    def build(cls, settings: WebSettings, engine) -> "AppState":
        """Create the stores and metrics the settings ask for."""
        mb = 2**20
        sessions = SessionStore(settings.session_ttl_s, settings.max_sessions, settings.session_store_mb * mb)
        results = ResultStore(settings.result_ttl_s, settings.max_results, settings.result_store_mb * mb)
        metrics = Metrics(queue_depth=lambda: _queue_depth(engine), recent=settings.recent_requests)
        return cls(settings, engine, sessions, results, metrics)

    def info(self) -> dict:
        """engine.info(), never raising (a broken engine reads as state "error")."""
        try:
            return dict(self.engine.info())
        except Exception as e:  # the status page and /health must answer even then
            return {"state": "error", "error": str(e) or type(e).__name__, "progress": ""}

    def max_new_tokens(self) -> int:
        """The largest max_new_tokens a client may ask for: MAX_NEW_TOKENS_LIMIT, or the engine's own cap
        (its MAX_NEW_TOKENS, reported by info()) when that is lower."""
        cap = self.info().get("max_new_tokens")
        limit = self.settings.max_new_tokens
        if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1:
            limit = min(limit, cap)
        return limit


def _queue_depth(engine) -> float:
    try:
        return float(engine.info().get("queue_depth", 0))
    except Exception:
        return 0.0


def state() -> AppState:
    """The current app's AppState."""
    return current_app.extensions["webapp"]
