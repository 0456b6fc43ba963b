"""The first start, visible from the browser.

The web server answers at once; meanwhile `python -m export --progress-json` runs in a child process
(download, conversion, export: minutes on a first start, a second on later ones) and its JSON progress
lines (export/progress.py) become the `phase` and `progress` that /health and the pages show. When it
has finished, the engine starts loading. The export runs in its own process so that its memory (the
PyTorch model) goes back to the system before the engine loads, and so that this package never imports
the export stage. A failed export is reported with its reason and the server stays up to show it: no
crash, so no restart loop.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections import deque

log = logging.getLogger(__name__)
EXPORT_COMMAND = (sys.executable, "-m", "export", "--progress-json")
STOP_GRACE_S = 5.0  # how long a stopped export may take to clean up before it is killed
STDERR_KEPT = 20  # last lines of the export's log kept to explain a crash that printed no reason


class FirstStart:
    """Runs the export when needed, then starts the engine; `info()` tells how far it has got."""

    def __init__(self, engine, command: tuple[str, ...] = EXPORT_COMMAND):
        self.engine = engine
        self._command = command
        self._event: dict | None = {"phase": "starting", "message": "checking the model cache"}
        self._error: str | None = None
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="first-start", daemon=True)

    def start(self) -> "FirstStart":
        """Begin in a background thread; returns self."""
        self._thread.start()
        return self

    def info(self) -> dict | None:
        """State, phase and progress while this runs or after it failed; None once the engine has taken over."""
        if self._error is not None:
            return {"state": "error", "phase": "failed", "error": self._error, "progress": "failed"}
        event = self._event
        if event is None:
            return None
        info = {"state": "loading", "phase": event["phase"], "progress": event.get("message", "")}
        info.update({k: event[k] for k in ("done", "total", "unit") if k in event})
        return info

    def stop(self) -> None:
        """Stop a running export (it removes its unfinished output) and never start the engine."""
        self._stopping.set()
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()

    def _run(self) -> None:
        try:
            returncode, reason = self._export()
        except OSError as exc:  # the interpreter cannot be started: nothing else will work either
            returncode, reason = -1, f"cannot start the export: {exc}"
        if self._stopping.is_set():
            return
        if returncode != 0:
            self._error = reason or f"the export ended with exit code {returncode}; the server log says why"
            log.error("first start failed: %s", self._error)
            return
        # Everything the server needs is in the cache now: never reach for the Hub while serving.
        os.environ["HF_HUB_OFFLINE"] = "1"
        self._event = None
        self.engine.start()

    def _export(self) -> tuple[int, str | None]:
        """Run the export, following its progress; returns (exit code, failure reason if it said one)."""
        reason = None
        self._proc = subprocess.Popen(self._command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace")
        tail: deque[str] = deque(maxlen=STDERR_KEPT)
        relay = threading.Thread(target=_relay, args=(self._proc.stderr, tail), name="export-log", daemon=True)
        relay.start()
        for line in self._proc.stdout:
            event = parse_event(line)
            if event is None:
                continue
            if event["phase"] == "failed":
                reason = event.get("message") or None
            elif event["phase"] != "done":
                self._event = event
        returncode = self._proc.wait()
        relay.join(timeout=5)
        if returncode != 0 and reason is None and tail:
            reason = f"the export stopped: {tail[-1]}"
        return returncode, reason


def _relay(stream, tail: deque) -> None:
    """Copy the export's log to ours, keeping its last lines."""
    for line in stream:
        sys.stderr.write(line)
        if line.strip():
            tail.append(line.strip())


def parse_event(line: str) -> dict | None:
    """One progress line as a dict with at least "phase", or None for anything else on stdout."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("phase"), str):
        return None
    return event
