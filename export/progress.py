"""Progress of a running export, for people (log lines) and for the web app (JSON lines on stdout).

`python -m export --progress-json` prints one JSON object per line on stdout while it works:

    {"phase": "downloading", "done": 123456, "total": 2100000000, "unit": "bytes", "message": "..."}
    {"phase": "exporting", "done": 2, "total": 5, "unit": "parts", "message": "language model"}
    {"phase": "done", "message": "<export folder>"}
    {"phase": "failed", "message": "<the reason, as the CLI prints it>"}

`done` and `total` are omitted where unknown. The web app reads these lines to show the first start's
progress; without the flag, each report is only logged.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time

log = logging.getLogger(__name__)
PHASES = ("downloading", "converting", "exporting", "done", "failed")
_LOG_EVERY_S = 10.0  # byte counts are logged at most this often (the JSON lines are not throttled)

_json_out = None  # a text stream when --progress-json is on
_lock = threading.Lock()
_last_logged: dict[str, float] = {}


def emit_json(stream=None) -> None:
    """Also write every report as one JSON line on stream (stdout by default)."""
    global _json_out
    _json_out = stream or sys.stdout


def report(phase: str, message: str = "", done: int | None = None, total: int | None = None,
           unit: str | None = None) -> None:
    """Record the export's progress: logged for people, and a JSON line when emit_json() was called."""
    assert phase in PHASES, phase
    event = {"phase": phase, "message": message}
    if done is not None:
        event["done"] = int(done)
    if total is not None:
        event["total"] = int(total)
    if unit:
        event["unit"] = unit
    with _lock:
        if _json_out is not None:
            _json_out.write(json.dumps(event) + "\n")
            _json_out.flush()
        now = time.monotonic()
        if unit == "bytes" and now - _last_logged.get(phase, -_LOG_EVERY_S) < _LOG_EVERY_S and done != total:
            return
        _last_logged[phase] = now
    log.info("%s%s%s", phase, f" {_amount(done, total, unit)}" if done is not None else "",
             f": {message}" if message else "")


def _amount(done: int, total: int | None, unit: str | None) -> str:
    if unit == "bytes":
        mb = 2**20
        return f"{done / mb:.0f} MB" + (f" of {total / mb:.0f} MB" if total else "")
    return f"{done}" + (f" of {total}" if total else "") + (f" {unit}" if unit else "")
