"""bench.batching on the tiny model: it times batch sizes 1, 2 and 4 and writes its table."""
from __future__ import annotations

import re

from model_fixtures import TINY

from bench import batching


def test_batching_table(model_cache, tmp_path, capsys):
    out = tmp_path / "batching.md"
    assert batching.main(["--model", TINY, "--cache-dir", str(model_cache), "--out", str(out)]) == 0
    rows = re.findall(r"^\| (\d) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|$", out.read_text(), re.M)
    assert [int(r[0]) for r in rows] == [1, 2, 4]
    assert float(rows[0][3]) == 1.0 and all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)
    assert "| 4 |" in capsys.readouterr().out


def test_batching_without_an_export_says_what_to_run(tmp_path, capsys):
    assert batching.main(["--model", TINY, "--cache-dir", str(tmp_path), "--out", str(tmp_path / "b.md")]) == 1
    assert "python -m export" in capsys.readouterr().err
