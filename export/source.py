"""Find the checkpoint named by MODEL_NAME (builtin, local folder, cache, or Hub) as a native-format folder."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from export.errors import ExportError
from export.settings import ExportSettings
from runtime.settings import model_slug

log = logging.getLogger(__name__)
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken", "*.py"]


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
        repo = f"models--{name.replace('/', '--')}"
        for refs in (cache / repo, cache / "hub" / repo):  # HF_HUB_CACHE and HF_HOME layouts
            revision = settings.revision or "main"
            ref_file = refs / "refs" / revision
            commit = ref_file.read_text().strip() if ref_file.is_file() else revision
            snapshot = refs / "snapshots" / commit
            if (snapshot / "config.json").is_file() and any(snapshot.glob("*.safetensors")):
                return snapshot, commit
    return None


def download(settings: ExportSettings) -> tuple[Path, str]:
    """Download (resumable, with progress) from the Hub into HF_CACHE_DIR; returns (folder, commit)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    name = settings.model_name
    if settings.offline:
        raise ExportError(f"{name} is not in {settings.cache_dir} and HF_HUB_OFFLINE is set: put the weights "
                          f"in {Path(settings.cache_dir) / name} (a plain folder) or unset HF_HUB_OFFLINE")
    log.info("downloading %s into %s (about 2 GB for InternVL3.5-1B)", name, settings.cache_dir)
    try:
        folder = snapshot_download(name, revision=settings.revision, cache_dir=settings.cache_dir,
                                   allow_patterns=WEIGHT_PATTERNS)
    except RepositoryNotFoundError:
        raise ExportError(f"model {name!r} was not found on the Hugging Face Hub") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise ExportError(f"cannot download {name} ({type(exc).__name__}) and it is not in {settings.cache_dir}: "
                          f"connect to the network, or put the weights in {Path(settings.cache_dir) / name}") from None
    return Path(folder), Path(folder).name


def resolve_source(settings: ExportSettings) -> Source:
    """Locate or fetch the checkpoint and return it in the native layout (converting the original format)."""
    from export.builtin import is_builtin, write_builtin
    from export.original import convert_original

    cache = Path(settings.cache_dir)
    if is_builtin(settings.model_name):
        folder = cache / "builtin" / model_slug(settings.model_name)
        if not (folder / "config.json").is_file():
            _atomic_build(folder, lambda tmp: write_builtin(settings.model_name, tmp))
        return Source(settings.model_name, folder, "builtin", "builtin")
    if Path(settings.model_name).is_dir() or settings.model_name.startswith(("/", ".")):
        folder, revision = Path(settings.model_name), "local"  # a path: never a Hub id
        if not folder.is_dir():
            raise ExportError(f"model folder {folder} does not exist")
    else:
        folder, revision = find_local(settings) or download(settings)
    fmt = detect_format(folder)
    if fmt == "native":
        return Source(settings.model_name, folder, "native", revision)
    converted = cache / "converted" / model_slug(settings.model_name) / revision
    if not (converted / "config.json").is_file():
        log.info("converting the original-format checkpoint to the native layout")
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
