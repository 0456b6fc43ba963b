"""First start from the Hub: byte progress, resumed transfers, an offline second start, no Hub code, clear errors.

`python -m export` runs as a user runs it, against a loopback Hub (hub_server.py) that the real huggingface_hub
client talks to. The repos it serves hold the tiny random model in the file layout of OpenGVLab/InternVL3_5-1B
(original format, with the repo's *.py files booby-trapped: running any of them writes a marker file).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hub_server import HubServer, SilentEndpoint
from test_original_format import write_original

REPO = "OpenGVLab/InternVL3_5-1B"
SHARDED = "test-org/InternVL3_5-1B-sharded"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
HUB_CODE = ("configuration_intern_vit.py", "configuration_internvl_chat.py", "conversation.py",
            "modeling_intern_vit.py", "modeling_internvl_chat.py")
AUTO_MAP = {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
            "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel"}
# huggingface_hub writes a download in 10 MB reads: a cut can only resume mid-file in a file larger than that.
PADDING = 12 * 2**20
CUT_AT = 11 * 2**20
SETTINGS_ENV = ("MODEL_NAME", "MODEL_REVISION", "EXPORT_PRECISION", "EXPORT_FORMATS", "BACKEND", "ENV_FILE")


# ---------------------------------------------------------------------------- the repos and the CLI

def write_hub_repo(native_dir: Path, out: Path, marker: Path, shards: int = 1) -> Path:
    """The tiny model as the Hub holds InternVL3.5-1B: original config and keys, tokenizer, remote code, README."""
    from safetensors.torch import load_file, save_file

    write_original(native_dir, out)
    tensors = load_file(str(out / "model.safetensors"))
    if shards == 1:  # metadata padding makes the file big enough to be cut and resumed mid-way
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt", "padding": " " * PADDING})
    else:
        (out / "model.safetensors").unlink()
        keys = sorted(tensors)
        parts = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
        for name, part in zip(SHARDS, parts):
            save_file({k: tensors[k] for k in part}, str(out / name), metadata={"format": "pt"})
        weight_map = {k: name for name, part in zip(SHARDS, parts) for k in part}
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}))
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(dict(config, auto_map=AUTO_MAP)))
    for name in HUB_CODE:
        (out / name).write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text(__name__)\n"
                                f"raise RuntimeError('code from the Hub ran: {name}')\n")
    (out / "README.md").write_text("# InternVL3.5 (tiny random stand-in)\n")
    return out


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """{"single": folder, "sharded": folder, "marker": path}: the served repos and the file Hub code would write."""
    from export.builtin import write_builtin

    root = tmp_path_factory.mktemp("hub_repos")
    native = write_builtin("builtin:tiny-random", root / "native")
    marker = root / "hub-code-ran"
    return {"single": write_hub_repo(native, root / "single", marker),
            "sharded": write_hub_repo(native, root / "sharded", marker, shards=2), "marker": marker}


@dataclass
class Run:
    """One `python -m export` process."""

    returncode: int
    events: list  # the JSON progress lines
    stderr: str
    seconds: float

    def phases(self) -> list[str]:
        """The phases in order, each run of repeats folded into one."""
        out = []
        for event in self.events:
            if not out or out[-1] != event["phase"]:
                out.append(event["phase"])
        return out

    def of(self, phase: str) -> list[dict]:
        """The events of one phase."""
        return [e for e in self.events if e["phase"] == phase]


def export_cli(cache: Path, model: str, endpoint: str, *args: str, precision: str = "fp16",
               kill_at: str | None = None, timeout: float = 300) -> Run:
    """`python -m export` against endpoint, with nothing of the user's Hub setup; kill_at: SIGKILL at that phase."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_")) and k not in SETTINGS_ENV}
    env.update(MODEL_NAME=model, HF_CACHE_DIR=str(cache), HF_ENDPOINT=endpoint, EXPORT_PRECISION=precision,
               HF_HOME=str(cache.parent / f"{cache.name}-hf-home"))
    stderr_path = cache.parent / f"{cache.name}-stderr.txt"
    started, events = time.monotonic(), []
    with open(stderr_path, "w") as stderr:  # a file, so a chatty stderr never blocks the process
        proc = subprocess.Popen([sys.executable, "-m", "export", *args], cwd=cache.parent, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=stderr)  # cwd: no developer's .env is read
        try:
            for line in proc.stdout:
                if line.startswith("{"):  # other libraries print their own lines on stdout too
                    events.append(json.loads(line))
                    if kill_at and events[-1]["phase"] == kill_at:
                        proc.kill()
            proc.wait(timeout)
        finally:
            proc.kill()
    return Run(proc.returncode, events, stderr_path.read_text(), time.monotonic() - started)


def snapshot_of(cache: Path, repo: str) -> Path:
    """The one snapshot folder of repo in the Hugging Face cache layout under cache."""
    (folder,) = (cache / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir()
    return folder


def one_line_error(run: Run) -> str:
    """The CLI's error line, checking it is the only one and no traceback was printed."""
    # a progress bar's last state (written with "\r", no newline) may share the line: take the message from it
    lines = [line[line.index("export: error:"):] for line in run.stderr.splitlines() if "export: error:" in line]
    assert run.returncode == 1 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.events and run.events[-1]["phase"] == "failed"
    return lines[0]


def sha256(path: Path) -> str:
    """Hex digest of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- first start, one weights file

@pytest.fixture(scope="module")
def first_start(repos, tmp_path_factory):
    """(run, hub, cache): a first start whose weights transfer the Hub cuts once; the Hub is stopped after it."""
    hub = HubServer()
    hub.add_repo(REPO, repos["single"])
    hub.cut_once(REPO, "model.safetensors", CUT_AT)
    hub.slow(REPO, "model.safetensors", 1.5)  # long enough for several progress reports
    cache = tmp_path_factory.mktemp("first_start") / "cache"
    try:
        run = export_cli(cache, REPO, hub.url, "--progress-json")
    finally:
        hub.stop()
    assert run.returncode == 0, run.stderr[-3000:]
    return run, hub, cache


def test_first_start_reports_bytes_then_parts_then_done(first_start):
    run, hub, cache = first_start
    assert run.phases() == ["downloading", "converting", "exporting", "done"]
    served = {name: len(f.data) for name, f in hub.repos[REPO][1].items() if hub.file_stats(REPO, name).gets}
    total = sum(served.values())
    assert total == sum(p.stat().st_size for p in snapshot_of(cache, REPO).iterdir())
    downloads = run.of("downloading")
    assert all(e["total"] == total and e["unit"] == "bytes" for e in downloads)
    done = [e["done"] for e in downloads]
    assert done == sorted(done) and done[-1] == total
    assert any(0 < d < total for d in done), done  # reported while the bytes came in, not only at the end
    parts = [e for e in run.of("exporting") if e.get("unit") == "parts"]
    assert [e["done"] for e in parts] == sorted(e["done"] for e in parts) and parts[-1]["done"] == parts[-1]["total"]
    assert Path(run.events[-1]["message"], "manifest.json").is_file()


def test_a_cut_transfer_resumes_with_a_range_request(first_start, repos):
    run, hub, cache = first_start
    stats = hub.file_stats(REPO, "model.safetensors")
    size = (repos["single"] / "model.safetensors").stat().st_size
    assert stats.gets == 2 and stats.ranges[0] is None
    assert stats.ranges[1].startswith("bytes=") and 0 < int(stats.ranges[1][6:].rstrip("-")) <= CUT_AT
    assert stats.bytes_sent < 2 * size  # resumed, not sent again from zero
    assert sha256(snapshot_of(cache, REPO) / "model.safetensors") == sha256(repos["single"] / "model.safetensors")


def test_hub_code_is_neither_downloaded_nor_run(first_start, repos):
    run, hub, cache = first_start
    assert not [path for _, path in hub.requests if path.endswith((".py", ".md"))]
    assert not list(snapshot_of(cache, REPO).glob("*.py"))
    assert not repos["marker"].exists()


def test_second_start_needs_no_network(first_start):
    """With the Hub gone and HF_ENDPOINT on a socket that never answers, the finished export is found at once."""
    run, hub, cache = first_start
    silent = SilentEndpoint()
    try:
        check = export_cli(cache, REPO, silent.url, "--check", timeout=60)
        again = export_cli(cache, REPO, silent.url, "--progress-json", timeout=60)
    finally:
        silent.close()
    assert check.returncode == 0 and again.returncode == 0, again.stderr[-3000:]
    assert again.phases() == ["done"] and again.events[-1]["message"] == run.events[-1]["message"]
    assert silent.connections == 0
    assert check.seconds < 10 and again.seconds < 10  # under the Hub client's 10 s metadata timeout


def test_a_complete_snapshot_switches_the_process_offline(first_start):
    """Found in the cache, the model is exported with HF_HUB_OFFLINE on for the rest of the process."""
    run, hub, cache = first_start
    code = ("import os, huggingface_hub.constants as c; from export.settings import ExportSettings; "
            "from export.source import resolve_source; "
            f"s = resolve_source(ExportSettings(model_name={REPO!r}, cache_dir={str(cache)!r})); "
            "print(s.original_format, os.environ.get('HF_HUB_OFFLINE'), c.HF_HUB_OFFLINE)")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["original", "1", "True"], out.stderr[-3000:]


# ---------------------------------------------------------------------------- interrupted first starts, two shards

def test_interrupted_sharded_first_start_resumes_then_converts_offline(repos, tmp_path):
    """A failed download, then one killed once complete, then a start with no Hub: each keeps what is done.

    The last start is stopped once it reaches the export proper (shown end to end by first_start).
    """
    hub = HubServer()
    hub.add_repo(SHARDED, repos["sharded"])
    hub.fail(SHARDED, SHARDS[1], 500)
    cache = tmp_path / "cache"
    failed = export_cli(cache, SHARDED, hub.url, "--progress-json")
    assert "cannot download" in one_line_error(failed)
    snapshot = snapshot_of(cache, SHARDED)
    assert (snapshot / SHARDS[0]).is_file() and not (snapshot / SHARDS[1]).exists()

    hub.fail(SHARDED, SHARDS[1], None)
    try:
        downloaded = export_cli(cache, SHARDED, hub.url, "--progress-json", kill_at="converting")
    finally:
        hub.stop()
    assert downloaded.phases() == ["downloading", "converting"]
    done = [e["done"] for e in downloaded.of("downloading")]
    assert done[0] >= (snapshot / SHARDS[0]).stat().st_size and done[-1] == downloaded.of("downloading")[-1]["total"]
    assert hub.file_stats(SHARDED, SHARDS[0]).gets == 1  # the shard finished the first time is not fetched again
    assert hub.file_stats(SHARDED, SHARDS[1]).gets == 1
    for name in HUB_CODE:  # as a full `hf download` of the repo would leave them
        shutil.copy(repos["sharded"] / name, snapshot / name)

    silent = SilentEndpoint()
    try:
        offline = export_cli(cache, SHARDED, silent.url, "--progress-json", kill_at="exporting")
    finally:
        silent.close()
    assert offline.phases() == ["converting", "exporting"], offline.stderr[-3000:]
    assert silent.connections == 0
    assert not repos["marker"].exists()


# ---------------------------------------------------------------------------- errors

@pytest.mark.parametrize("model,args,words", [
    ("test-org/no-such-model", (), ["'test-org/no-such-model'", "not found"]),
    (REPO, ("--revision", "v9.9"), ["'v9.9'", REPO, "not found"]),
])
def test_missing_repo_or_revision_is_a_one_line_error(repos, tmp_path, model, args, words):
    hub = HubServer()
    hub.add_repo(REPO, repos["single"])
    try:
        run = export_cli(tmp_path / "cache", model, hub.url, "--progress-json", *args, timeout=120)
    finally:
        hub.stop()
    line = one_line_error(run)
    assert all(word in line for word in words), line
    assert line.endswith(run.events[-1]["message"])
    assert not [path for _, path in hub.requests if "/resolve/" in path or "/cdn/" in path]  # nothing downloaded


def test_no_network_is_a_one_line_error(tmp_path):
    hub = HubServer()
    hub.stop()  # its port now refuses connections
    run = export_cli(tmp_path / "cache", REPO, hub.url, "--progress-json", timeout=120)
    line = one_line_error(run)
    assert "cannot download" in line and str(tmp_path / "cache" / REPO) in line
