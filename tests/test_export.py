"""The export stage on the tiny random model: layout, parity with PyTorch, VLMPipeline, idempotence, errors."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import TINY, photo, reference_generate, rel_err

ROOT = Path(__file__).resolve().parents[1]
IR_FILES = ["openvino_vision_embeddings_model.xml", "openvino_text_embeddings_model.xml",
            "openvino_language_model.xml", "openvino_tokenizer.xml", "openvino_detokenizer.xml",
            "config.json", "preprocessor_config.json", "hf_config.json", "manifest.json"]


def run_cli(*args, cache, env=None, timeout=300):
    """`python -m export ...` in a subprocess; returns the completed process."""
    full_env = dict(os.environ, HF_CACHE_DIR=str(cache), **(env or {}))
    return subprocess.run([sys.executable, "-m", "export", *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def export_dir(cache, precision, model=TINY):
    from runtime.settings import artifact_dir
    return artifact_dir(cache, model, precision)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_layout_and_manifest(model_cache, precision):
    folder = export_dir(model_cache, precision)
    for name in IR_FILES:
        assert (folder / name).is_file(), name
    assert not (folder / "processor_config.json").exists()  # it would make VLMPipeline use 336-px tiles
    assert json.loads((folder / "config.json").read_text())["model_type"] == "internvl_chat"
    assert json.loads((folder / "hf_config.json").read_text())["model_type"] == "internvl"
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    assert pre["size"]["shortest_edge"] == 448 and pre["image_mean"] == [0.485, 0.456, 0.406]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["inputs"]["model"] == TINY and manifest["source"]["format"] == "builtin"
    assert manifest["precision"]["lm"] == {"fp32": "fp32", "int8": "int8"}[precision]
    assert "openvino" in manifest["libraries"] and manifest["files"]
    for name, info in manifest["files"].items():
        assert (folder / name).stat().st_size == info["bytes"]


def test_int8_is_smaller_than_fp32(model_cache):
    size = lambda p: (export_dir(model_cache, p) / "openvino_language_model.bin").stat().st_size  # noqa: E731
    assert size("int8") < 0.5 * size("fp32")


def _ov_f32(path):
    import openvino as ov
    return ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def test_vision_and_prefill_parity_with_pytorch(model_cache, reference):
    import torch
    from runtime.backends.openvino_backend import slice_before_lm_head  # noqa: F401  (same graph as serving)
    from runtime.images import preprocess

    model = reference[0]
    folder = export_dir(model_cache, "fp32")
    pixels = preprocess(photo(), 6)  # (7, 3, 448, 448)
    ov_feats = _ov_f32(folder / IR_FILES[0])({0: pixels})[0]
    with torch.no_grad():
        ref = model.model.get_image_features(pixel_values=torch.from_numpy(pixels), vision_feature_layer=-1,
                                             vision_feature_select_strategy="default")
    ref = getattr(ref, "pooler_output", ref).reshape(ov_feats.shape).numpy()
    assert rel_err(ov_feats, ref) < 1e-4

    ids = np.arange(5, 45, dtype=np.int64)[None]
    embeds = _ov_f32(folder / IR_FILES[1])({0: ids})[0]
    lm = _ov_f32(folder / IR_FILES[2]).create_infer_request()
    lm.infer({"inputs_embeds": embeds, "attention_mask": np.ones_like(ids), "position_ids": np.arange(40)[None],
              "beam_idx": np.zeros(1, np.int32)})
    with torch.no_grad():
        ref_logits = model(input_ids=torch.from_numpy(ids)).logits.numpy()
    assert rel_err(lm.get_tensor("logits").data, ref_logits) < 1e-4


@pytest.mark.parametrize("size,max_tiles", [((448, 448), 1), (None, 12)], ids=["1-tile", "multi-tile"])
def test_vlmpipeline_greedy_tokens_equal_transformers(model_cache, reference, size, max_tiles):
    import openvino as ov
    import openvino_genai as genai

    image = photo(size=size)
    pipe = genai.VLMPipeline(str(export_dir(model_cache, "fp32")), "CPU", INFERENCE_PRECISION_HINT="f32",
                             KV_CACHE_PRECISION="f32")
    config = genai.GenerationConfig()
    config.max_new_tokens, config.do_sample = 16, False
    result = pipe.generate("what is this?", images=[ov.Tensor(np.asarray(image)[None])], generation_config=config)
    expected = reference_generate(reference, image, "what is this?", max_tiles=max_tiles, max_new_tokens=16)
    assert result.texts[0] == expected.replace("<|im_end|>", "")


def test_second_run_skips_finished_work_and_changes_nothing(model_cache, tmp_path):
    folder = export_dir(model_cache, "int8")
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    proc = run_cli("--model", TINY, "--precision", "int8", cache=model_cache)
    assert proc.returncode == 0, proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert run_cli("--model", TINY, "--precision", "int8", "--check", cache=model_cache).returncode == 0
    assert run_cli("--model", TINY, "--precision", "int8", "--check", cache=tmp_path).returncode == 1  # none


def test_killed_export_leaves_nothing_usable(tmp_path, model_cache):
    cache = tmp_path / "cache"
    shutil.copytree(model_cache / "builtin", cache / "builtin")  # skip the model build, kill during export
    proc = subprocess.Popen([sys.executable, "-m", "export", "--model", TINY, "--precision", "int8"], cwd=ROOT,
                            env=dict(os.environ, HF_CACHE_DIR=str(cache)), stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # wait until it is writing IR files, then kill it without warning
        if "compressing" in line or "exporting" in line:
            time.sleep(1.0)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(60)
    folder = export_dir(cache, "int8")
    assert not folder.exists()
    assert run_cli("--model", TINY, "--precision", "int8", "--check", cache=cache).returncode == 1
    again = run_cli("--model", TINY, "--precision", "int8", cache=cache)
    assert again.returncode == 0, again.stderr
    assert (folder / "manifest.json").is_file()
    assert not list(folder.parent.glob(".int8.partial-*"))  # the stale partial folder was swept


def _one_line_error(proc, *words):
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("export: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_offline_without_weights_says_where_to_put_them(tmp_path):
    proc = run_cli("--model", "OpenGVLab/InternVL3_5-1B", cache=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    _one_line_error(proc, "HF_HUB_OFFLINE", str(tmp_path / "OpenGVLab" / "InternVL3_5-1B"))
    assert not (tmp_path / "exported").exists() or not any((tmp_path / "exported").rglob("manifest.json"))


def test_plain_folder_in_cache_is_used_offline(tmp_path, tiny_native_dir):
    shutil.copytree(tiny_native_dir, tmp_path / "OpenGVLab" / "InternVL3_5-1B-HF")
    proc = run_cli("--model", "OpenGVLab/InternVL3_5-1B-HF", "--precision", "fp16", cache=tmp_path,
                   env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((export_dir(tmp_path, "fp16", "OpenGVLab/InternVL3_5-1B-HF") / "manifest.json").read_text())
    assert manifest["source"]["format"] == "native" and manifest["precision"]["lm"] == "fp16"


def test_hub_cache_layout_is_used_offline(tmp_path, tiny_native_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # resolve_source turns it on for its process: undone after the test
    repo = tmp_path / "models--OpenGVLab--InternVL3_5-1B-HF"
    shutil.copytree(tiny_native_dir, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    proc = run_cli("--model", "OpenGVLab/InternVL3_5-1B-HF", "--print-dir", cache=tmp_path)
    assert proc.returncode == 0
    from export.settings import ExportSettings
    from export.source import resolve_source
    source = resolve_source(ExportSettings(model_name="OpenGVLab/InternVL3_5-1B-HF", cache_dir=str(tmp_path),
                                           offline=True))
    assert source.revision == "abc123" and source.original_format == "native"


@pytest.mark.parametrize("damage,words", [
    ("unknown_type", ["unsupported model type", "llama"]),
    ("no_weights", ["no *.safetensors"]),
    ("corrupt_weights", ["cannot load the checkpoint"]),
    ("not_a_model", ["no config.json"]),
])
def test_bad_checkpoints_give_one_clear_line(tmp_path, tiny_native_dir, damage, words):
    folder = tmp_path / "model"
    shutil.copytree(tiny_native_dir, folder)
    if damage == "unknown_type":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(dict(config, model_type="llama")))
    elif damage == "no_weights":
        (folder / "model.safetensors").unlink()
    elif damage == "corrupt_weights":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:5000])
    else:
        (folder / "config.json").unlink()
    proc = run_cli("--model", str(folder), cache=tmp_path / "cache")
    _one_line_error(proc, *words)
    assert not list((tmp_path / "cache").rglob("manifest.json"))


def test_unwritable_cache_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = run_cli("--model", TINY, cache=blocker / "cache")
    _one_line_error(proc, "cannot write")


def test_full_disk_is_a_clear_error_and_keeps_nothing(tmp_path, monkeypatch):
    import errno

    from export import atomic
    from export.errors import ExportError

    target = tmp_path / "out"

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full)
    with pytest.raises(ExportError, match="no space left"):
        with atomic.atomic_dir(target) as tmp:
            (tmp / "part.bin").write_bytes(b"x" * 10)
    assert not target.exists() and not list(tmp_path.glob(".out.partial-*"))
