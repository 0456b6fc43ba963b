"""Resident memory: mapped weight files are paged out once the plugin has repacked them, and nothing is lost."""
from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest

from runtime.memory import mapped_files, page_out_weight_files
from runtime.types import Turn

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_PAGEOUT and /proc are Linux's")


def resident_kib(paths: set[str]) -> int:
    """Resident KiB of this process's mappings of the given files (/proc/self/smaps)."""
    total, current = 0, None
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as smaps:
        for line in smaps:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                current = parts[5] if len(parts) > 5 else None
            elif parts[0] == "Rss:" and current in paths:
                total += int(parts[1])
    return total


def test_mapped_files_finds_weight_files_under_the_folders_only(tmp_path):
    maps = tmp_path / "maps"
    inside, outside = tmp_path / "export" / "model.bin", "/elsewhere/other.bin"
    maps.write_text(
        f"7f0000000000-7f0000100000 r--p 00000000 08:01 1 {inside}\n"
        f"7f0000100000-7f0000200000 r--p 00000000 08:01 2 {outside}\n"
        f"7f0000200000-7f0000300000 r--p 00000000 08:01 3 {tmp_path / 'export' / 'model.xml'}\n"
        "7f0000300000-7f0000400000 rw-p 00000000 00:00 0 \n")
    found = mapped_files([str(tmp_path / "export")], str(maps))
    assert found == [(0x7F0000000000, 0x7F0000100000, str(inside))]


def test_page_out_drops_resident_pages_and_keeps_the_data(tmp_path):
    path = tmp_path / "weights.bin"
    data = np.random.default_rng(0).integers(0, 255, 32 << 20, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = np.frombuffer(mapped, dtype=np.uint8)
        assert int(view[::4096].sum()) >= 0  # touch every page
        before = resident_kib({str(path)})
        assert before > 30 << 10  # ~32 MiB resident
        assert page_out_weight_files([str(tmp_path)]) >= 32 << 20
        after = resident_kib({str(path)})
        assert after < before / 4, (before, after)
        assert np.array_equal(view, data)  # read back from the file, unchanged
        del view


def test_engine_holds_its_weight_files_paged_out_after_load(model_cache):
    """After the warm-up the plugin works from its repacked copy: the mapped files are not resident."""
    from model_fixtures import make_engine

    engine = make_engine(model_cache, precision="int8", ov_cache_dir="")
    try:
        folders = [str(engine.settings.export_dir), engine.settings.compiled_cache_dir]
        paths = {p for _, _, p in mapped_files(folders)}
        assert paths, "the engine maps its weight files (IR .bin or cached .blob)"
        mapped_kib = sum(end - start for start, end, _ in mapped_files(folders)) >> 10
        assert resident_kib(paths) < mapped_kib / 4, (resident_kib(paths), mapped_kib)
        answer = engine.chat([Turn("user", "Hello")])
        assert answer.completion_tokens > 0
    finally:
        engine.close()


def test_kv_restored_into_the_plugin_is_not_kept_twice(model_cache):
    """The CPU plugin keeps the last f32 tensor given to each KV state: StateWriter hands its pages back, so
    restoring a prefix costs the plugin's u8 copy (a quarter of the f32 size), and the KV reads back intact."""
    import psutil
    from model_fixtures import runtime_settings

    from runtime.backends.base import KVSnapshot
    from runtime.backends.openvino_backend import OpenVINOBackend

    settings = runtime_settings(model_cache, kv_cache_precision="u8", batch_decode=False)
    backend = OpenVINOBackend(settings.export_dir, settings)
    seq = backend.new_sequence()
    seq.forward(np.zeros((4, backend.hidden_size), dtype=np.float32))
    shapes = {s.name: s.state.data.shape for s in seq.request.query_state()}  # (1, heads, 4, head_dim)
    per_position = sum(h * d for _, h, _, d in shapes.values()) * 4  # f32 bytes
    n = (64 << 20) // per_position  # 64 MiB of f32 KV
    rng = np.random.default_rng(0)
    data = {name: rng.standard_normal((1, h, n, d)).astype(np.float32) for name, (_, h, _, d) in shapes.items()}
    process = psutil.Process()
    before = process.memory_info().rss
    seq.restore(KVSnapshot(n, data, 0), n)
    grown = process.memory_info().rss - before
    assert grown < 32 << 20, f"restoring 64 MiB of f32 KV kept {grown >> 20} MiB resident"
    back = seq.snapshot()
    name = next(iter(shapes))
    assert back.length == n and np.abs(back.data[name].astype(np.float32) - data[name]).max() < 0.1
