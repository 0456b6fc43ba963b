"""Web security not covered elsewhere: the optional rate limit, debug never on, cookie flags, no HTML sinks in
the page scripts, and ids that cannot walk the file system. (Escaping, CSP, CSRF, sessions and the API key
are in test_webapp_pages.py and test_webapp_api.py.)"""
from __future__ import annotations

import importlib.util
import io
import re
from dataclasses import replace
from pathlib import Path

import pytest

from webapp import create_app

WEBAPP = Path(__file__).resolve().parents[1] / "webapp"
needs_limiter = pytest.mark.skipif(importlib.util.find_spec("flask_limiter") is None,
                                   reason="RATE_LIMIT needs flask-limiter (pip install flask-limiter)")


def _chat(client, make_png, addr: str = "10.0.0.1"):
    return client.post("/api/v1/chat", data={"image": (io.BytesIO(make_png()), "a.png"), "question": "q"},
                       environ_base={"REMOTE_ADDR": addr})


def test_rate_limit_is_off_by_default(client, make_png):
    for _ in range(30):
        resp = _chat(client, make_png)
        assert resp.status_code == 200 and "X-RateLimit-Limit" not in resp.headers


@needs_limiter
def test_rate_limit_answers_429_with_retry_after_per_client(web_settings, fake_engine, make_png):
    client = create_app(replace(web_settings, rate_limit="3/minute"), engine=fake_engine).test_client()
    assert [_chat(client, make_png).status_code for _ in range(3)] == [200, 200, 200]
    resp = _chat(client, make_png)
    assert resp.status_code == 429
    err = resp.get_json()["error"]
    assert err["code"] == "rate_limited" and err["type"] == "rate_limit_error" and "wait" in err["message"]
    assert 0 < int(resp.headers["Retry-After"]) <= 60
    assert resp.headers["Content-Security-Policy"] and resp.headers["X-Content-Type-Options"] == "nosniff"
    assert _chat(client, make_png, addr="10.0.0.2").status_code == 200  # another client has its own budget
    for path in ("/health", "/metrics", "/v1/models", "/status", "/openapi.json", "/"):  # reads are never limited
        assert client.get(path, environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code == 200, path
    ru = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
                     headers={"Accept-Language": "ru"}, environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert ru.status_code == 429 and "запросов" in ru.get_json()["error"]["message"]


@pytest.mark.parametrize("value", ["60/minute", "10 per second", "10/second; 200/hour", "100/2 minutes"])
def test_rate_limit_setting_accepts_limiter_notation(monkeypatch, value):
    from webapp.settings import WebSettings

    monkeypatch.setenv("SECRET_KEY", "k")
    monkeypatch.setenv("RATE_LIMIT", value)
    assert WebSettings.from_env().rate_limit == value


@pytest.mark.parametrize("value", ["60", "lots", "60/fortnight", "-1/minute"])
def test_rate_limit_setting_refuses_nonsense(monkeypatch, value):
    from webapp.settings import WebSettings

    monkeypatch.setenv("SECRET_KEY", "k")
    monkeypatch.setenv("RATE_LIMIT", value)
    with pytest.raises(ValueError, match="RATE_LIMIT"):
        WebSettings.from_env()


def test_debug_is_never_on_even_with_flask_debug(monkeypatch, web_settings, fake_engine, make_png):
    monkeypatch.setenv("FLASK_DEBUG", "1")
    app = create_app(web_settings, engine=fake_engine)
    assert not app.debug and not app.config["DEBUG"]
    fake_engine.crash = RuntimeError("secret internals")
    resp = _chat(app.test_client(), make_png)
    assert resp.status_code == 500 and "secret internals" not in resp.get_data(as_text=True)
    assert "Werkzeug Debugger" not in resp.get_data(as_text=True)


def test_session_cookie_is_http_only_and_same_site(client):
    client.get("/")  # the CSRF token goes into the session
    cookie = client.get_cookie("session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"


@pytest.mark.parametrize("path", ["/api/v1/sessions/..%2F..%2Fsecret_key", "/api/v1/sessions/%2e%2e",
                                  "/api/v1/sessions/" + "A" * 65, "/api/v1/sessions/a%00b" + "c" * 20])
def test_session_ids_cannot_walk_the_file_system(client, path):
    resp = client.delete(path)
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"


HTML_SINKS = re.compile(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write|\beval\(|new Function")


def test_page_scripts_put_text_in_the_page_only_as_text():
    """Model output and user text reach the page through textContent / value, never as HTML."""
    for script in (WEBAPP / "static").glob("*.js"):
        assert not HTML_SINKS.search(script.read_text()), script.name


def test_templates_never_turn_escaping_off():
    for template in (WEBAPP / "templates").glob("*.html"):
        text = template.read_text()
        assert "|safe" not in text.replace(" ", "") and "autoescape false" not in text, template.name
