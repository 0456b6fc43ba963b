"""bench.quality on the tiny model: the reference against itself is exact, and coarser weights cost more."""
from __future__ import annotations

import numpy as np
import pytest
from model_fixtures import TINY, photo

from bench import quality
from bench.quality import REFERENCE, Setting

ERRORS = ["vision_rel_l2_1tile", "vision_rel_l2_3tile", "prefill_rel_l2", "prefill_kl", "decode_rel_l2",
          "decode_kl"]
AGREEMENTS = ["prefill_top1", "decode_top1", "first_top1"]


@pytest.fixture(scope="module")
def result(model_cache):
    """The reference, the reference compiled again, int8 and int4 (f32 inference, no DQ) on the tiny model."""
    from export.pipeline import run_export
    from export.settings import ExportSettings
    from runtime.images import preprocess

    run_export(ExportSettings(model_name=TINY, cache_dir=str(model_cache), precision="int4"))
    inputs = quality.Inputs([preprocess(photo(name, (448, 448)), 1) for name in ("chelsea", "coffee")],
                            preprocess(photo("astronaut", (800, 400)), 2))
    settings = [REFERENCE, Setting("int8", "f32", 0, "f32"), Setting("int4", "f32", 0, "f32")]
    return quality.measure_model(str(model_cache), TINY, settings, inputs, progress=lambda _: None)


def test_reference_against_itself_is_exact(result):
    first, again = result["rows"][0], result["rows"][1]
    assert first["reference"] and not again["reference"]
    for row in (first, again):  # the same comparison, and a fresh compile of the same configuration
        assert all(row[k] == 0 for k in ERRORS), row
        assert all(row[k] == 1 for k in AGREEMENTS), row
        assert row["vision_cosine"] == pytest.approx(1, abs=1e-12)
    assert first["applied"]["INFERENCE_PRECISION_HINT"] == "f32"


def test_int4_costs_more_than_int8(result):
    int8, int4 = result["rows"][2], result["rows"][3]
    for key in ("prefill_rel_l2", "decode_rel_l2", "prefill_kl", "decode_kl"):
        assert 0 < int8[key] < int4[key], key
    assert int8["vision_rel_l2_1tile"] > 0  # the int8 export's vision model is compressed too


def test_report_lists_every_row(result):
    md = quality.render({"openvino": "x", "cpu": "y", "created": "z", "models": {TINY: result}})
    assert quality.table(result).count("\n") == len(result["rows"]) + 1
    assert "fp32 (reference)" in md and TINY in md


def test_metrics():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 50))
    assert quality.rel_l2(ref, ref) == 0 and quality.mean_kl(ref, ref) == pytest.approx(0, abs=1e-12)
    assert quality.top1_agreement(ref, ref) == 1 and quality.mean_cosine(ref, ref) == pytest.approx(1)
    noisy = ref + 0.1 * rng.standard_normal(ref.shape)
    assert quality.mean_kl(noisy, ref) > 0 and quality.rel_l2(noisy, ref) == pytest.approx(
        np.linalg.norm(noisy - ref) / np.linalg.norm(ref))
    assert quality.mean_kl(ref + 3.0, ref) == pytest.approx(0, abs=1e-12)  # softmax ignores a shift
