"""`python -m webapp`: serve the app with waitress on HOST:PORT (never the debug server).

The server listens at once; the model is exported if needed and loaded in the background (webapp/firststart.py).
`python -m webapp --print-settings` prints what every stage will use, from `.env` and the environment.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from waitress import serve

from runtime.config import describe, load_env_file
from runtime.memory import tune_malloc
from webapp import create_app
from webapp.settings import WebSettings

log = logging.getLogger("webapp")
SECRETS = ("SECRET_KEY", "API_KEY")  # printed only as set or not


def check_threads(settings: WebSettings, engine_info: dict) -> None:
    """Warn when every web thread may be held by a generation (queued or running): /health, downloads and
    the "busy" answers would then wait behind them, and a container health check could time out."""
    held = int(engine_info.get("max_queue") or 0) + int(engine_info.get("concurrency") or 1)
    if settings.threads <= held:
        log.warning("WEB_THREADS=%d is not above MAX_QUEUE + CONCURRENCY = %d: under load, health checks and "
                    "downloads wait behind generations; raise WEB_THREADS or lower MAX_QUEUE",
                    settings.threads, held)


def waitress_options(app, settings: WebSettings) -> dict:
    """How waitress serves the app: address, threads, and the same body limit as the app's own."""
    return dict(host=settings.host, port=settings.port, threads=settings.threads,
                # the app's own limit: bodies above it are refused by waitress before they are read (in the
                # same JSON error shape, see json_errors_from_waitress)
                max_request_body_size=app.config["MAX_CONTENT_LENGTH"],
                channel_request_lookahead=1,  # lets a streaming answer notice that its client went away
                ident="internvl-webapp")


def json_errors_from_waitress(settings: WebSettings) -> None:
    """Answer the errors waitress raises itself, before the app sees a request (a body over the hard limit,
    a malformed request line or header), in the app's one JSON error shape instead of plain text."""
    from waitress import utilities

    from webapp.errors import error_body

    messages = {413: f"The request body is too large (uploads up to {settings.max_upload_mb} MB).",
                431: "The request headers are too large.", 400: "The request could not be understood."}

    def to_response(error, ident=None):
        code = {413: "input_too_large", 431: "headers_too_large"}.get(error.code, "bad_request")
        if error.code >= 500:
            code = "internal_error"
        message = messages.get(error.code, error.reason)
        body = json.dumps(error_body(code, message, error.code)).encode()
        return f"{error.code} {error.reason}", [("Content-Type", "application/json")], body

    utilities.Error.to_response = to_response


def stop_on_signal(app) -> None:
    """SIGTERM (docker stop, systemd) ends the server at once and cleanly: a running export is stopped
    first (it removes its unfinished output), then the process exits 0. Without a handler Python ignores
    SIGTERM as PID 1 in a container, and Docker kills it after 10 s."""
    def handler(signum, _frame):
        log.info("%s received: stopping", signal.Signals(signum).name)
        startup = app.extensions["webapp"].startup
        if startup is not None:
            startup.stop()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)


def print_settings() -> int:
    """Print the settings of the engine and the web app as ENV=value lines (secrets only as set or not)."""
    from runtime.settings import RuntimeSettings

    values = {**describe(RuntimeSettings.from_env()), **describe(WebSettings.from_env(secret_key="unused"))}
    for key, value in values.items():
        if key in SECRETS:
            value = "<set>" if os.environ.get(key, "").strip() else ""
        print(f"{key}={value}")
    return 0


def main(argv=None) -> int:
    """Read .env and the environment, start the first start (export if needed, then the engine), and
    serve; a bad setting or a port that cannot be opened ends the process with one logged line (exit 2
    and 1), never a bare traceback."""
    p = argparse.ArgumentParser(prog="python -m webapp", description=__doc__.splitlines()[0])
    p.add_argument("--print-settings", action="store_true", help="print the settings in force and exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    env_file = load_env_file()
    if args.print_settings:
        try:
            return print_settings()
        except ValueError as exc:
            print(f"invalid setting: {exc}", file=sys.stderr)
            return 2
    if env_file is not None:
        log.info("settings from the environment and %s", env_file)
    tune_malloc()  # before the engine and the web server start their threads
    try:
        settings = WebSettings.from_env()
        app = create_app(settings)
    except ValueError as exc:
        log.error("invalid setting: %s", exc)
        return 2
    stop_on_signal(app)
    json_errors_from_waitress(settings)
    check_threads(settings, app.extensions["webapp"].info())
    log.info("serving on http://%s:%d", settings.host, settings.port)
    try:
        serve(app, **waitress_options(app, settings))
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror or exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
