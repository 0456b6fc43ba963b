"""results.md: the markdown the README's performance section takes as it is."""
from __future__ import annotations

ABS_KEYS = ["load_s", "load_cached_s", "ttft_1tile_s", "ttft_3tile_s", "ttft_turn2_s", "ttft_prepared_1tile_s",
            "ttft_prepared_3tile_s", "decode_tok_s", "peak_rss_gb", "concurrent_tok_s"]
FLOOR_KEYS = ["ttft_1tile_s", "ttft_3tile_s", "ttft_turn2_s", "ttft_prepared_1tile_s", "ttft_prepared_3tile_s",
              "decode_tok_s"]


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _head(titles) -> list[str]:
    return [_row(titles), _row(["---"] * len(titles))]


def _machine(results: dict) -> list[str]:
    m = results["machine"]
    bf16 = f"; bf16 GEMM (torch/oneDNN) {m['gemm_bf16_gflops_torch']:.0f} GFLOP/s" if m.get(
        "gemm_bf16_gflops_torch") else ""
    random = "random weights with the exact InternVL3.5-1B configuration (same compute as the real model; " \
             "answers are gibberish)" if results["model"].startswith("builtin:") else f"`{results['model']}`"
    return [f"Model: {random}. Machine: {m.get('cpu')}, {m.get('cores')} cores ({', '.join(m.get('isa', []))}), "
            f"{m.get('ram_gb')} GB RAM. Measured ceilings on {m.get('threads')} threads: fp32 GEMM "
            f"{m['gemm_fp32_gflops']:.0f} GFLOP/s (numpy/OpenBLAS), memory read {m['mem_read_gbs']:.1f} GB/s"
            f"{bf16}. Measured {results['created']}."]


def _absolute(results: dict, figures: dict, met, fmt) -> list[str]:
    titles = ["config", "weights", "inference"] + [f"{figures[k][0]} ({figures[k][1]})" for k in ABS_KEYS]
    out = _head(titles + ["4 clients / 1 client"])
    for r in results["rows"]:
        if "error" in r:
            out.append(_row([f"`{r['config']}`", r.get("precision", ""), "", f"error: {r['error']}"]
                            + [""] * (len(titles) - 3)))
            continue
        cells = [f"`{r['config']}`" + (" (default)" if r["config"] == results["default"] else ""),
                 r.get("precision", ""), r.get("inference_precision", "")]
        for k in ABS_KEYS + ["concurrency_gain"]:
            mark = {"ok": " ✅", "MISS": " ❌"}.get(met(k, r.get(k)), "")
            cells.append(fmt(r.get(k)) + mark)
        out.append(_row(cells))
    tgt = results["targets"]
    out.append(_row(["target", "", ""] + [("≤ " if figures[k][2] == "low" else "≥ ") + fmt(tgt[k])
                                          if k in tgt else "" for k in ABS_KEYS]
                    + [f"≥ {tgt['concurrency_gain']}"]))
    return out


def _vs_baseline(results: dict, figures: dict, fmt) -> list[str]:
    keys = [k for k in ABS_KEYS if k != "concurrent_tok_s"]
    out = _head(["config"] + [figures[k][0] for k in keys])
    for r in results["rows"]:
        vs = r.get("vs_baseline")
        if vs and "error" not in r:
            out.append(_row([f"`{r['config']}`"] + [fmt(vs.get(k)) + "x" if vs.get(k) else "n/a" for k in keys]))
    return out


def _vs_floor(results: dict, figures: dict, fmt) -> list[str]:
    out = _head(["config", "LM weights read per token (GB)"] + [figures[k][0] for k in FLOOR_KEYS])
    for r in results["rows"]:
        f, vs = r.get("floors"), r.get("vs_floor")
        if not f:
            continue
        cells = [f"`{r['config']}`", fmt(f["lm_weight_gb"])]
        for k in FLOOR_KEYS:
            unit = "tok/s" if k == "decode_tok_s" else "s"
            ratio = vs.get(k)
            shown = (f"{ratio:.0%} of" if k == "decode_tok_s" else f"{ratio:.1f}x") if ratio else "n/a"
            cells.append(f"{shown} {fmt(f[k])} {unit}" if f.get(k) else "n/a")
        out.append(_row(cells))
    return out


def _notes(results: dict) -> list[str]:
    noisy = [f"`{r['config']}` ({r['others_cores']:.1f})" for r in results["rows"]
             if (r.get("others_cores") or 0) > 0.3]
    notes = [
        "- Each configuration runs in fresh processes: one start with an empty OpenVINO compiled-model cache "
        "(*cold start*, engine construction to ready), then a second process (*cold start, cached*: reads "
        "CACHE_DIR) that runs the workloads after a warm-up; figures are medians of the timed rounds.",
        "- Every first-turn request uses an image no earlier request sent (no embedding-cache hit); 64 new "
        "tokens, EOS ignored; a ~15-token question; 1 tile = 448x448 photo, 3 tiles = 800x400 photo at "
        "max_tiles=2 (2 tiles + thumbnail). Decode is timed after a ~300-token text prompt.",
        "- *TTFT prepared*: a new image is sent ahead with `Engine.prepare` (what `POST /api/v1/images` "
        "calls: image embeddings and the `<|im_start|>user\\n<img>...</img>\\n` KV prefix are made in the "
        "background), the bench waits until it is ready, then times the first question on it. The baseline "
        "keeps nothing, so for it this is a full request again.",
        "- *4 clients*: four threads against `python -m webapp` (POST /api/v1/chat, 1 tile, 64 tokens), "
        "distinct images; the last column divides it by one client's throughput.",
        "- Floors: TTFT = (0.72 TFLOP per tile + 0.9 GFLOP per prompt token) / the fp32 GEMM ceiling, never less "
        "than reading the LM weights once (follow-ups and prepared images count only the new tokens); decode = "
        "memory read bandwidth / LM weight bytes per token. bf16 compute can beat the fp32 floor.",
        "- Peak RSS is the workload process's own maximum resident set (getrusage) over loading from the "
        "compiled cache and every workload, with the serving process's allocator settings.",
    ]
    if noisy:
        notes.append("- Other processes kept cores busy during: " + ", ".join(noisy)
                     + " (cores, averaged): those rows are slower than a quiet machine would give.")
    return notes


def render(results: dict, figures: dict, met, fmt) -> str:
    """The whole results.md."""
    lines = ["## Performance", "", *_machine(results), "", *_absolute(results, figures, met, fmt), "",
             f"Ratio to the baseline (`{results['baseline']}`; > 1 is better: times faster, tokens/s higher, "
             "memory smaller):", "", *_vs_baseline(results, figures, fmt), "",
             "Against this machine's floors (the time a figure cannot go below, or for decode the tokens/s it "
             "cannot exceed), as multiples of the floor (decode: share of the ceiling):", "",
             *_vs_floor(results, figures, fmt), "", *_notes(results), ""]
    return "\n".join(lines)
