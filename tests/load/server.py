"""The real server in its own process, for load, soak and fault runs: `python -m webapp` on a free loopback
port, health polled, resident memory read from /proc, the log kept in a file.

Loopback only: HOST is always 127.0.0.1, and every URL these helpers build points there.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
TINY = "builtin:tiny-random"
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port nobody listens on right now, on the loopback interface."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def ensure_tiny_export(cache: Path, precision: str = "int8") -> Path:
    """Export the tiny random model into cache unless a finished export is there (~15-30 s the first time)."""
    env = dict(os.environ, HF_CACHE_DIR=str(cache))
    args = [sys.executable, "-m", "export", "--model", TINY, "--precision", precision]
    if subprocess.run([*args, "--check"], cwd=ROOT, env=env, capture_output=True).returncode != 0:
        done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"tiny export failed: {done.stderr[-2000:]}")
    out = subprocess.run([*args, "--print-dir"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (Linux /proc; psutil elsewhere)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


class ServerProcess:
    """`python -m webapp` with MODEL_NAME=builtin:tiny-random over cache; use as a context manager."""

    def __init__(self, cache: Path, log_path: Path, **env: str):
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log_path = Path(log_path)
        self.env = {**os.environ, "MODEL_NAME": TINY, "EXPORT_PRECISION": "int8", "HF_CACHE_DIR": str(cache),
                    "HOST": LOOPBACK, "PORT": str(self.port), "SECRET_KEY": "load-test-secret",
                    "OV_CACHE_DIR": "off", "PYTHONUNBUFFERED": "1",
                    "ENV_FILE": os.devnull}  # a developer's ./.env must not change the server under test
        self.env.update({k: str(v) for k, v in env.items()})
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        """Start the process (the log goes to log_path)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen([sys.executable, "-m", "webapp"], cwd=ROOT, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def wait_health(self, want: int = 200, timeout: float = 120.0) -> requests.Response:
        """Poll /health until it answers `want` (200 ready; 503 for a load error); raises on timeout or exit."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                last = requests.get(f"{self.url}/health", timeout=5)
                body = last.json()
                if last.status_code == want and (want == 200 or body.get("status") == "error"):
                    return last
            except (requests.ConnectionError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"/health never answered {want}; last: {last and last.text}\n{self.log()[-3000:]}")

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    def rss_mb(self) -> float:
        """The server's resident memory now, in MiB."""
        return rss_mb(self.pid)

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """Everything the server printed so far."""
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 10 s; returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def counted_requests(url: str) -> int:
    """Requests the server has counted in /metrics (webapp_requests_total), leaving out /health and /metrics."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("webapp_requests_total{") and 'route="/health"' not in line \
                and 'route="/metrics"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


class _Sampler:
    """A thread that runs `_run` until the `with` block ends; `samples` holds what it recorded."""

    def __init__(self, name: str, join_s: float):
        import threading

        self.samples: list = []
        self._join_s = join_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._t0 = time.perf_counter()

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(self._join_s)


class RssSampler(_Sampler):
    """Samples a process's resident memory every `every_s` seconds in a thread: [(seconds, MiB)]."""

    def __init__(self, pid: int, every_s: float = 0.25):
        super().__init__("rss-sampler", 5)
        self.pid, self.every_s = pid, every_s

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((round(time.perf_counter() - self._t0, 3), round(rss_mb(self.pid), 1)))
            except (OSError, ImportError):
                return
            self._stop.wait(self.every_s)

    def peak(self) -> float:
        """Highest RSS seen, MiB."""
        return max((mb for _, mb in self.samples), default=0.0)


class HealthProbe(_Sampler):
    """Polls /health every `every_s` seconds in a thread, as a container health check would: [(seconds, ms,
    status)]. Under load the answer must stay quick: cheap requests may not queue behind generations."""

    def __init__(self, url: str, every_s: float = 0.5, timeout_s: float = 10.0):
        super().__init__("health-probe", timeout_s + 1)
        self.url, self.every_s, self.timeout_s = url, every_s, timeout_s

    def _run(self) -> None:
        with requests.Session() as http:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    status = http.get(f"{self.url}/health", timeout=self.timeout_s).status_code
                except requests.RequestException:
                    status = 0
                self.samples.append((round(t0 - self._t0, 2), round(1000 * (time.perf_counter() - t0), 1), status))
                self._stop.wait(self.every_s)

    def summary(self) -> dict:
        """Count, statuses and p50 / max latency of the probes."""
        ms = sorted(m for _, m, _ in self.samples)
        return {"probes": len(ms), "not_200": sum(s != 200 for *_, s in self.samples),
                "p50_ms": ms[len(ms) // 2] if ms else 0.0, "max_ms": ms[-1] if ms else 0.0}
