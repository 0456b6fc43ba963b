"""`python -m bench.worker`: load one configuration in this (fresh) process, optionally run the workloads,
and write the result as JSON. The parent sets the environment (BACKEND, EXPORT_PRECISION, OV_CACHE_DIR...).

Progress goes to stderr; peak memory is this process's own maximum resident set (getrusage).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path


def _progress(config: str):
    def say(message: str) -> None:
        print(f"  [{config}] {message}", file=sys.stderr, flush=True)
    return say


def peak_rss_gb() -> float:
    """This process's peak resident set size in GB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def process_age_s() -> float:
    """Seconds since this process started (interpreter start-up and imports included)."""
    try:
        import psutil
        return time.time() - psutil.Process().create_time()
    except ImportError:
        return float("nan")


def make_subject(backend: str, export_dir: Path):
    """The baseline for backend 'transformers', else our engine (configured from the environment)."""
    from bench.subjects import EngineSubject, TransformersSubject, native_dir_of

    if backend == "transformers":
        return TransformersSubject(native_dir_of(export_dir))
    return EngineSubject()


def summarise(samples: dict) -> dict:
    """Medians of the samples under the results.json names."""
    from bench.subjects import median

    names = {"ttft_1tile_s": "ttft_1tile_s", "ttft_3tile_s": "ttft_3tile_s", "ttft_turn2_s": "ttft_turn2_s",
             "ttft_prepared_1tile_s": "ttft_prepared_1tile_s", "ttft_prepared_3tile_s": "ttft_prepared_3tile_s",
             "decode_tok_s": "decode_tok_s_decode", "decode_tok_s_1tile": "decode_tok_s_1tile",
             "prompt_tokens_1tile": "prompt_tokens_1tile", "prompt_tokens_3tile": "prompt_tokens_3tile",
             "prompt_tokens_turn2": "prompt_tokens_turn2", "prompt_tokens_decode": "prompt_tokens_decode",
             "prompt_tokens_prepared_1tile": "prompt_tokens_prepared_1tile",
             "prompt_tokens_prepared_3tile": "prompt_tokens_prepared_3tile",
             "cached_tokens_turn2": "cached_tokens_turn2", "cached_tokens_prepared_1tile": "cached_tokens_prepared_1tile",
             "cached_tokens_prepared_3tile": "cached_tokens_prepared_3tile",
             "vision_1tile_s": "vision_s_1tile", "vision_3tile_s": "vision_s_3tile"}
    return {out: median(samples.get(key, [])) for out, key in names.items()}


def main(argv=None) -> int:
    """Load, maybe run the workloads, write JSON to --out."""
    p = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--export-dir", required=True, type=Path)
    p.add_argument("--mode", choices=("load", "full"), default="full")
    p.add_argument("--images", type=Path, help="folder of the benchmark PNGs (mode full)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    say = _progress(args.config)
    if args.backend != "transformers":
        from runtime.memory import tune_malloc

        tune_malloc()  # as `python -m webapp` does: the serving process is what is measured
    subject = make_subject(args.backend, args.export_dir)
    t0 = time.perf_counter()
    subject.load()
    result = {"load_s": time.perf_counter() - t0, "process_to_ready_s": process_age_s(),
              "peak_rss_load_gb": peak_rss_gb(), "info": subject.info, "loadavg_start": os.getloadavg()}
    say(f"ready in {result['load_s']:.1f} s ({result['process_to_ready_s']:.1f} s since process start), "
        f"RSS {result['peak_rss_load_gb']:.2f} GB")
    if args.mode == "full":
        from PIL import Image

        from bench.workloads import run_all

        images = {k: Image.open(args.images / name).convert("RGB")
                  for k, name in (("square", "square_448.png"), ("wide", "wide_800x400.png"))}
        samples = run_all(subject, images, args.repeats, say)
        result.update(summarise(samples), samples=samples)
    result.update(peak_rss_gb=peak_rss_gb(), loadavg_end=os.getloadavg())
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
