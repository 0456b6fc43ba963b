"""NNCF weight compression of the exported IR, per part and precision."""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

# precision -> {part file: nncf mode name or None (keep as saved)}
PLAN = {
    "fp32": {},
    "fp16": {},
    "int8": {"lm": "INT8_ASYM", "vision": "INT8_ASYM", "embeddings": "INT8_ASYM"},
    "int4": {"lm": "INT4_ASYM", "vision": "INT8_ASYM", "embeddings": "INT8_ASYM"},
}


def part_precisions(precision: str) -> dict[str, str]:
    """Human-readable precision of each part's weights, for the manifest."""
    names = {"INT8_ASYM": "int8", "INT4_ASYM": "int4"}
    plan = PLAN[precision]
    base = "fp32" if precision == "fp32" else "fp16"
    return {part: names.get(plan.get(part), base) for part in ("lm", "vision", "embeddings")}


def compress_file(xml: Path, mode_name: str, hidden_size: int) -> None:
    """Compress the weights of one IR file in place with NNCF."""
    import nncf
    import openvino as ov

    core = ov.Core()
    model = core.read_model(xml)
    mode = getattr(nncf.CompressWeightsMode, mode_name)
    kwargs = {}
    if mode_name.startswith("INT4"):
        kwargs = {"group_size": 128 if hidden_size % 128 == 0 else -1, "ratio": 1.0}
    log.info("compressing %s to %s", xml.name, mode_name)
    compressed = nncf.compress_weights(model, mode=mode, **kwargs)
    tmp = xml.with_name(xml.stem + ".tmp.xml")
    ov.save_model(compressed, tmp, compress_to_fp16=False)
    del model, compressed
    tmp.replace(xml)
    tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
