"""Faults: damaged exports, unwritable caches, bad settings, a bug inside one request, a client that hangs up.

The server-level cases start the real `python -m webapp` over a copy of the tiny export (tests/load/server.py).
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from load.server import ROOT, ServerProcess
from model_fixtures import TINY

from runtime.errors import ModelNotReady
from runtime.types import Turn

EXPORT = Path("exported") / "builtin--tiny-random" / "int8"


@pytest.fixture
def cache_copy(model_cache, tmp_path):
    """A private cache holding a copy of the tiny int8 export (damage it freely); returns (cache, export folder)."""
    cache = tmp_path / "cache"
    shutil.copytree(model_cache / EXPORT, cache / EXPORT)
    return cache, cache / EXPORT


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _other_precision(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["inputs"]["precision"] = "int4"
    (folder / "manifest.json").write_text(json.dumps(manifest))


DAMAGE = {
    # id: (what to do to the export folder, words the reason must contain)
    "truncated-bin": (lambda f: _truncate(f / "openvino_language_model.bin"), ["openvino_language_model.bin",
                                                                              "truncated", "make export"]),
    "truncated-xml": (lambda f: _truncate(f / "openvino_vision_embeddings_model.xml"), ["vision", "truncated"]),
    "deleted-bin": (lambda f: (f / "openvino_text_embeddings_model.bin").unlink(), ["text_embeddings", "missing"]),
    "deleted-tokenizer": (lambda f: (f / "tokenizer.json").unlink(), ["tokenizer.json", "missing"]),
    "no-manifest": (lambda f: (f / "manifest.json").unlink(), ["manifest.json", "did not finish"]),
    "other-precision": (_other_precision, ["int4", "not of"]),
    "no-export": (lambda f: shutil.rmtree(f), ["no export", "make export"]),
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_damaged_export_is_reported_not_raised(cache_copy, damage):
    from runtime.engine import create_engine
    from runtime.settings import RuntimeSettings

    cache, folder = cache_copy
    harm, words = DAMAGE[damage]
    harm(folder)
    engine = create_engine(RuntimeSettings(model_name=TINY, cache_dir=str(cache), precision="int8", device="cpu",
                                           ov_cache_dir="off"))
    assert not engine.wait_ready(60)
    info = engine.info()
    assert info["state"] == "error"
    for word in words:
        assert word in info["error"], info["error"]
    with pytest.raises(ModelNotReady):
        engine.chat([Turn("user", "hi")])


def test_server_rebuilds_a_truncated_export_at_its_first_start(cache_copy, tmp_path, make_png):
    """A damaged export (a truncated weight file) is found against its manifest when the server starts and
    exported again while the server already answers (503 with the phase), then served; no crash, no loop."""
    cache, folder = cache_copy
    _truncate(folder / "openvino_language_model.bin")
    with ServerProcess(cache, tmp_path / "server.log") as server:
        first = _first_health(server.url)
        assert first.status_code == 503 and first.json()["status"] == "loading" and first.headers["Retry-After"]
        chat = requests.post(f"{server.url}/api/v1/chat", files={"image": ("a.png", make_png())},
                             data={"question": "hi"}, timeout=10)
        assert chat.status_code in (200, 503)  # still exporting, or already done on a fast machine
        if chat.status_code == 503:
            assert chat.json()["error"]["code"] == "model_not_ready" and chat.headers["Retry-After"]
        server.wait_health(timeout=300)
        resp = requests.post(f"{server.url}/api/v1/chat", files={"image": ("a.png", make_png())},
                             data={"question": "hi", "max_new_tokens": 4}, timeout=60)
        assert resp.status_code == 200, resp.text
        log = server.log()
    assert "exporting" in log and "Traceback" not in log


def _first_health(url: str, timeout: float = 60.0) -> requests.Response:
    """The first answer of /health once the server listens."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(f"{url}/health", timeout=5)
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_server_starts_with_unwritable_secret_and_compiled_cache(cache_copy, tmp_path, make_png):
    """The session secret cannot be stored and the compiled-model cache cannot be created: the server still
    serves, and says so in its log. (Made unwritable in a way that also holds for root: paths under a file.)"""
    cache, _ = cache_copy
    (cache / "secret_key").mkdir()  # neither readable as a key nor replaceable
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with ServerProcess(cache, tmp_path / "server.log", SECRET_KEY="", OV_CACHE_DIR=str(blocker / "ov")) as server:
        server.wait_health(timeout=60)
        resp = requests.post(f"{server.url}/api/v1/chat", files={"image": ("a.png", make_png())},
                             data={"question": "hi", "max_new_tokens": 4}, timeout=30)
        assert resp.status_code == 200, resp.text
        log = server.log()
    assert "cannot keep the session secret" in log and "set SECRET_KEY" in log
    assert "compiled-model cache" in log and "loading without it" in log


def test_secret_key_falls_back_when_the_cache_cannot_be_written(tmp_path, monkeypatch, caplog):
    from webapp import settings as web_settings

    def refuse(*_, **__):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(web_settings.os, "open", refuse)
    with caplog.at_level(logging.WARNING):
        key = web_settings.load_secret_key(str(tmp_path))
    assert len(key) >= 32 and "Permission denied" in caplog.text
    assert web_settings.load_secret_key(str(tmp_path)) != key  # temporary: a new one each start


def _webapp(env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    full = {**os.environ, "SECRET_KEY": "k", "HOST": "127.0.0.1", "MODEL_NAME": TINY, **env}
    return subprocess.run([sys.executable, "-m", "webapp"], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("name,value,words", [
    ("PORT", "abc", "PORT must be a whole number"),
    ("MAX_TILES", "many", "MAX_TILES must be a whole number"),
    ("RATE_LIMIT", "lots", "RATE_LIMIT must look like"),
    ("MAX_UPLOAD_MB", "0", "max_upload_mb must be at least 1"),
])
def test_bad_setting_stops_with_one_line_not_a_traceback(tmp_path, name, value, words):
    proc = _webapp({name: value, "HF_CACHE_DIR": str(tmp_path), "PORT": "7861" if name != "PORT" else value})
    assert proc.returncode == 2
    assert words in proc.stderr and "invalid setting" in proc.stderr and "Traceback" not in proc.stderr


def test_port_in_use_stops_with_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = _webapp({"PORT": str(taken.getsockname()[1]), "HF_CACHE_DIR": str(tmp_path)})
    assert proc.returncode == 1 and "cannot listen" in proc.stderr and "Traceback" not in proc.stderr


def test_too_few_web_threads_for_the_queue_is_warned(monkeypatch, fake_engine, caplog):
    """Every thread could be held by a queued generation: /health would wait behind them. Say so at start."""
    import webapp
    import webapp.__main__ as main

    monkeypatch.setenv("SECRET_KEY", "k")
    monkeypatch.setenv("WEB_THREADS", "4")  # the fake engine reports MAX_QUEUE=8
    monkeypatch.setattr(main, "create_app", lambda settings: webapp.create_app(settings, fake_engine))
    monkeypatch.setattr(main, "serve", lambda app, **kw: None)
    monkeypatch.setattr(main.signal, "signal", lambda *args: None)  # keep pytest's own SIGTERM handling
    with caplog.at_level(logging.WARNING):
        assert main.main([]) == 0
    assert "WEB_THREADS=4 is not above MAX_QUEUE + CONCURRENCY = 9" in caplog.text


# ---------------------------------------------------------------------------- a bug inside one request

def _post(server, path: str, **kw) -> requests.Response:
    return requests.post(f"http://{server[0]}:{server[1]}{path}", timeout=10, **kw)


def test_a_bug_in_one_request_is_a_500_with_an_id_and_the_service_goes_on(live_server, fake_engine, make_png,
                                                                          caplog):
    fake_engine.crash = RuntimeError("boom inside the engine")
    with caplog.at_level(logging.ERROR):
        resp = _post(live_server, "/api/v1/chat", files={"image": ("a.png", make_png())}, data={"question": "q"})
    err = resp.json()["error"]
    assert resp.status_code == 500 and err["code"] == "internal_error"
    assert err["error_id"] in err["message"] and err["error_id"] in caplog.text and "boom" in caplog.text
    assert "boom" not in resp.text and "Traceback" not in resp.text
    again = _post(live_server, "/api/v1/chat", files={"image": ("a.png", make_png())}, data={"question": "q"})
    assert again.status_code == 200 and again.json()["answer"]


def test_a_bug_mid_stream_ends_the_stream_with_an_error_event(live_server, fake_engine, make_png, read_sse,
                                                              caplog, monkeypatch):
    def chat(turns, options=None, on_text=None, cancel=None):
        on_text("Half an ")
        on_text("answer")
        raise KeyError("broken mid-answer")

    monkeypatch.setattr(fake_engine, "chat", chat)
    with caplog.at_level(logging.ERROR):
        resp = _post(live_server, "/api/v1/chat", files={"image": ("a.png", make_png())},
                     data={"question": "q", "stream": "true"})
        events = read_sse(resp.text)
    assert resp.status_code == 200  # the headers went out before the bug
    assert events[:2] == [{"delta": "Half an "}, {"delta": "answer"}] and events[-1] == "[DONE]"
    err = events[-2]["error"]
    assert err["code"] == "internal_error" and err["error_id"] in caplog.text and "broken" not in resp.text
    monkeypatch.undo()
    assert _post(live_server, "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
                 ).status_code == 200


# ---------------------------------------------------------------------------- a client that hangs up

@pytest.fixture(scope="module")
def long_server(model_cache, tmp_path_factory):
    """The real server over the tiny model, allowed 4096-token answers (about 3 s: long enough to hang up)."""
    log = tmp_path_factory.mktemp("long-server") / "server.log"
    with ServerProcess(model_cache, log, MAX_NEW_TOKENS=4096, MAX_NEW_TOKENS_LIMIT=4096) as server:
        server.wait_health()
        yield server


REQUESTS = {
    "api": ("/api/v1/chat", lambda png: {"question": "Tell me everything.", "max_new_tokens": 4096, "stream": True,
                                         "image": "data:image/png;base64," + __import__("base64").b64encode(png)
                                         .decode()}),
    "openai": ("/v1/chat/completions", lambda png: {"stream": True, "max_tokens": 4096, "messages": [
        {"role": "user", "content": "Tell me everything."}]}),
}


@pytest.mark.parametrize("kind", list(REQUESTS))
def test_hanging_up_mid_stream_stops_the_real_engine(long_server, make_png, kind):
    path, body = REQUESTS[kind]
    conn = http.client.HTTPConnection("127.0.0.1", long_server.port, timeout=30)
    conn.request("POST", path, body=json.dumps(body(make_png())), headers={"Content-Type": "application/json"})
    sock = conn.sock
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: {")
    sock.shutdown(socket.SHUT_RDWR)  # the client goes away after the first event
    resp.close()
    sock.close()
    hung_up = time.perf_counter()
    # the engine is free at once: the next request does not queue behind the abandoned 4096-token answer
    nxt = requests.post(f"{long_server.url}/v1/chat/completions", timeout=30, json={
        "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert nxt.status_code == 200
    assert nxt.json()["timings"]["queue_s"] < 0.5 and time.perf_counter() - hung_up < 2.0
    assert long_server.alive()
