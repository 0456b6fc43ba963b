"""What a careless or hostile client sends, by class, generated rather than hand-picked: JSON of any shape and
depth, redirect targets with any characters, bodies over the server's hard limit, API keys on every route
that runs the model (pages included), wrong keys, proxies' headers, and remote image hosts that change
their answer between two lookups. Each gets a clear 4xx in the one error shape, never a 500."""
from __future__ import annotations

import http.client
import io
import json
import re
import socket
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webapp import create_app, inputs

ROUTES_JSON = ("/api/v1/chat", "/api/v1/describe", "/api/v1/ground", "/api/v1/images", "/v1/chat/completions")
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def assert_one_error_shape(resp, low: int = 400, high: int = 499) -> dict:
    """A 4xx (by default) whose body is {"error": {"code", "message", "type"}}."""
    assert low <= resp.status_code <= high, (resp.status_code, resp.get_data(as_text=True)[:300])
    body = resp.get_json()
    assert set(body["error"]) >= {"code", "message", "type"} and body["error"]["message"]
    return body["error"]


def nested_text(depth: int) -> str:
    """JSON text of objects and lists nested `depth` deep, as a hostile client writes it."""
    return '{"question": ' + '{"k": [' * (depth // 2) + '"x"' + "]}" * (depth // 2) + "}"


# ---------------------------------------------------------------------------- JSON of any shape and depth

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=20)


@FUZZ
@given(route=st.sampled_from(ROUTES_JSON), body=json_values)
def test_any_json_body_gets_an_answer_never_a_500(client, route, body):
    resp = client.post(route, data=json.dumps(body), content_type="application/json")
    assert resp.status_code < 500 or resp.status_code == 503, resp.get_data(as_text=True)[:300]
    if resp.status_code >= 400:
        assert_one_error_shape(resp, 400, 503)


@pytest.mark.parametrize("text", [nested_text(1_000), nested_text(100_000), "[" * 200_000 + "]" * 200_000])
@pytest.mark.parametrize("route", ROUTES_JSON)
def test_deeply_nested_json_is_a_400(client, route, text):
    resp = client.post(route, data=text, content_type="application/json")
    assert_one_error_shape(resp, 400, 413)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_any_bytes_as_json_are_a_4xx(client, raw):
    assert_one_error_shape(client.post("/api/v1/chat", data=raw, content_type="application/json"), 400, 415)


# ---------------------------------------------------------------------------- redirects and headers

@FUZZ
@given(target=st.text(max_size=40).map(lambda t: "/" + t) | st.text(max_size=40))
def test_language_switch_redirects_only_to_this_site_whatever_the_target(client, target):
    resp = client.get("/lang/ru", query_string={"next": target})
    assert resp.status_code == 303
    location = resp.headers["Location"]
    assert location.startswith("/") and not location.startswith("//") and "\\" not in location
    assert all(" " < c < "\x7f" for c in location), location


@pytest.mark.parametrize("target", ["/\r\nSet-Cookie: x=1", "/%0d%0aSet-Cookie:x", "/\x00", "//evil.example",
                                    "/\\evil.example", "https://evil.example/", "/ground?x=\u0416"])
def test_redirect_targets_that_would_inject_headers(client, target):
    resp = client.get("/lang/en", query_string={"next": target})
    assert resp.status_code == 303 and "Set-Cookie: x" not in str(resp.headers)
    assert "evil" not in resp.headers["Location"]


@FUZZ
@given(value=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
       name=st.sampled_from(["Accept", "Accept-Language", "Content-Type", "Authorization", "X-API-Key",
                             "X-CSRF-Token", "Cookie", "X-Forwarded-For", "Range"]))
def test_odd_header_values_never_give_a_500(client, name, value):
    for method, path in (("get", "/"), ("get", "/health"), ("post", "/api/v1/chat"), ("get", "/status")):
        resp = getattr(client, method)(path, headers={name: value})
        assert resp.status_code < 500 or resp.status_code == 503, (name, value, resp.status_code)


# ---------------------------------------------------------------------------- bodies over the hard limit

@pytest.fixture
def real_server(app):
    """The app under waitress with the options and error rendering `python -m webapp` uses."""
    import waitress

    from webapp.__main__ import json_errors_from_waitress, waitress_options

    settings = app.extensions["webapp"].settings
    json_errors_from_waitress(settings)
    options = dict(waitress_options(app, settings), host="127.0.0.1", port=0, threads=4)
    srv = waitress.create_server(app, asyncore_loop_timeout=0.1, **options)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    yield int(srv.effective_port), app.config["MAX_CONTENT_LENGTH"]
    srv.task_dispatcher.shutdown(timeout=5)
    srv.close()
    thread.join(5)


def send(port: int, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, str, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), json.loads(resp.read() or b"{}")
    finally:
        conn.close()


@pytest.mark.parametrize("extra", [1, 10 * 2**20])
def test_body_over_the_hard_limit_gets_the_json_error(real_server, extra):
    port, limit = real_server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:  # the server answers from the headers alone, before the body (which it would not read) is sent
        conn.putrequest("POST", "/api/v1/chat")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(limit + extra))
        conn.endheaders()
        resp = conn.getresponse()
        status, ctype, data = resp.status, resp.getheader("Content-Type", ""), json.loads(resp.read())
    finally:
        conn.close()
    assert status == 413 and ctype.startswith("application/json")
    assert data["error"]["code"] == "input_too_large" and "MB" in data["error"]["message"]


def test_chunked_body_over_the_hard_limit_gets_the_json_error(real_server):
    port, limit = real_server
    chunks = (b"y" * 2**16 for _ in range(limit // 2**16 + 4))
    status, ctype, data = send(port, "POST", "/api/v1/chat", chunks, {"Content-Type": "application/octet-stream",
                                                                        "Transfer-Encoding": "chunked"})
    assert status == 413 and ctype.startswith("application/json") and data["error"]["code"] == "input_too_large"


def test_the_pages_refuse_an_oversize_file_before_sending_it(client):
    html = client.get("/").get_data(as_text=True)
    limit = int(re.search(r'data-max-bytes="(\d+)"', html).group(1))
    assert limit == client.application.extensions["webapp"].settings.max_upload_bytes
    strings = json.loads(re.search(r'<script type="application/json" id="i18n">(.*?)</script>', html, re.S).group(1))
    assert "too large" in strings["too_large"]


# ---------------------------------------------------------------------------- API key everywhere the model runs

@pytest.fixture
def keyed(web_settings, fake_engine):
    return create_app(replace(web_settings, api_key="s3cret"), engine=fake_engine)


def page_csrf(client, path: str = "/login") -> str:
    html = client.get(path).get_data(as_text=True)
    return re.search(r'<meta name="csrf-token" content="([^"]+)">', html).group(1)


@pytest.mark.parametrize("method,path", [("get", "/"), ("get", "/ground"), ("get", "/status"), ("get", "/docs"),
                                         ("post", "/chat"), ("post", "/ground"), ("post", "/images"),
                                         ("post", "/chat/new")])
def test_pages_need_the_key_when_it_is_set(keyed, method, path):
    client = keyed.test_client()
    token = page_csrf(client)
    resp = getattr(client, method)(path, data={"csrf_token": token, "question": "q", "phrases": "cat"})
    if method == "get":
        assert resp.status_code == 303 and resp.headers["Location"].startswith("/login?next=")
    else:
        assert resp.status_code == 401


def test_the_key_entered_once_opens_the_pages_and_a_wrong_one_does_not(keyed, make_png):
    client = keyed.test_client()
    token = page_csrf(client)
    wrong = client.post("/login", data={"csrf_token": token, "api_key": "nope", "next": "/ground"})
    assert wrong.status_code == 401 and "not the right key" in wrong.get_data(as_text=True)
    assert client.get("/ground").status_code == 303
    right = client.post("/login", data={"csrf_token": token, "api_key": "s3cret", "next": "/ground"})
    assert right.status_code == 303 and right.headers["Location"] == "/ground"
    assert client.get("/ground").status_code == 200
    resp = client.post("/chat", data={"csrf_token": token, "question": "q", "image": (io.BytesIO(make_png()), "a.png")},
                       headers={"Accept": "text/html"})
    assert resp.status_code == 303 and resp.headers["Location"] == "/"  # answered, back to the dialog
    assert "q" in client.get("/").get_data(as_text=True)


def test_public_pages_stay_open_when_the_operator_says_so(web_settings, fake_engine):
    app = create_app(replace(web_settings, api_key="s3cret", public_pages=True), engine=fake_engine)
    client = app.test_client()
    assert client.get("/").status_code == 200
    assert client.get("/v1/models").status_code == 401  # the API still needs the key


def test_wrong_keys_are_throttled_per_address_then_even_the_right_key_waits(keyed):
    client = keyed.test_client()
    for _ in range(10):
        assert client.get("/v1/models", headers={"X-API-Key": "guess"}).status_code == 401
    blocked = client.get("/v1/models", headers={"X-API-Key": "s3cret"})
    error = assert_one_error_shape(blocked, 429, 429)
    assert error["code"] == "rate_limited" and int(blocked.headers["Retry-After"]) >= 1
    other = client.get("/v1/models", headers={"X-API-Key": "s3cret"}, environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert other.status_code == 200  # another address is not punished


def test_throttle_memory_is_bounded():
    from webapp.security import FailureThrottle

    throttle = FailureThrottle(allowed=2, clients=100)
    for i in range(1_000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle._failures) == 100


# ---------------------------------------------------------------------------- behind a TLS proxy

def test_secure_cookie_and_real_address_only_behind_a_trusted_proxy(web_settings, fake_engine):
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
    plain = create_app(web_settings, engine=fake_engine).test_client()
    cookie = plain.get("/", headers=forwarded).headers.get("Set-Cookie", "")
    assert cookie and "Secure" not in cookie  # an untrusted client cannot claim HTTPS
    proxied_app = create_app(replace(web_settings, trusted_proxies=1), engine=fake_engine)
    seen = {}

    @proxied_app.get("/_whoami")
    def whoami():
        from flask import request

        from webapp.security import client_key
        seen.update(addr=request.remote_addr, key=client_key())
        return "ok"

    proxied = proxied_app.test_client()
    cookie = proxied.get("/", headers=forwarded).headers.get("Set-Cookie", "")
    assert "Secure" in cookie and "HttpOnly" in cookie
    proxied.get("/_whoami", headers=forwarded)
    assert seen == {"addr": "203.0.113.7", "key": "addr:203.0.113.7"}


# ---------------------------------------------------------------------------- remote images: one lookup

class PngHandler(BaseHTTPRequestHandler):
    png = b""
    hosts: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        PngHandler.hosts.append(self.headers.get("Host"))
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.png)))
        self.end_headers()
        self.wfile.write(self.png)

    def log_message(self, *args):
        pass


def test_remote_fetch_connects_to_the_address_that_was_checked(web_settings, monkeypatch):
    lookups, connects = [], []
    answers = iter(["93.184.216.34", "127.0.0.1"])  # a rebinding name: public first, loopback second

    def getaddrinfo(host, port, *args, **kwargs):
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    def create_connection(address, *args, **kwargs):
        connects.append(address[0])
        raise OSError("no traffic leaves this machine in tests")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    with pytest.raises(inputs.RemoteImageRefused):
        inputs.fetch_remote("http://rebind.example/cat.png", web_settings)
    assert lookups == ["rebind.example"] and connects == ["93.184.216.34"]


def test_a_name_with_any_private_address_is_refused(web_settings, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port))])
    with pytest.raises(inputs.RemoteImageRefused, match="private"):
        inputs.fetch_remote("http://mixed.example/cat.png", web_settings)


def test_remote_fetch_end_to_end_over_loopback(web_settings, monkeypatch, make_png):
    PngHandler.png, PngHandler.hosts = make_png(), []
    server = ThreadingHTTPServer(("127.0.0.1", 0), PngHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    monkeypatch.setattr(inputs, "address_allowed", lambda address: address == "127.0.0.1")  # loopback stands in
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, p, *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", p))])
    try:
        data = inputs.fetch_remote(f"http://images.example:{port}/cat.png?size=1", web_settings)
    finally:
        server.shutdown()
    assert data == PngHandler.png and PngHandler.hosts == [f"images.example:{port}"]
