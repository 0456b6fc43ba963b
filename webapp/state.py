"""What the app holds between requests: settings, engine, stores and metrics."""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from webapp.imagework import ImageQueue
from runtime.contract import EngineContract
from webapp.metrics import Metrics
from webapp.settings import WebSettings
from webapp.store import ResultStore, SessionStore

# What a start goes through, as /health reports it: the export's phases (export/progress.py), then the engine's.
PHASES = ("starting", "downloading", "converting", "exporting", "loading", "ready", "failed")
ENGINE_PHASES = {"loading": "loading", "ready": "ready", "error": "failed"}


@dataclass
class AppState:
    """Shared, thread-safe objects of one app instance (kept in app.extensions["webapp"])."""

    settings: WebSettings
    engine: EngineContract  # runtime.engine.Engine, or a stand-in keeping the same contract
    sessions: SessionStore
    results: ResultStore
    metrics: Metrics
    startup: object = None  # webapp.firststart.FirstStart while the model is exported, else None
    images: ImageQueue | None = None  # heavy image work (decoding, thumbnails, drawing), bounded
    auth_failures: object = None  # webapp.security.FailureThrottle: wrong API keys per client address

    @classmethod
    def build(cls, settings: WebSettings, engine, startup=None) -> "AppState":
        """Create the stores and metrics the settings ask for."""
        mb, share = 2**20, settings.client_share / 100
        sessions = SessionStore(settings.session_ttl_s, settings.max_sessions, settings.session_store_mb * mb, share)
        results = ResultStore(settings.result_ttl_s, settings.max_results, settings.result_store_mb * mb, share)
        metrics = Metrics(queue_depth=lambda: _queue_depth(engine), recent=settings.recent_requests)
        images = ImageQueue(settings.image_workers, settings.image_queue)
        return cls(settings, engine, sessions, results, metrics, startup, images=images)

    def info(self) -> dict:
        """engine.info() with the first start's phase and progress over it while that runs, never raising
        (a broken engine reads as state "error"). `phase` is one of PHASES."""
        try:
            info = dict(self.engine.info())
        except Exception as e:  # the status page and /health must answer even then
            info = {"state": "error", "error": str(e) or type(e).__name__, "progress": ""}
        first = self.startup.info() if self.startup is not None else None
        if first is not None:
            info.update(first)
        info.setdefault("phase", ENGINE_PHASES.get(info.get("state"), "loading"))
        return info

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
