"""manifest.json, read: what an export folder says about itself. The export stage writes it last
(export/manifest.py); everything that reads it goes through `read_manifest`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    """The parts of an export's manifest its readers use."""

    inputs: dict  # what the export is a function of: model, revision, precision, export_version
    files: dict[str, dict]  # file name -> {"bytes": int, "sha256": str}
    source: dict = field(default_factory=dict)  # id, format (native | original | builtin), revision, native_dir
    formats: tuple[str, ...] = ()  # openvino, onnx
    schema: int | None = None
    raw: dict = field(default_factory=dict, repr=False)  # the whole document

    @property
    def source_format(self) -> str:
        """'native', 'original' or 'builtin' ('unknown' when not recorded)."""
        return str(self.source.get("format") or "unknown")

    @property
    def native_dir(self) -> Path | None:
        """The native-format checkpoint the export was made from, where recorded."""
        value = self.source.get("native_dir")
        return Path(value) if value else None


def read_manifest(folder: str | Path) -> Manifest | None:
    """The manifest of an export folder, or None when it is missing, unreadable or not the expected shape."""
    try:
        raw = json.loads((Path(folder) / MANIFEST).read_text())
        return Manifest(inputs=dict(raw["inputs"]), files=dict(raw["files"]), source=dict(raw.get("source") or {}),
                        formats=tuple(raw.get("formats") or ()), schema=raw.get("schema"), raw=raw)
    except (OSError, ValueError, KeyError, TypeError):
        return None
