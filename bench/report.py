"""Results: floors and ratios per row, the printed table, results.json, results.md and results.png."""
from __future__ import annotations

import json
import time
from pathlib import Path

from bench import machine
from bench.configs import BASELINE, DEFAULT

# figure -> (column title, unit, "low" when smaller is better, target, target direction)
FIGURES = {
    "load_s": ("cold start", "s", "low", None),
    "load_cached_s": ("cold start, cached", "s", "low", 5.0),
    "ttft_1tile_s": ("TTFT 1 tile", "s", "low", 6.0),
    "ttft_3tile_s": ("TTFT 3 tiles", "s", "low", None),
    "ttft_turn2_s": ("TTFT 2nd turn", "s", "low", 1.0),
    "ttft_prepared_1tile_s": ("TTFT prepared 1 tile", "s", "low", 1.0),
    "ttft_prepared_3tile_s": ("TTFT prepared 3 tiles", "s", "low", 1.5),
    "decode_tok_s": ("decode", "tok/s", "high", 30.0),
    "peak_rss_gb": ("peak RSS", "GB", "low", 1.5),
    "concurrent_tok_s": ("4 clients", "tok/s", "high", None),
}
REQUIRED = ("load_s", "ttft_1tile_s", "ttft_3tile_s", "ttft_turn2_s", "ttft_prepared_1tile_s",
            "ttft_prepared_3tile_s", "decode_tok_s", "peak_rss_gb", "concurrent_tok_s")
CONCURRENCY_TARGET = 1.3  # 4 clients >= 1.3x one client's throughput
IMAGE_PREFIX = 6  # tokens around one image's <IMG_CONTEXT> run that a prepared prefix also holds


def lm_weight_bytes(row: dict, cache: str, model: str) -> float:
    """Bytes of language-model weights one decode step reads (lm_head included) for this row."""
    from runtime.settings import artifact_dir

    folder = artifact_dir(cache, model, row.get("export", "int8"))
    if row["backend"] == "openvino" and (folder / "openvino_language_model.bin").is_file():
        return float((folder / "openvino_language_model.bin").stat().st_size)
    try:  # fp32 parameters of the text model and lm_head, from the exported configuration
        t = json.loads((folder / "hf_config.json").read_text())["text_config"]
    except (OSError, ValueError, KeyError):
        return 2.38e9
    h, hd, inter = t["hidden_size"], t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"], \
        t["intermediate_size"]
    q, kv = t["num_attention_heads"] * hd, t["num_key_value_heads"] * hd
    per_layer = h * q * 2 + h * kv * 2 + 3 * h * inter
    return 4.0 * (t["num_hidden_layers"] * per_layer + t["vocab_size"] * h)


def floors(row: dict, ceilings: dict, lm_bytes: float) -> dict:
    """The least each time can be (seconds) and the most decode can reach (tok/s) on this machine."""
    def prefill(tokens, tiles):
        return machine.prefill_floor(ceilings, tokens, tiles, lm_bytes) if tokens else None

    p1, p3, p2 = row.get("prompt_tokens_1tile"), row.get("prompt_tokens_3tile"), row.get("prompt_tokens_turn2")
    q1, q3 = row.get("prompt_tokens_prepared_1tile"), row.get("prompt_tokens_prepared_3tile")
    new2 = p2 - p1 - 64 if p1 and p2 else None  # a follow-up needs only its own tokens prefilled
    return {"ttft_1tile_s": prefill(p1, 1), "ttft_3tile_s": prefill(p3, 3), "ttft_turn2_s": prefill(new2, 0),
            "ttft_prepared_1tile_s": prefill(q1 and q1 - 256 - IMAGE_PREFIX, 0),
            "ttft_prepared_3tile_s": prefill(q3 and q3 - 768 - IMAGE_PREFIX, 0),
            "decode_tok_s": machine.decode_ceiling(ceilings, lm_bytes), "lm_weight_gb": lm_bytes / 1e9}


def _ratio(value, ref, higher_better: bool):
    if value is None or ref is None or value == 0 or ref == 0:
        return None
    return value / ref if higher_better else ref / value


def build(ceilings: dict, model: str, cache: str, raw_rows: list[dict]) -> dict:
    """results.json: machine, baseline, default, rows with floors and ratios."""
    base = next((r for r in raw_rows if r["config"] == BASELINE and "error" not in r), None)
    rows = []
    for raw in raw_rows:
        row = {k: v for k, v in raw.items() if k != "samples"}
        for key in REQUIRED:  # every row carries every documented figure, None where not measured
            row.setdefault(key, None)
        if "error" not in raw and raw.get("prompt_tokens_1tile"):
            row["floors"] = f = floors(raw, ceilings, lm_weight_bytes(raw, cache, model))
            # times: how many times the floor it takes; decode: the fraction of its ceiling it reaches
            row["vs_floor"] = {k: raw[k] / f[k] if raw.get(k) and f.get(k) else None
                               for k in f if k != "lm_weight_gb"}
        if base is not None:
            row["vs_baseline"] = {k: _ratio(raw.get(k), base.get(k), FIGURES[k][2] == "high") for k in FIGURES
                                  if k != "peak_rss_gb"}
            row["vs_baseline"]["peak_rss_gb"] = _ratio(base.get("peak_rss_gb"), raw.get("peak_rss_gb"), True)
        rows.append(row)
    return {"machine": ceilings, "model": model, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "baseline": BASELINE, "default": DEFAULT, "targets": targets(), "rows": rows,
            "samples": {r["config"]: r.get("samples") for r in raw_rows if r.get("samples")}}


def targets() -> dict:
    """The issue's targets, by figure."""
    out = {k: v[3] for k, v in FIGURES.items() if v[3] is not None}
    out["concurrency_gain"] = CONCURRENCY_TARGET
    return out


def met(key: str, value) -> str:
    """'ok' / 'MISS' against the target of key, '' when there is none."""
    target = targets().get(key)
    if target is None or value is None:
        return ""
    good = value >= target if key in ("decode_tok_s", "concurrency_gain", "concurrent_tok_s") else value <= target
    return "ok" if good else "MISS"


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "n/a"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def table(results: dict) -> str:
    """The plain-text table printed while the benchmark runs."""
    keys = list(FIGURES) + ["concurrency_gain"]
    heads = ["config", "inf.prec"] + [FIGURES[k][0] if k in FIGURES else "4cl/1cl" for k in keys]
    lines = [heads]
    for r in results["rows"]:
        cells = [r["config"], str(r.get("inference_precision", ""))]
        cells += [_fmt(r.get(k)) + ("*" if met(k, r.get(k)) == "MISS" else "") for k in keys]
        if "error" in r:
            cells = [r["config"], "", f"error: {r['error']}"]
        lines.append(cells)
    tgt = targets()
    lines.append(["target", ""] + [_fmt(tgt[k]) if k in tgt else "" for k in keys])
    widths = [max(len(row[i]) for row in lines if i < len(row)) for i in range(len(heads))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in lines]
    return "\n".join(out) + "\n(* = misses its target; times in s, decode and 4 clients in tok/s, RSS in GB)"


def markdown(results: dict) -> str:
    """results.md: absolute figures with targets, then ratios to the baseline and to the floors."""
    from bench.mdtables import render

    return render(results, FIGURES, met, _fmt)


def write_all(results: dict, out_dir: Path) -> None:
    """results.json, results.md and results.png in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (out_dir / "results.md").write_text(markdown(results))
    try:
        from bench.chart import draw
        draw(results, FIGURES, out_dir / "results.png")
    except ImportError as exc:  # matplotlib missing: the tables are still written
        print(f"bench: no chart ({exc}); pip install matplotlib", flush=True)


README_MARKERS = ("<!-- bench:start -->", "<!-- bench:end -->")


def update_readmes(markdown_text: str, readmes: list[Path]) -> list[Path]:
    """Put markdown_text between the bench markers of each README that has them; returns those rewritten."""
    start, end = README_MARKERS
    body = markdown_text.strip()
    if body.startswith("## "):  # the README has its own heading above the markers
        body = body.split("\n", 1)[1].strip()
    done = []
    for path in readmes:
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        if start not in text or end not in text:
            continue
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1]
        path.write_text(f"{head}{start}\n{body}\n{end}{tail}", encoding="utf-8")
        done.append(path)
    return done
