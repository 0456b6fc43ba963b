"""Check an export folder against its manifest before loading it: missing, unfinished, damaged or mismatched
exports become one ArtifactsMissing with a plain reason (shown by /health), never a backend's own crash.

Reads manifest.json through runtime/manifest.py (runtime never imports export/): the export stage writes it last, listing the
size of every file it wrote, so sizes catch truncated or half-copied files without hashing gigabytes.
"""
from __future__ import annotations

from pathlib import Path

from runtime.errors import ArtifactsMissing
from runtime.manifest import MANIFEST, Manifest, read_manifest
from runtime.settings import RuntimeSettings, model_slug


def check_export(folder: Path, settings: RuntimeSettings) -> Manifest:
    """Return the manifest of a complete export of settings' model and precision, else raise ArtifactsMissing."""
    again = f"run `make export` (MODEL_NAME={settings.model_name}, EXPORT_PRECISION={settings.precision})"
    if not folder.is_dir():
        raise ArtifactsMissing(f"no export at {folder}: {again}")
    manifest = read_manifest(folder)
    if manifest is None:
        raise ArtifactsMissing(f"{folder} has no readable {MANIFEST}: the export did not finish; {again}")
    files, inputs = manifest.files, manifest.inputs
    built = (inputs.get("model"), inputs.get("precision"))
    if model_slug(str(built[0])) != model_slug(settings.model_name) or built[1] != settings.precision:
        raise ArtifactsMissing(f"{folder} holds an export of {built[0]} at {built[1]}, not of "
                               f"{settings.model_name} at {settings.precision}: {again}")
    for name, info in files.items():
        _check_file(folder / name, info, again)
    return manifest


def _check_file(path: Path, info, again: str) -> None:
    """Raise ArtifactsMissing when a file the export wrote is gone or has another size."""
    if not path.is_file():
        raise ArtifactsMissing(f"{path} is missing (the export wrote it): {again}")
    expected = info.get("bytes") if isinstance(info, dict) else None
    size = path.stat().st_size
    if expected is not None and size != expected:
        raise ArtifactsMissing(f"{path} has {size} bytes but the export wrote {expected}: the file is truncated "
                               f"or was changed; {again}")
