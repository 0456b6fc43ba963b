"""The pages blueprint: chat, grounding, images read ahead, status, API docs and the language switch."""
from __future__ import annotations

import json
import re
import shlex
from urllib.parse import quote, urlsplit

from babel.numbers import get_decimal_symbol
from flask import Blueprint, g, jsonify, redirect, render_template, request, session, url_for
from flask_babel import get_locale, gettext, ngettext
from flask_babel import lazy_gettext as _l

from runtime.errors import Busy, InvalidInput, RuntimeFailure
from webapp import LANGUAGES, prepared, service
from webapp.errors import NotFound
from webapp.inputs import Payload, read_bool, read_choice, read_payload, read_phrases, read_text, thumbnail_url
from webapp.openapi import N_, openapi_spec
from webapp.security import check_csrf, key_matches, page_fingerprint
from webapp.sse import reply_job
from webapp.state import state
from webapp.store import Conversation, new_id, valid_id

bp = Blueprint("pages", __name__)
ACTIONS = ("ask", "describe_short", "describe_detailed")
NO_STORE = {"Cache-Control": "no-store"}  # status polls must never be answered from a cache
PREVIEW_SIDE = 448  # px: the grounding form's preview of the image it keeps between runs

# Runtime messages the pages can show: listed so that they are extracted and translated (errors.display_message
# looks a runtime message up in the catalog).
RUNTIME_MESSAGES = (N_("Say what to look for: the phrase is empty."),
                    N_("This image is too large to be read ahead; send it with the question instead."))
# runtime.grounding's notes on a model's answer, kept in English in the JSON report, shown in the page's language
NOTES = tuple((re.compile(pattern, re.S), text) for pattern, text in (
    (r"No boxes found in the answer\.", N_("No boxes found in the answer.")),
    (r"No box was given for '(?P<label>.*)'\.", N_("No box was given for '%(label)s'.")),
    (r"A box list is not closed \(the answer was probably cut off\)\.",
     N_("A box list is not closed (the answer was probably cut off).")),
    (r"Ignored '(?P<text>.*)': not a complete box\.", N_("Ignored '%(text)s': not a complete box.")),
    (r"Ignored (?P<box>\[.*\]): a placeholder, not coordinates\.",
     N_("Ignored %(box)s: a placeholder, not coordinates.")),
    (r"Ignored (?P<box>\[.*\]): a box needs 4 numbers, found (?P<n>\d+)\.",
     N_("Ignored %(box)s: a box needs 4 numbers, found %(n)s.")),
    (r"Ignored (?P<box>\[.*\]): coordinates must be numbers\.", N_("Ignored %(box)s: coordinates must be numbers.")),
    (r"Ignored (?P<box>\[.*\]) for '(?P<label>.*)': the box has no area inside the image\.",
     N_("Ignored %(box)s for '%(label)s': the box has no area inside the image.")),
    (r"Kept the first (?P<kept>\d+) boxes; (?P<dropped>\d+) more were dropped\.",
     N_("Kept the first %(kept)s boxes; %(dropped)s more were dropped.")),
))


@bp.before_request
def guard_forms():
    """Say how to show an error next to its field on this form, then check the CSRF token of posts."""
    g.render_form_error = FORM_ERRORS.get(request.endpoint)
    if request.method == "POST":
        check_csrf()


@bp.get("/")
def chat_page():
    """The chat: dialog so far, image upload, question, Describe buttons, detail control."""
    return render_chat(_conversation() or Conversation(id=""))


@bp.post("/chat")
def chat_post():
    """One question or Describe press: streamed to fetch() (SSE), or answered then redirected (no JS)."""
    st, conv = state(), _conversation() or Conversation(id=new_id())
    payload = read_payload()
    g.form = {"question": payload.get("question", ""), "max_tiles": payload.get("max_tiles")}
    action = read_choice(payload, "action", ACTIONS, "ask")
    image, options = prepared.request_image(payload, st)
    if action == "ask":
        question = read_text(payload, "question", st.settings.max_question_chars)
        job = service.chat_job(st, conv, image, question, options)
    else:
        job = service.describe_job(st, conv, image, action.removeprefix("describe_"), options)
    session["sid"] = conv.id
    session["max_tiles"] = options.max_tiles
    if "text/event-stream" in request.headers.get("Accept", ""):
        return reply_job(job, stream=True)
    service.run_job(job)
    return redirect(url_for(".chat_page"), 303)


@bp.post("/chat/new")
def new_conversation():
    """Forget the dialog and the image read ahead for it, and start over."""
    state().sessions.delete(session.pop("sid", None))
    prepared.cancel(state(), session.pop("image_id", None))
    return redirect(url_for(".chat_page"), 303)


@bp.get("/ground")
def ground_page():
    """Grounding form, and the last result of this browser session if it has not expired."""
    return render_ground(_last_report())


@bp.post("/ground")
def ground_post():
    """Find the phrases in the uploaded image, keep the result, show it."""
    st = state()
    payload = read_payload()
    g.form = {"phrases": ", ".join(str(p) for p in payload.getlist("phrases")),
              "detect_all": payload.get("detect_all") is not None, "max_tiles": payload.get("max_tiles"),
              "image_id": payload.get("image_id")}
    image, options = prepared.request_image(payload, st)
    if image is None:
        raise InvalidInput(_l("Please add an image."), field="image")
    detect_all = read_bool(payload, "detect_all")
    phrases = read_phrases(payload, st.settings, detect_all)
    report = service.ground(st, image, phrases, detect_all, options)
    session["ground_result"] = report["id"]
    session["ground_image"] = prepared.read_image_id(payload)  # kept in the form, to ask again about it
    session["max_tiles"] = options.max_tiles
    return redirect(url_for(".ground_page", _anchor="result"), 303)


@bp.post("/images")
def prepare_image():
    """Read the chosen image ahead of the question (fetch() from the chat and grounding pages).

    The browser's previous preparation is dropped: one image per browser session is read ahead."""
    st = state()
    body = prepared.start(st, read_payload(), "pages.image_status")
    previous, session["image_id"] = session.get("image_id"), body["image_id"]
    if previous != body["image_id"]:
        prepared.cancel(st, previous)
    return jsonify(body), 202, NO_STORE


@bp.get("/images/<image_id>")
def image_status(image_id: str):
    """How far the reading of an image has got (polled by the page next to its preview)."""
    return jsonify(prepared.status(state(), image_id, "pages.image_status")), 200, NO_STORE


@bp.get("/status")
def status_page():
    """Model, backend, device, load progress (refreshing while loading) and recent timings."""
    st = state()
    info = st.info()
    return render_template("status.html", info=info, recent=st.metrics.recent_list(), settings=st.settings,
                           max_new_tokens=st.max_new_tokens(), phase_labels=phase_labels(),
                           progress_amount=progress_amount(info))


@bp.get("/docs")
def docs_page():
    """The API reference, rendered from the OpenAPI document (no CDN)."""
    return render_template("docs.html", spec=openapi_spec(state().settings))


@bp.get("/login")
def login():
    """Where the API key is entered once when API_KEY protects the pages."""
    return render_template("login.html", next=local_target(request.args.get("next", "")) or "", error=None)


@bp.post("/login")
def login_post():
    """Check the key (wrong ones are throttled per address); remember it in the session and go back."""
    target = local_target(request.form.get("next", "")) or url_for(".chat_page")
    settings = state().settings
    if not settings.api_key or key_matches(request.form.get("api_key", "")):
        session["auth"] = page_fingerprint() if settings.api_key else ""
        return redirect(target, 303)
    error = gettext("This is not the right key.")
    return render_template("login.html", next=target, error=error), 401


@bp.get("/lang/<code>")
def set_language(code: str):
    """Remember the chosen language in the session and go back to the page."""
    if code not in LANGUAGES:
        raise NotFound(gettext("Unknown language."))
    session["lang"] = code
    return redirect(local_target(request.args.get("next", "")) or url_for(".chat_page"), 303)


def local_target(target: str) -> str | None:
    """target when it is a path on this site, made safe for a Location header, else None: no other host
    ("//x", "/\\x", "http:"), no control characters (header injection, or a 500); other characters quoted."""
    if not target.startswith("/") or any(c < " " or c in "\\\x7f" for c in target):
        return None
    parts = urlsplit(target)
    if target.startswith("//") or parts.scheme or parts.netloc:
        return None
    return quote(target, safe="/?&=%#:@!$'()*+,;~")


def _conversation() -> Conversation | None:
    """This browser's conversation, if it still exists."""
    return state().sessions.get(session.get("sid"))


def _last_report() -> dict | None:
    """The JSON report of this browser's last grounding, if it has not expired."""
    result = state().results.get(session.get("ground_result"))
    return json.loads(result.report) if result is not None else None


def tile_labels() -> list[str]:
    """The cost of each tile budget 1..12 in words ("up to 3 tiles ~ slower")."""
    def speed(n: int) -> str:
        if n == 1:
            return gettext("fastest, least detail")
        if n == 2:
            return gettext("fast")
        if n <= 4:
            return gettext("medium")
        if n <= 8:
            return gettext("slow")
        return gettext("slowest, most detail")
    return [ngettext("up to %(num)d tile", "up to %(num)d tiles", n) + " ~ " + speed(n) for n in range(1, 13)]


def _tiles_value(form: dict) -> int:
    """The slider position: the value just sent, the last one used, or the engine's default."""
    for value in (form.get("max_tiles"), session.get("max_tiles"), state().info().get("default_max_tiles")):
        try:
            if value not in (None, "") and 1 <= int(value) <= 12:
                return int(value)
        except (TypeError, ValueError):
            continue
    return 2


def phase_labels() -> dict:
    """The start's phases (webapp.state.PHASES) in the reader's language."""
    return {"starting": gettext("Starting"), "downloading": gettext("Downloading the model"),
            "converting": gettext("Converting the checkpoint"),
            "exporting": gettext("Preparing the model for this CPU"), "loading": gettext("Loading the model"),
            "ready": gettext("Ready"), "failed": gettext("The model could not be prepared")}


def progress_amount(info: dict) -> str:
    """'120 of 2,000 MB' or 'step 3 of 7' for the start's progress, '' where unknown."""
    done, total = info.get("done"), info.get("total")
    if done is None or not total:
        return ""
    if info.get("unit") == "bytes":
        return gettext("%(done)s of %(total)s MB", done=done // 2**20, total=total // 2**20)
    return gettext("step %(done)s of %(total)s", done=done + 1, total=total)


def _page_strings() -> dict:
    """Translated strings the page scripts need."""
    return {"too_large": gettext("The upload is too large (the limit is %(mb)d MB).",
                                 mb=state().settings.max_upload_mb),
            "startup_phases": phase_labels(), "startup_mb_of": gettext("%(done)s of %(total)s MB"),
            "startup_mb": gettext("%(done)s MB"), "startup_step_of": gettext("step %(done)s of %(total)s"),
            "startup_ready": gettext("The model is ready."),
            "startup_hint": gettext("Answers will be available when this is done; this notice updates itself."),
            "startup_failed_hint": gettext("Fix the cause shown here (see also the server log), then restart "
                                           "the server."),
            "tiles": tile_labels(), "thinking": gettext("Thinking…"), "you": gettext("You"),
            "assistant": gettext("Assistant"), "network": gettext("The connection was lost. Please try again."),
            "stopped": gettext("Stopped. This answer is not kept in the conversation."),
            "working": gettext("Working…"), "prep_sending": gettext("Sending the image…"),
            "prep_reading": gettext("Reading the image… %(done)d/%(total)d"), "prep_ready": gettext("Image ready"),
            "prep_failed": gettext("The image could not be read ahead; it will be read when you ask."),
            "copy": gettext("Copy"), "copied": gettext("Copied"), "timing_s": gettext("%(s)s s"),
            "timing_rate": gettext("%(rate)s tokens/s"), "tokens": _token_forms(),
            "decimal": get_decimal_symbol(get_locale())}


def _token_forms() -> dict:
    """The "%(num)d tokens" form of each plural category of the language (as Intl.PluralRules names them)."""
    locale = get_locale()
    return {locale.plural_form(n): ngettext("%(num)d token", "%(num)d tokens", n).replace(str(n), "%(num)d", 1)
            for n in (0, 1, 2, 5, 21)}


def _one_decimal(x: float) -> str:
    """x with one decimal as chat.js writes it (toFixed(1)), with the language's decimal sign."""
    return f"{x:.1f}".replace(".", get_decimal_symbol(get_locale()))


def timing_line(meta: dict | None) -> str:
    """'1.2 s · 34 tokens · 28.3 tokens/s' under an answer, in the reader's language (chat.js writes the same)."""
    timings, used = (meta or {}).get("timings") or {}, (meta or {}).get("usage") or {}
    parts = []
    if timings.get("total_s") is not None:
        parts.append(gettext("%(s)s s", s=_one_decimal(timings["total_s"])))
    if used.get("completion_tokens") is not None:
        parts.append(ngettext("%(num)d token", "%(num)d tokens", used["completion_tokens"]))
    if timings.get("decode_tok_s"):
        parts.append(gettext("%(rate)s tokens/s", rate=_one_decimal(timings["decode_tok_s"])))
    return " · ".join(parts)


def note_text(note: str) -> str:
    """One of runtime.grounding's notes on an answer in the reader's language (as it is when not known)."""
    for pattern, text in NOTES:
        match = pattern.fullmatch(note)
        if match:
            return gettext(text, **match.groupdict())
    return note


def _kept_image(image_id) -> dict | None:
    """The image read ahead that the grounding form sends again (its id and a preview), while it exists."""
    st = state()
    if not isinstance(image_id, str) or not valid_id(image_id) or not st.engine.ready:
        return None
    try:
        picture, _ = prepared.read_image_or_prepared(Payload(values={"image_id": [image_id]}), st)
        preview = st.images.run(thumbnail_url, picture.image, PREVIEW_SIDE)
    except Busy:  # no room for the work now: the form still sends the image, shown without its preview
        preview = None
    except RuntimeFailure:  # expired, or replaced by another image of this browser
        return None
    return {"image_id": image_id, "preview": preview}


@bp.app_template_filter("translated")
def translated(text: str) -> str:
    """A string marked with N_ (the OpenAPI document's descriptions) in the reader's language, as plain text."""
    return gettext(text) if text else ""


@bp.app_template_global()
def api_example(path: str, method: str, op: dict) -> str:
    """A curl command for one operation on /docs, built from its fields' examples."""
    url = request.host_url.rstrip("/") + re.sub(r"\{(\w+)\}", lambda m: "$" + m.group(1).upper(), path)
    args = [] if method == "get" or "requestBody" in op else ["-X " + method.upper()]
    if state().settings.api_key:
        args.append('-H "Authorization: Bearer $API_KEY"')
    content = op.get("requestBody", {}).get("content", {})
    if "multipart/form-data" in content:
        for name, prop in content["multipart/form-data"]["schema"]["properties"].items():
            example = "@photo.jpg" if prop.get("format") == "binary" else prop.get("example")  # curl sends the file
            for value in (example if isinstance(example, list) else [example] if example is not None else []):
                args.append("-F " + shlex.quote(f"{name}={value}"))
    elif "example" in content.get("application/json", {}):
        args += ["-H 'Content-Type: application/json'",
                 "-d " + shlex.quote(json.dumps(content["application/json"]["example"], ensure_ascii=False))]
    return "curl " + " \\\n     ".join([*args, url])


def render_chat(conv: Conversation, errors: dict | None = None, form: dict | None = None) -> str:
    """The chat page with the dialog, the form (values kept) and errors next to their fields."""
    form = form or {}
    entries = [{"role": t.role, "text": t.text, "thumb": conv.thumbs.get(i), "kind": conv.kinds.get(i),
                "meta": timing_line(conv.metas.get(i))} for i, t in enumerate(conv.turns)]
    return render_template("chat.html", entries=entries, errors=errors or {}, form=form,
                           tiles=_tiles_value(form), strings=_page_strings(), settings=state().settings,
                           has_image=service.latest_image(conv) is not None, info=state().info(),
                           phase_labels=phase_labels())


def render_ground(report: dict | None, errors: dict | None = None, form: dict | None = None) -> str:
    """The grounding page: the form (values and image kept), errors by their fields, and the last result."""
    form = form or {}
    if report is not None and not form:
        form = {"phrases": ", ".join(report.get("phrases", [])), "detect_all": report.get("detect_all")}
    kept = _kept_image(form.get("image_id") if errors else session.get("ground_image"))
    report_json = json.dumps(report, ensure_ascii=False, indent=2) if report is not None else ""
    notes = [note_text(p) for p in (report or {}).get("problems", [])]
    return render_template("ground.html", report=report, report_json=report_json, notes=notes, kept=kept,
                           errors=errors or {}, form=form, tiles=_tiles_value(form), strings=_page_strings(),
                           settings=state().settings, info=state().info(), phase_labels=phase_labels())


# endpoint -> render(field, message): the form page again, the values kept, the message by its field
FORM_ERRORS = {
    "pages.chat_post": lambda field, message: render_chat(_conversation() or Conversation(id=""),
                                                          {field: message}, g.get("form", {})),
    "pages.ground_post": lambda field, message: render_ground(_last_report(), {field: message}, g.get("form", {})),
    "pages.login_post": lambda field, message: render_template(
        "login.html", next=local_target(request.form.get("next", "")) or "", error=message),
}
