"""The first start: the server answers at once with the phase and progress of the export it runs, then
serves; a failed export is shown with its reason; SIGTERM ends it cleanly; `.env` reaches every entry point."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from webapp.firststart import FirstStart
from webapp.state import PHASES

ROOT = Path(__file__).resolve().parents[1]
TINY = "builtin:tiny-random"


class StubEngine:
    """Counts start() calls; reports "loading" like an engine that has not started."""

    def __init__(self):
        self.started = 0

    def start(self):
        self.started += 1
        return self

    def info(self):
        return {"state": "loading", "progress": "waiting to start"}


def fake_export(script: str) -> tuple[str, ...]:
    """A command that stands in for `python -m export --progress-json`."""
    return (sys.executable, "-c", script)


def wait_until(predicate, timeout: float = 10.0):
    """Poll predicate until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


# ---------------------------------------------------------------------------- FirstStart on stand-in exports

PROGRESS_SCRIPT = """
import json, sys, time
def say(**e):
    print(json.dumps(e), flush=True)
say(phase="downloading", message="model.safetensors", done=0, total=2000, unit="bytes")
time.sleep(0.3)
say(phase="downloading", message="model.safetensors", done=2000, total=2000, unit="bytes")
print("not a progress line", flush=True)
say(phase="exporting", message="language model", done=2, total=5, unit="parts")
time.sleep(0.3)
say(phase="done", message="/cache/exported/x")
"""


def test_progress_lines_become_phases_then_the_engine_starts(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    engine = StubEngine()
    first = FirstStart(engine, fake_export(PROGRESS_SCRIPT))
    assert first.info()["phase"] == "starting" and first.info()["state"] == "loading"
    first.start()
    seen = []
    wait_until(lambda: seen.append(first.info()) or first.info() is None)
    phases = [i["phase"] for i in seen if i]
    assert set(phases) <= set(PHASES) and "downloading" in phases and "exporting" in phases
    exporting = next(i for i in seen if i and i["phase"] == "exporting")
    assert (exporting["done"], exporting["total"], exporting["unit"]) == (2, 5, "parts")
    assert engine.started == 1
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # everything is cached: the server never reaches for the Hub


def test_a_failed_export_is_reported_with_its_reason_and_the_engine_never_starts():
    script = ("import json, sys; print(json.dumps({'phase': 'failed', 'message': 'model x was not found on the "
              "Hugging Face Hub'}), flush=True); sys.exit(1)")
    engine = StubEngine()
    first = FirstStart(engine, fake_export(script)).start()
    info = wait_until(lambda: first.info() if first.info()["state"] == "error" else None)
    assert info["phase"] == "failed" and "was not found" in info["error"]
    assert engine.started == 0


def test_a_crash_without_a_reason_is_explained_by_the_last_log_line():
    script = "import sys; print('Traceback ...', file=sys.stderr); print('MemoryError: out of memory', file=sys.stderr); sys.exit(137)"
    first = FirstStart(StubEngine(), fake_export(script)).start()
    info = wait_until(lambda: first.info() if first.info()["state"] == "error" else None)
    assert "MemoryError: out of memory" in info["error"]


def test_stop_ends_a_running_export_and_nothing_starts_after_it():
    script = "import time, json; print(json.dumps({'phase': 'exporting', 'message': 'x'}), flush=True); time.sleep(60)"
    engine = StubEngine()
    first = FirstStart(engine, fake_export(script)).start()
    wait_until(lambda: first.info()["phase"] == "exporting")
    t0 = time.monotonic()
    first.stop()
    assert time.monotonic() - t0 < 5
    first._thread.join(5)
    assert not first._thread.is_alive() and engine.started == 0


def test_health_reports_the_phase_and_progress_of_the_first_start(web_settings):
    from webapp import create_app

    engine = StubEngine()
    app = create_app(web_settings, engine)
    app.extensions["webapp"].startup = FirstStart(engine, fake_export(PROGRESS_SCRIPT)).start()
    client = app.test_client()
    bodies = []
    wait_until(lambda: bodies.append(client.get("/health").get_json()) or bodies[-1].get("phase") == "exporting")
    first = bodies[0]
    assert first["status"] == "loading" and first["phase"] in PHASES
    exporting = bodies[-1]
    assert (exporting["done"], exporting["total"], exporting["unit"]) == (2, 5, "parts")
    assert "language model" in exporting["progress"]
    html = client.get("/status").get_data(as_text=True)
    assert "Preparing the model for this CPU" in html and "step 3 of 5" in html


# ---------------------------------------------------------------------------- the real server process

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_health(port: int) -> tuple[int, dict] | None:
    """(status code, JSON body) of /health, or None while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return None


def start_server(cwd: Path) -> subprocess.Popen:
    """`python -m webapp` in cwd, as a user starts it (settings from cwd/.env only)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_NAME", "PORT", "HF_CACHE_DIR", "EXPORT_PRECISION",
                                                            "HF_HUB_OFFLINE", "ENV_FILE")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen([sys.executable, "-m", "webapp"], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def stop_server(proc: subprocess.Popen) -> tuple[int, float]:
    """SIGTERM, as `docker stop` sends it; returns (exit code, seconds to exit)."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    return code, time.monotonic() - t0


def test_first_start_serves_progress_at_once_then_the_model_and_stops_cleanly(tmp_path):
    port, cache = free_port(), tmp_path / "cache"
    (tmp_path / ".env").write_text(f"MODEL_NAME={TINY}\nPORT={port}\nHF_CACHE_DIR={cache}\nEXPORT_PRECISION=fp16\n")
    proc = start_server(tmp_path)
    try:
        t0 = time.monotonic()
        first = wait_until(lambda: get_health(port), timeout=30)
        listening_s = time.monotonic() - t0
        assert first[0] == 503 and first[1]["status"] == "loading" and first[1]["phase"] in PHASES
        seen = {first[1]["phase"]}
        ready = wait_until(lambda: (h := get_health(port)) and (seen.add(h[1].get("phase")) or h[0] == 200) and h,
                           timeout=300)
        assert ready[1]["model"] == TINY and ready[1]["precision"] == "fp16"  # .env reached the server
        assert "exporting" in seen, seen
        assert listening_s < 20  # long before the export finished
        manifest = next(cache.glob("exported/*/fp16/manifest.json"))
        built_at = manifest.stat().st_mtime
    finally:
        code, took = stop_server(proc)
    assert code == 0 and took < 10, proc.stderr.read()[-2000:]

    proc = start_server(tmp_path)  # second start: the export is found, not rebuilt
    try:
        t0 = time.monotonic()
        wait_until(lambda: (h := get_health(port)) and h[0] == 200, timeout=120)
        second_s = time.monotonic() - t0
    finally:
        code, _ = stop_server(proc)
    assert manifest.stat().st_mtime == built_at and code == 0
    assert second_s < 60


def test_a_failed_first_start_keeps_serving_the_reason(tmp_path):
    port = free_port()
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (tmp_path / ".env").write_text(f"MODEL_NAME={not_a_model}\nPORT={port}\nHF_CACHE_DIR={tmp_path / 'cache'}\n")
    proc = start_server(tmp_path)
    try:
        code, body = wait_until(lambda: (h := get_health(port)) and h[1]["status"] == "error" and h, timeout=60)
        assert code == 503 and body["phase"] == "failed" and "config.json" in body["error"]
        assert proc.poll() is None  # still up, showing why: no crash, so no restart loop
    finally:
        stop_server(proc)


# ---------------------------------------------------------------------------- .env reaches every entry point

def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_NAME", "PORT", "HF_CACHE_DIR", "EXPORT_PRECISION",
                                                            "ENV_FILE")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def test_dotenv_reaches_python_m_export_and_the_environment_wins(tmp_path):
    (tmp_path / ".env").write_text(f"MODEL_NAME={TINY}\nEXPORT_PRECISION=int4\nHF_CACHE_DIR={tmp_path}/c\n")
    run = lambda **env: subprocess.run([sys.executable, "-m", "export", "--print-dir"], cwd=tmp_path,  # noqa: E731
                                       env=clean_env(**env), capture_output=True, text=True, check=True).stdout
    assert run().strip() == f"{tmp_path}/c/exported/builtin--tiny-random/int4"
    assert run(EXPORT_PRECISION="fp16").strip().endswith("/fp16")


def test_dotenv_reaches_python_m_webapp_and_make(tmp_path):
    (tmp_path / ".env").write_text("PORT=8123\nMAX_TILES=5\nEXPORT_PRECISION=int4\nAPI_KEY=secret\n")
    out = subprocess.run([sys.executable, "-m", "webapp", "--print-settings"], cwd=tmp_path, env=clean_env(),
                         capture_output=True, text=True, check=True).stdout
    assert {"PORT=8123", "MAX_TILES=5", "EXPORT_PRECISION=int4", "API_KEY=<set>"} <= set(out.splitlines())
    assert "secret" not in out
    venv = Path(sys.executable).parent.parent
    if not (venv / ".installed-export-test").is_file():
        pytest.skip("not running in a venv that `make test` installed")
    make = subprocess.run(["make", "-s", "settings", f"VENV={venv}", "EXTRAS=export,test",
                           f"ENV_FILE={tmp_path / '.env'}"], cwd=ROOT, env=clean_env(PORT="9001"),
                          capture_output=True, text=True)
    lines = set(make.stdout.splitlines())
    assert {"PORT=9001", "MAX_TILES=5", "EXPORT_PRECISION=int4"} <= lines, make.stdout + make.stderr
