"""Shared fixtures."""
from __future__ import annotations

import io
import json
import threading

import pytest
from fake_engine import FakeEngine  # a helper beside this file (tests/ is not a package)
from PIL import Image

# ---------------------------------------------------------------------------- webapp

@pytest.fixture
def fake_engine() -> FakeEngine:
    """A ready fake engine; tests flip .state / .busy / .delay_s / .crash to exercise other paths."""
    return FakeEngine()


@pytest.fixture
def web_settings():
    """Web settings for tests: fixed secret key, small limits so limit tests stay fast."""
    from webapp.settings import WebSettings

    return WebSettings(secret_key="test-secret-key", max_upload_mb=1, max_pixels=4_000_000,
                       max_question_chars=200, max_turns=3, max_images=2, max_phrases=3, max_phrase_chars=40)


@pytest.fixture
def app(web_settings, fake_engine):
    """The Flask app over the fake engine."""
    from webapp import create_app

    app = create_app(web_settings, engine=fake_engine)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    """A test client (one browser: its own cookie jar)."""
    return app.test_client()


@pytest.fixture
def make_png():
    """make_png(width=64, height=48, colour=(200, 30, 30)) -> PNG bytes."""
    def make(width: int = 64, height: int = 48, colour=(200, 30, 30)) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (width, height), colour).save(buf, "PNG")
        return buf.getvalue()
    return make


@pytest.fixture
def read_sse():
    """read_sse(text) -> the `data:` payloads of a text/event-stream body, JSON-decoded except [DONE]."""
    def read(text: str) -> list:
        events = []
        for block in text.split("\n\n"):
            data = "\n".join(line[6:] for line in block.split("\n") if line.startswith("data: "))
            if data:
                events.append(data if data == "[DONE]" else json.loads(data))
        return events
    return read


# ---------------------------------------------------------------------------- model (tiny random InternVL)
from model_fixtures import model_cache, ov_engine, reference, tiny_native_dir  # noqa: E402,F401


@pytest.fixture
def live_server(app):
    """(host, port) of a real waitress server running the test app in a thread."""
    waitress = pytest.importorskip("waitress")
    srv = waitress.create_server(app, host="127.0.0.1", port=0, threads=4, channel_request_lookahead=1,
                                 asyncore_loop_timeout=0.1)  # quick shutdown
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    yield "127.0.0.1", int(srv.effective_port)
    srv.task_dispatcher.shutdown(timeout=5)  # let running requests end before the sockets go
    srv.close()
    thread.join(5)
