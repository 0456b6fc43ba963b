"""manifest.json: what an export was built from, with which libraries, and hashes of what it wrote."""
from __future__ import annotations

import hashlib
import time
from importlib import metadata
from pathlib import Path

from runtime import manifest as runtime_manifest
from runtime.manifest import MANIFEST
LIBRARIES = ("openvino", "openvino-genai", "openvino-tokenizers", "nncf", "optimum-intel", "transformers", "torch",
             "onnx", "onnxruntime")
SCHEMA = 1


def file_hash(path: Path) -> str:
    """sha256 of a file, streamed."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries an export depends on."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def build_manifest(folder: Path, inputs: dict, formats: list, source: dict, part_precisions: dict,
                   started: float) -> dict:
    """The manifest of a finished export folder."""
    files = {p.relative_to(folder).as_posix(): {"sha256": file_hash(p), "bytes": p.stat().st_size}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    return {"schema": SCHEMA, "inputs": inputs, "formats": formats, "source": source, "precision": part_precisions, "libraries": library_versions(),
            "files": files, "seconds": round(time.time() - started, 1), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                               time.gmtime())}


def read_manifest(folder: Path) -> dict | None:
    """The manifest of folder as a dict, or None when absent or unreadable (runtime/manifest.py reads it)."""
    manifest = runtime_manifest.read_manifest(folder)
    return manifest.raw if manifest is not None else None


def is_complete(folder: Path, inputs: dict, formats=(), check_hashes: bool = False) -> bool:
    """True when folder holds a finished export of these inputs with at least these formats (sizes checked,
    hashes too when asked)."""
    manifest = read_manifest(folder)
    if not manifest or manifest.get("schema") != SCHEMA or manifest.get("inputs") != inputs:
        return False
    if not set(formats) <= set(manifest.get("formats", [])):
        return False
    for name, info in manifest["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != info["bytes"]:
            return False
        if check_hashes and file_hash(path) != info["sha256"]:
            return False
    return True
