"""`python -m webapp`: serve the app with waitress on HOST:PORT (never the debug server)."""
from __future__ import annotations

import logging
import os
import sys

from waitress import serve

from runtime.memory import tune_malloc
from runtime.settings import load_dotenv
from webapp import create_app
from webapp.settings import WebSettings

log = logging.getLogger("webapp")


def check_threads(settings: WebSettings, engine_info: dict) -> None:
    """Warn when every web thread may be held by a generation (queued or running): /health, downloads and
    the "busy" answers would then wait behind them, and a container health check could time out."""
    held = int(engine_info.get("max_queue") or 0) + int(engine_info.get("concurrency") or 1)
    if settings.threads <= held:
        log.warning("WEB_THREADS=%d is not above MAX_QUEUE + CONCURRENCY = %d: under load, health checks and "
                    "downloads wait behind generations; raise WEB_THREADS or lower MAX_QUEUE",
                    settings.threads, held)


def main() -> int:
    """Read .env and the environment, start the engine loading, and serve; a bad setting or a port that
    cannot be opened ends the process with one logged line (exit 2 and 1), never a bare traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_dotenv()
    tune_malloc()  # before the engine and the web server start their threads
    try:
        settings = WebSettings.from_env()
        app = create_app(settings)
    except ValueError as exc:
        log.error("invalid setting: %s", exc)
        return 2
    check_threads(settings, app.extensions["webapp"].info())
    log.info("serving on http://%s:%d", settings.host, settings.port)
    try:
        serve(app, host=settings.host, port=settings.port, threads=settings.threads,
              max_request_body_size=app.config["MAX_CONTENT_LENGTH"],
              channel_request_lookahead=1,  # lets a streaming answer notice that its client went away
              ident="internvl-webapp")
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror or exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
