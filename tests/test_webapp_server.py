"""The app behind a real waitress server: streaming reaches the client as it is made, and a client that
hangs up cancels its generation."""
from __future__ import annotations

import http.client
import json
import socket
import time
import uuid


def multipart(fields: dict, png: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with the fields and an `image` file."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
                 f"Content-Type: image/png\r\n\r\n".encode() + png + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_health_over_http(live_server):
    conn = http.client.HTTPConnection(*live_server, timeout=5)
    conn.request("GET", "/health")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"
    assert resp.getheader("X-Content-Type-Options") == "nosniff"


def test_stream_arrives_incrementally_and_hangup_cancels(live_server, fake_engine, make_png):
    fake_engine.delay_s = 0.05
    body, ctype = multipart({"question": " ".join(["word"] * 39), "stream": "true"}, make_png())
    conn = http.client.HTTPConnection(*live_server, timeout=10)
    started = time.perf_counter()
    conn.request("POST", "/api/v1/chat", body=body, headers={"Content-Type": ctype})
    sock = conn.sock
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
    first = resp.readline()
    assert first.startswith(b"data: {\"delta\"")
    assert time.perf_counter() - started < 1.5  # the whole answer would take about 2.5 s
    sock.shutdown(socket.SHUT_RDWR)  # the client goes away mid-answer
    resp.close()
    sock.close()
    assert fake_engine.cancelled.wait(5)
