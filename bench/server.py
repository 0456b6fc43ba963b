"""Throughput through the real HTTP server: `python -m webapp` in its own process, one client, then four.

Each request is POST /api/v1/chat (multipart: image, question, max_new_tokens, max_tiles=1) on an image no
request sent before (a one-pixel variant), so the server's caches never shortcut the work. Throughput is
generated tokens (as the server counts them) over wall time. Returns n/a with the reason when the web app
cannot be started or does not answer.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from PIL import Image

from bench.workloads import NEW_TOKENS, QUESTION, variant

CLIENTS = 4
REQUESTS_PER_CLIENT = 2
SINGLE_REQUESTS = 3
HEALTH_TIMEOUT_S = 900


class ServerUnavailable(Exception):
    """The web app could not be started or did not become healthy."""


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


class _RssWatcher(threading.Thread):
    """Polls the server process's resident set size; keeps the peak."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        import psutil

        try:
            proc = psutil.Process(self.pid)
            while not self.stop.wait(0.2):
                self.peak = max(self.peak, proc.memory_info().rss)
        except psutil.Error:
            pass


def _ask(session, url: str, img: Image.Image) -> dict:
    """One chat request; returns the JSON reply (raises on an HTTP error)."""
    files = {"image": ("image.png", _png(img), "image/png")}
    data = {"question": QUESTION, "max_new_tokens": str(NEW_TOKENS), "max_tiles": "1"}
    r = session.post(f"{url}/api/v1/chat", files=files, data=data, timeout=900)
    if r.status_code != 200:
        raise ServerUnavailable(f"POST /api/v1/chat answered {r.status_code}: {r.text[:200]}")
    return r.json()


def _wait_healthy(session, url: str, proc: subprocess.Popen) -> float:
    """Poll /health until 200; returns the seconds it took."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < HEALTH_TIMEOUT_S:
        if proc.poll() is not None:
            raise ServerUnavailable(f"python -m webapp exited with status {proc.returncode}")
        try:
            r = session.get(f"{url}/health", timeout=5)
            if r.status_code == 200:
                return time.perf_counter() - t0
            if r.json().get("status") == "error":
                raise ServerUnavailable(f"/health reports an error: {r.json().get('error')}")
        except (OSError, ValueError):
            pass
        except Exception as exc:  # requests' ConnectionError while the server starts
            if "Connection" not in type(exc).__name__:
                raise
        time.sleep(0.5)
    raise ServerUnavailable(f"/health did not answer 200 within {HEALTH_TIMEOUT_S} s")


def _throughput(session_factory, url: str, images: list[Image.Image], clients: int, per_client: int,
                start: int) -> tuple[float, int]:
    """Run `clients` threads each sending `per_client` requests; returns (tokens/s, tokens)."""
    tokens, errors = [0] * clients, []

    def client(i: int) -> None:
        s = session_factory()
        try:
            for j in range(per_client):
                img = variant(images[i % len(images)], start + i * 100 + j)
                tokens[i] += int(_ask(s, url, img)["usage"]["completion_tokens"])
        except Exception as exc:  # reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise ServerUnavailable(f"{type(errors[0]).__name__}: {errors[0]}")
    return sum(tokens) / wall, sum(tokens)


def run(env: dict, image_paths: list[Path], port: int, log_path: Path, progress, preexec=None) -> dict:
    """Start the web app with env, measure one client and CLIENTS clients, stop it; figures or n/a."""
    try:
        import requests
    except ImportError:
        return {"concurrent_tok_s": None, "server_error": "requests is not installed"}
    images = [Image.open(p).convert("RGB") for p in image_paths]
    url = f"http://127.0.0.1:{port}"
    full_env = dict(os.environ, **env, PORT=str(port), HOST="127.0.0.1")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "webapp"], env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=preexec)
    watcher = _RssWatcher(proc.pid)
    watcher.start()
    try:
        s = requests.Session()
        ready = _wait_healthy(s, url, proc)
        progress(f"server healthy after {ready:.1f} s; warm-up request")
        _ask(s, url, variant(images[0], 50_000))
        single, n1 = _throughput(requests.Session, url, images, 1, SINGLE_REQUESTS, 60_000)
        progress(f"1 client: {single:.1f} tok/s ({n1} tokens)")
        conc, n4 = _throughput(requests.Session, url, images, CLIENTS, REQUESTS_PER_CLIENT, 70_000)
        progress(f"{CLIENTS} clients: {conc:.1f} tok/s ({n4} tokens), {conc / single:.2f}x one client")
        return {"concurrent_tok_s": conc, "single_client_tok_s": single, "concurrency_gain": conc / single,
                "server_ready_s": ready, "server_peak_rss_gb": watcher.peak / 1e9,
                "server_tokens": {"single": n1, "single_max": SINGLE_REQUESTS * NEW_TOKENS, "concurrent": n4,
                                  "concurrent_max": CLIENTS * REQUESTS_PER_CLIENT * NEW_TOKENS}}
    except ServerUnavailable as exc:
        progress(f"HTTP workload n/a: {exc} (log: {log_path})")
        return {"concurrent_tok_s": None, "server_error": str(exc)}
    finally:
        watcher.stop.set()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
