"""Web app and REST API for the InternVL runtime: `create_app()` builds it, `python -m webapp` serves it."""
from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask, request, session
from flask.json.provider import DefaultJSONProvider
from flask_babel import Babel, get_locale

from webapp import errors, ratelimit, security
from webapp.settings import WebSettings
from webapp.state import AppState

LANGUAGES = {"en": "English", "ru": "Русский"}
HERE = Path(__file__).parent
log = logging.getLogger(__name__)


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, with a body nested too deeply for the parser read as invalid JSON (a 400), not a 500."""

    sort_keys = False  # keep the documented field order in answers

    def loads(self, s, **kwargs):
        """json.loads; RecursionError becomes the ValueError Flask answers as a bad request."""
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def select_locale() -> str:
    """The language chosen with the switch (kept in the session), else the browser's preference."""
    chosen = session.get("lang")
    if chosen in LANGUAGES:
        return chosen
    return request.accept_languages.best_match(list(LANGUAGES)) or "en"


def default_engine():
    """The real engine, configured from the environment, and the first start that exports the model if
    needed and then loads the engine, both in the background."""
    from runtime.engine import create_engine
    from runtime.settings import RuntimeSettings
    from webapp.firststart import FirstStart

    engine = create_engine(RuntimeSettings.from_env())
    return engine, FirstStart(engine).start()


def create_app(settings: WebSettings | None = None, engine=None) -> Flask:
    """Application factory: pass `engine` (tests pass their own); without one the model is exported if
    needed and the real engine loads, in the background, while the app already answers."""
    settings = settings or WebSettings.from_env()
    startup = None
    if engine is None:
        engine, startup = default_engine()
    app = Flask(__name__)
    app.json = JSONProvider(app)
    body_limit = settings.max_upload_bytes * 4 // 3 + 2**20  # base64 in JSON is a third bigger
    app.config.update(
        DEBUG=False,  # never the debugger in serving, whatever FLASK_DEBUG says
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=body_limit,
        MAX_FORM_MEMORY_SIZE=body_limit,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        BABEL_DEFAULT_LOCALE="en",
        BABEL_TRANSLATION_DIRECTORIES=str(HERE / "translations"),
    )
    Babel(app, locale_selector=select_locale)
    app.extensions["webapp"] = AppState.build(settings, engine, startup)
    app.jinja_env.globals.update(LANGUAGES=LANGUAGES, get_locale=get_locale)
    errors.register(app)
    security.register(app, settings.trusted_proxies)
    ratelimit.install(app, settings)

    from webapp import api, pages  # noqa: E402  (blueprints import this package's helpers)

    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    return app
