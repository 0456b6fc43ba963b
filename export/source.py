"""Find the checkpoint named by MODEL_NAME (builtin, local folder, cache, or Hub) as a native-format folder."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from export import progress
from export.errors import ExportError
from export.settings import ExportSettings
from runtime.settings import model_slug

log = logging.getLogger(__name__)
# What a download fetches: config, weights and tokenizer. Not the repo's *.py (remote code we never run).
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"]
PROGRESS_EVERY_S = 0.5  # how often the bytes on disk are reported while downloading


@dataclass(frozen=True)
class Source:
    """A checkpoint ready to load with transformers' InternVLForConditionalGeneration."""

    model_id: str  # MODEL_NAME as given
    native_dir: Path  # folder in the native `internvl` layout
    original_format: str  # "native" | "original" | "builtin"
    revision: str  # Hub commit, "local" or "builtin"


def detect_format(folder: Path) -> str:
    """'native' for model_type internvl, 'original' for internvl_chat; ExportError otherwise."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{folder} has no config.json: not a model folder")
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except json.JSONDecodeError as exc:
        raise ExportError(f"{config_path} is not valid JSON: {exc}") from None
    formats = {"internvl": "native", "internvl_chat": "original"}
    if model_type not in formats:
        raise ExportError(f"unsupported model type {model_type!r} in {config_path} "
                          "(expected an InternVL3.5 checkpoint: internvl or internvl_chat)")
    if not any(folder.glob("*.safetensors")):
        raise ExportError(f"{folder} has no *.safetensors weights")
    return formats[model_type]


def find_local(settings: ExportSettings) -> tuple[Path, str] | None:
    """A folder holding the model without any download: a path, a plain folder in the cache, or the HF cache."""
    name, cache = settings.model_name, Path(settings.cache_dir)
    candidates = [Path(name), cache / name, cache / name.split("/")[-1]]
    for folder in candidates:
        if folder.is_dir() and (folder / "config.json").is_file():
            return folder, "local"
    if "/" in name and not Path(name).exists():
        repo = _repo_folder(name)
        for refs in (cache / repo, cache / "hub" / repo):  # HF_HUB_CACHE and HF_HOME layouts
            revision = settings.revision or "main"
            ref_file = refs / "refs" / revision
            commit = ref_file.read_text().strip() if ref_file.is_file() else revision
            snapshot = refs / "snapshots" / commit
            if is_complete_snapshot(snapshot):
                return snapshot, commit
    return None


def is_complete_snapshot(folder: Path) -> bool:
    """True when a Hub snapshot holds config, tokenizer and every weight file (all shards of an index)."""
    if not ((folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file()):
        return False
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return any(folder.glob("*.safetensors"))
    try:
        shards = set(json.loads(index.read_text())["weight_map"].values())
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return False  # a damaged index: download again rather than guess
    return bool(shards) and all((folder / shard).is_file() for shard in shards)


def go_offline() -> None:
    """Keep every later Hub call of this process (transformers, huggingface_hub) off the network."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # it reads the variable once, at import
        constants.HF_HUB_OFFLINE = True


def download(settings: ExportSettings) -> tuple[Path, str]:
    """Download from the Hub into HF_CACHE_DIR, reporting bytes on disk; returns (folder, commit)."""
    from huggingface_hub import snapshot_download

    name, cache = settings.model_name, Path(settings.cache_dir)
    if settings.offline:
        raise ExportError(f"{name} is not in {cache} and HF_HUB_OFFLINE is set: put the weights "
                          f"in {cache / name} (a plain folder) or unset HF_HUB_OFFLINE")
    with _hub_errors(settings):
        commit, sizes = remote_files(name, settings.revision)
        total = sum(sizes.values())
        log.info("downloading %s (%.0f MB) into %s", name, total / 2**20, cache)
        storage = cache / _repo_folder(name)
        with _report_bytes(name, storage, storage / "snapshots" / commit, sizes):
            folder = Path(snapshot_download(name, revision=settings.revision, cache_dir=str(cache),
                                            allow_patterns=WEIGHT_PATTERNS))
    if not is_complete_snapshot(folder):  # the client fell back to a partial snapshot when the network went
        raise ExportError(f"the download of {name} did not complete ({folder} lacks files): start again "
                          "when the network is back (finished files are kept)")
    return folder, folder.name


def remote_files(name: str, revision: str | None) -> tuple[str, dict[str, int]]:
    """(commit, {file: bytes}) of the repo files a download fetches, from the Hub's file metadata."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    info = HfApi().model_info(name, revision=revision, files_metadata=True)
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
    wanted = filter_repo_objects(list(sizes), allow_patterns=WEIGHT_PATTERNS)
    return info.sha, {f: sizes[f] for f in wanted}


@contextlib.contextmanager
def _hub_errors(settings: ExportSettings):
    """Turn the Hub client's errors into one-line ExportErrors."""
    import httpx
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    name, cache = settings.model_name, Path(settings.cache_dir)
    try:
        yield
    except RepositoryNotFoundError:
        raise ExportError(f"model {name!r} was not found on the Hugging Face Hub") from None
    except RevisionNotFoundError:
        raise ExportError(f"revision {settings.revision!r} of {name} was not found on the Hugging Face Hub") from None
    except (httpx.HTTPError, OSError) as exc:  # no network, Hub errors, a cut the client gave up on
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the cache's disk (full, read-only): the CLI says so
        raise ExportError(f"cannot download {name} ({type(exc).__name__}) and it is not in {cache}: "
                          f"connect to the network, or put the weights in {cache / name}") from None


@contextlib.contextmanager
def _report_bytes(name: str, storage: Path, snapshot: Path, sizes: dict[str, int]):
    """Report "downloading" progress every PROGRESS_EVERY_S while the body runs, and done == total at the end.

    done = files of the snapshot already cached + what the download added to blobs/ since it started
    (partial `.incomplete` files included), so a restarted download starts from the files it finished before.
    """
    total = sum(sizes.values())
    cached = sum(size for f, size in sizes.items() if (snapshot / f).is_file())
    before = _folder_bytes(storage / "blobs")  # earlier blobs and orphaned partial files do not count as new
    stop = threading.Event()

    def poll():
        shown = 0
        while True:  # never backwards: a file being renamed while listed is briefly missed
            shown = max(shown, min(total, cached + _folder_bytes(storage / "blobs") - before))
            progress.report("downloading", name, shown, total, "bytes")
            if stop.wait(PROGRESS_EVERY_S):
                return

    thread = threading.Thread(target=poll, name="download-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    progress.report("downloading", name, total, total, "bytes")


def _folder_bytes(folder: Path) -> int:
    """Total size of the files directly in folder (0 when it does not exist yet)."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            with contextlib.suppress(FileNotFoundError):  # a partial file renamed between listing and stat
                total += entry.stat(follow_symlinks=False).st_size
    return total


def _repo_folder(name: str) -> str:
    """The Hugging Face cache's folder name for a model repo id."""
    return f"models--{name.replace('/', '--')}"


def resolve_source(settings: ExportSettings) -> Source:
    """Locate or fetch the checkpoint and return it in the native layout (converting the original format)."""
    from export.builtin import is_builtin, write_builtin
    from export.original import convert_original

    cache = Path(settings.cache_dir)
    if is_builtin(settings.model_name):
        folder = cache / "builtin" / model_slug(settings.model_name)
        if not (folder / "config.json").is_file():
            progress.report("converting", f"building the random-weight model {settings.model_name}")
            _atomic_build(folder, lambda tmp: write_builtin(settings.model_name, tmp))
        return Source(settings.model_name, folder, "builtin", "builtin")
    if Path(settings.model_name).is_dir() or settings.model_name.startswith(("/", ".")):
        folder, revision = Path(settings.model_name), "local"  # a path: never a Hub id
        if not folder.is_dir():
            raise ExportError(f"model folder {folder} does not exist")
    elif (found := find_local(settings)) is not None:
        folder, revision = found
        if revision != "local":  # a complete Hub snapshot: nothing later in this process needs the network
            go_offline()
    else:
        folder, revision = download(settings)
    fmt = detect_format(folder)
    if fmt == "native":
        return Source(settings.model_name, folder, "native", revision)
    converted = cache / "converted" / model_slug(settings.model_name) / revision
    if not (converted / "config.json").is_file():
        log.info("converting the original-format checkpoint to the native layout")
        progress.report("converting", "original checkpoint to the native layout")
        _atomic_build(converted, lambda tmp: convert_original(folder, tmp))
    return Source(settings.model_name, converted, "original", revision)


def _atomic_build(target: Path, build) -> None:
    """Run build(tmp) in a temporary sibling folder, then rename it to target."""
    from export.atomic import atomic_dir, export_lock

    with export_lock(target):
        if (target / "config.json").is_file():
            return
        with atomic_dir(target) as tmp:
            build(tmp)
