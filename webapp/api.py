"""The REST API blueprint: /api/v1/*, OpenAI-compatible /v1/*, /health, /metrics, /openapi.json."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify
from flask_babel import lazy_gettext as _l
from prometheus_client import CONTENT_TYPE_LATEST

from runtime.errors import InvalidInput
from webapp import openai_api, prepared, service
from webapp.errors import NotFound
from webapp.inputs import read_bool, read_choice, read_payload, read_phrases, read_text
from webapp.openapi import openapi_spec
from webapp.sse import reply_job
from webapp.state import state

bp = Blueprint("api", __name__)
bp.add_url_rule("/v1/chat/completions", view_func=openai_api.chat_completions, methods=["POST"])
bp.add_url_rule("/v1/models", view_func=openai_api.list_models, methods=["GET"])


@bp.post("/api/v1/chat")
def chat():
    """Ask a question about the image (first turn) or follow up on a session."""
    st, payload = state(), read_payload()
    question = read_text(payload, "question", st.settings.max_question_chars)
    image, options = prepared.request_image(payload, st)
    stream = read_bool(payload, "stream")
    conv = service.find_conversation(st, payload.get("session_id"))
    return reply_job(service.chat_job(st, conv, image, question, options), stream)


@bp.post("/api/v1/describe")
def describe():
    """Describe the image, short or detailed."""
    st, payload = state(), read_payload()
    detail = read_choice(payload, "detail", ("short", "detailed"), "short")
    image, options = prepared.request_image(payload, st)
    stream = read_bool(payload, "stream")
    conv = service.find_conversation(st, payload.get("session_id"))
    return reply_job(service.describe_job(st, conv, image, detail, options), stream)


@bp.post("/api/v1/ground")
def ground():
    """Find the phrases (or all objects) in the image: boxes, raw text and download links."""
    st, payload = state(), read_payload()
    image, options = prepared.request_image(payload, st)
    if image is None:
        raise InvalidInput(_l("Please add an image."), field="image")
    detect_all = read_bool(payload, "detect_all")
    phrases = read_phrases(payload, st.settings, detect_all)
    return jsonify(service.ground(st, image, phrases, detect_all, options))


@bp.post("/api/v1/images")
def prepare_image():
    """Start reading an image before the question: 202 with its status and status_url."""
    body = prepared.start(state(), read_payload(), "api.image_status")
    return jsonify(body), 202, {"Location": body["status_url"]}


@bp.get("/api/v1/images/<image_id>")
def image_status(image_id: str):
    """How far the preparation of an image has got."""
    return jsonify(prepared.status(state(), image_id, "api.image_status"))


@bp.delete("/api/v1/images/<image_id>")
def cancel_image(image_id: str):
    """Drop a preparation that is no longer wanted."""
    if not prepared.cancel(state(), image_id):
        raise prepared.unknown_image()
    return "", 204


@bp.get("/api/v1/results/<rid>.png")
def result_png(rid: str):
    """The annotated image of a grounding result."""
    return _result(rid, "png")


@bp.get("/api/v1/results/<rid>.json")
def result_json(rid: str):
    """The JSON report of a grounding result."""
    return _result(rid, "json")


def _result(rid: str, kind: str) -> Response:
    result = state().results.get(rid)
    if result is None:
        raise NotFound(_l("This result does not exist or has expired."))
    body, mimetype = (result.png, "image/png") if kind == "png" else (result.report, "application/json")
    headers = {"Content-Disposition": f'inline; filename="grounding-{rid[:8]}.{kind}"',
               "Cache-Control": "private, max-age=300"}
    return Response(body, mimetype=mimetype, headers=headers)


@bp.delete("/api/v1/sessions/<sid>")
def delete_session(sid: str):
    """Forget a conversation."""
    if not state().sessions.delete(sid):
        raise NotFound(_l("This conversation does not exist or has expired."), field="session_id")
    return "", 204


@bp.get("/health")
def health():
    """200 with model/backend/device once the engine is ready; until then 503 with the start's phase
    (starting, downloading, converting, exporting, loading) and its progress, or with the error that
    stopped it (phase "failed")."""
    info = state().info()
    if info.get("state") == "ready":
        keys = ("model", "format", "precision", "backend", "device")
        return jsonify({"status": "ok", **{k: info.get(k) for k in keys}})
    if info.get("state") == "error":
        body = {"status": "error", "phase": "failed", "error": info.get("error")}
        return jsonify(body), 503, {"Retry-After": "30"}
    body = {"status": "loading", "phase": info.get("phase"), "progress": info.get("progress")}
    body.update({k: info[k] for k in ("done", "total", "unit") if k in info})
    return jsonify(body), 503, {"Retry-After": "5"}


@bp.get("/metrics")
def metrics():
    """Prometheus text format."""
    return Response(state().metrics.render(), content_type=CONTENT_TYPE_LATEST)


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3 description of this API."""
    return jsonify(openapi_spec(state().settings))
