"""Web layer units: bounded stores, settings from the environment, the serving entry point."""
from __future__ import annotations

import dataclasses
import os
import stat

import pytest
from PIL import Image

from runtime.types import Turn
from webapp.settings import WebSettings, load_secret_key
from webapp.store import Conversation, ResultStore, SessionStore, new_id, valid_id


class Clock:
    """A settable monotonic clock."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("value,ok", [
    (new_id(), True), ("A" * 16, True), ("a-b_c" * 4, True), ("short", False), ("../../etc/passwd", False),
    ("x" * 65, False), ("abc%2F" * 4, False), ("", False), (None, False), ("a" * 20 + "\n", False)])
def test_id_validation(value, ok):
    assert valid_id(value) is ok


def test_new_ids_are_unique_and_long():
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) >= 32 and valid_id(i) for i in ids)


def test_results_expire_and_are_bounded():
    clock = Clock()
    store = ResultStore(ttl_s=10, max_items=2, max_bytes=100, clock=clock)
    a = store.add(b"x" * 10, b"{}")
    clock.now = 5
    b = store.add(b"y" * 10, b"{}")
    c = store.add(b"z" * 10, b"{}")
    assert store.get(a.id) is None and store.get(b.id) and store.get(c.id)  # count bound: oldest dropped
    clock.now = 14.9
    assert store.get(b.id) and store.get(c.id)  # reading does not extend a result's life
    clock.now = 15.1
    assert store.get(b.id) is None and store.get(c.id) is None and len(store) == 0


def test_result_store_byte_bound():
    store = ResultStore(ttl_s=100, max_items=10, max_bytes=50)
    first = store.add(b"a" * 30, b"")
    second = store.add(b"b" * 30, b"")
    assert store.get(first.id) is None and store.get(second.id) is not None
    huge = store.add(b"c" * 80, b"")  # a single item larger than the bound is still kept (alone)
    assert store.get(huge.id) is not None and len(store) == 1


def test_sessions_idle_expiry_touch_and_lru():
    clock = Clock()
    store = SessionStore(ttl_s=10, max_items=2, max_bytes=10**9, clock=clock)
    a, b = Conversation(id=new_id()), Conversation(id=new_id())
    store.touch(a)
    store.touch(b)
    clock.now = 8
    assert store.get(a.id) is a  # a used: b is now least recently used
    store.touch(Conversation(id=new_id()))
    assert store.get(b.id) is None and store.get(a.id) is a
    clock.now = 30
    assert store.get(a.id) is None  # idle too long
    assert store.delete(a.id) is False and store.delete("../x") is False


def test_session_bytes_bound_counts_images():
    store = SessionStore(ttl_s=100, max_items=10, max_bytes=100 * 100 * 3 + 10)
    a, b = Conversation(id=new_id()), Conversation(id=new_id())
    a.add_exchange(Turn("user", "q", [Image.new("RGB", (100, 100))]), "answer")
    store.touch(a)
    b.add_exchange(Turn("user", "q", [Image.new("RGB", (100, 100))]), "answer", kind="describe_short")
    store.touch(b)
    assert store.get(a.id) is None and store.get(b.id) is b
    assert b.image_count == 1 and b.question_count == 1 and b.kinds == {0: "describe_short"}


def test_settings_from_env(monkeypatch, tmp_path):
    env = {"PORT": "8000", "HOST": "127.0.0.1", "MAX_UPLOAD_MB": "5", "SECRET_KEY": "k", "SESSION_TTL_S": "60",
           "MAX_SESSIONS": "7", "RESULT_TTL_S": "30", "MAX_RESULTS": "9", "ALLOW_REMOTE_IMAGES": "1",
           "API_KEY": "abc", "MAX_QUESTION_CHARS": "99", "MAX_TURNS": "4", "MAX_IMAGES_PER_SESSION": "3"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = WebSettings.from_env()
    assert (s.port, s.host, s.max_upload_mb, s.secret_key, s.session_ttl_s, s.max_sessions, s.result_ttl_s,
            s.max_results, s.allow_remote_images, s.api_key, s.max_question_chars, s.max_turns,
            s.max_images) == (8000, "127.0.0.1", 5, "k", 60, 7, 30, 9, True, "abc", 99, 4, 3)
    assert s.max_upload_bytes == 5 * 2**20
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1


def test_settings_defaults_and_generated_secret(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key in ("PORT", "HOST", "SECRET_KEY", "MAX_UPLOAD_MB", "API_KEY", "ALLOW_REMOTE_IMAGES"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HF_CACHE_DIR", str(tmp_path / "cache"))
    s = WebSettings.from_env()
    assert (s.port, s.host, s.max_upload_mb, s.allow_remote_images, s.api_key) == (7860, "0.0.0.0", 20, False, "")
    key_file = tmp_path / "cache" / "secret_key"
    assert key_file.read_text() == s.secret_key and len(s.secret_key) >= 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert WebSettings.from_env().secret_key == s.secret_key  # kept across restarts
    assert load_secret_key(str(tmp_path / "cache")) == s.secret_key


@pytest.mark.parametrize("name,value", [("PORT", "0"), ("MAX_UPLOAD_MB", "0"), ("MAX_TURNS", "-1")])
def test_settings_validation(monkeypatch, name, value):
    monkeypatch.setenv("SECRET_KEY", "k")
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError):
        WebSettings.from_env()


def test_main_serves_with_waitress_never_debug(monkeypatch, fake_engine):
    import webapp.__main__ as main

    served = {}
    monkeypatch.setenv("SECRET_KEY", "k")
    monkeypatch.setenv("PORT", "7999")
    monkeypatch.setattr(main, "create_app", lambda settings: __import__("webapp").create_app(settings, fake_engine))
    monkeypatch.setattr(main, "serve", lambda app, **kw: served.update(app=app, **kw))
    handlers = {}
    monkeypatch.setattr(main.signal, "signal", lambda signum, handler: handlers.update({signum: handler}))
    main.main([])
    assert served["port"] == 7999 and served["threads"] == 16 and not served["app"].debug
    with pytest.raises(SystemExit) as stopped:  # docker stop: a clean exit, not a kill after 10 s
        handlers[main.signal.SIGTERM](main.signal.SIGTERM, None)
    assert stopped.value.code == 0


def test_create_app_without_engine_starts_the_real_one(monkeypatch, web_settings, fake_engine):
    import webapp

    monkeypatch.setattr(webapp, "default_engine", lambda: (fake_engine.start(), None))
    app = webapp.create_app(web_settings)
    assert app.extensions["webapp"].engine is fake_engine and fake_engine.started
