"""The one place where errors become HTTP answers: `{"error": {"code", "message", "type"}}`."""
from __future__ import annotations

import logging
import secrets

from flask import Flask, current_app, g, jsonify, render_template, request
from flask_babel import get_locale, gettext
from flask_babel import lazy_gettext as _l
from flask_babel.speaklater import LazyString
from werkzeug.exceptions import HTTPException

from runtime.errors import RuntimeFailure

log = logging.getLogger(__name__)


class NotFound(RuntimeFailure):
    """A session, result or page that does not exist (or expired)."""

    code = "not_found"
    status = 404


class Unauthorized(RuntimeFailure):
    """The API key is missing or wrong."""

    code = "unauthorized"
    status = 401


class CsrfFailed(RuntimeFailure):
    """A page form was posted without the token of the page that showed it."""

    code = "csrf_failed"
    status = 403


TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
         415: "invalid_request_error", 429: "rate_limit_error", 499: "cancelled", 503: "unavailable_error"}

# Plain-words messages shown when the runtime's own (English) message has no translation;
# keyed by code, or by (code, field) where the field allows a more precise word.
GENERIC = {
    "invalid_input": _l("Please check this field."),
    "invalid_image": _l("This image could not be read. The file may be damaged or incomplete."),
    "unsupported_media_type": _l("This file is not a supported image. Please use JPEG, PNG, WebP, GIF, BMP or TIFF."),
    "input_too_large": _l("This input is too large."),
    "model_not_ready": _l("The model is not ready yet. Please try again in a moment (see the status page)."),
    "busy": _l("The server is busy. Please try again in a few seconds."),
    "cancelled": _l("The request was cancelled."),
    "artifacts_missing": _l("The model files are missing: the model has to be exported first."),
    "not_found": _l("Not found (it may have expired)."),
    "method_not_allowed": _l("This method is not allowed here."),
    "bad_request": _l("The request could not be understood."),
    "rate_limited": _l("Too many requests. Please wait a moment and try again."),
    ("input_too_large", "image"): _l("The image is too large (in bytes or in pixels)."),
    ("invalid_input", "image"): _l("Please check the image."),
}
HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "input_too_large",
              415: "unsupported_media_type", 429: "rate_limited"}


def display_message(exc: RuntimeFailure) -> str:
    """The error's message in the request's language, in plain words."""
    if isinstance(exc.message, LazyString):  # raised by the web layer: already translatable
        return str(exc.message)
    translated = gettext(exc.message)
    if translated != exc.message or str(get_locale() or "en").startswith("en"):
        return translated
    return str(GENERIC.get((exc.code, exc.field)) or GENERIC.get(exc.code, exc.message))


def error_body(code: str, message: str, status: int, *, param: str | None = None, **extra) -> dict:
    """The single error body used by every route; `param` names the offending field when known."""
    err = {"code": code, "message": message, "type": TYPES.get(status, "server_error" if status >= 500
                                                              else "invalid_request_error")}
    if param:
        err["param"] = param
    err.update(extra)
    return {"error": err}


def wants_html() -> bool:
    """True for page requests made by a browser (a form post or a link), not by fetch() or an API client."""
    if request.blueprint == "api" or request.path.startswith(("/api/", "/v1/", "/health", "/metrics")):
        return False
    best = request.accept_mimetypes.best_match(["text/html", "application/json", "text/event-stream"])
    return best in (None, "text/html")


def respond(code: str, status: int, message: str, *, field: str | None = None, headers=None, **extra):
    """Answer an error as JSON, or for browser pages as the form again with the message by its field."""
    headers = dict(headers or {})
    state = current_app.extensions.get("webapp")
    if state is not None:
        state.metrics.error(code)
    if wants_html():
        render = g.get("render_form_error")
        if render is not None:
            return render(field or "form", message), status, headers
        return render_template("error.html", code=code, status=status, message=message, **extra), status, headers
    return jsonify(error_body(code, message, status, param=field, **extra)), status, headers


def handle_failure(exc: RuntimeFailure):
    """Every RuntimeFailure (runtime's and the web layer's) becomes its status and the one body."""
    headers = {}
    retry = getattr(exc, "retry_after", None)
    if retry is not None or exc.status == 503:
        headers["Retry-After"] = str(int(retry if retry is not None else 5))
    return respond(exc.code, exc.status, display_message(exc), field=exc.field, headers=headers)


def handle_http(exc: HTTPException):
    """Werkzeug's own errors (404, 405, 413 from MAX_CONTENT_LENGTH...) in the same body."""
    status = exc.code or 500
    code = HTTP_CODES.get(status, "http_error")
    if status == 413:
        state = current_app.extensions["webapp"]
        message = gettext("The upload is too large (the limit is %(mb)d MB).", mb=state.settings.max_upload_mb)
        field = "image"
    else:
        message, field = str(GENERIC.get(code, exc.description or exc.name)), None
    headers = {"Allow": ", ".join(exc.valid_methods)} if getattr(exc, "valid_methods", None) else {}
    return respond(code, status, message, field=field, headers=headers)


def handle_bug(exc: Exception):
    """A bug: log it with an id, answer 500 with that id and never the traceback."""
    if isinstance(exc, HTTPException):
        return handle_http(exc)
    error_id = secrets.token_hex(6)
    log.exception("internal error %s on %s %s", error_id, request.method, request.path)
    message = gettext("Internal error. Please report this id: %(id)s", id=error_id)
    return respond("internal_error", 500, message, error_id=error_id)


def register(app: Flask) -> None:
    """Install the error handlers on the app."""
    app.register_error_handler(RuntimeFailure, handle_failure)
    app.register_error_handler(HTTPException, handle_http)
    app.register_error_handler(Exception, handle_bug)
