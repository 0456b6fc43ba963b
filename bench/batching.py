"""`python -m bench.batching`: the ceiling of batched decode for concurrent clients on this CPU.

The served engine batches the decode steps of generations running at once (runtime/backends/ov_batch.py), with
joins, leaves and holes to pay for. This measures the language model of an export alone, B sequences advancing in lockstep through one infer request (batch B of
the stateful model), after a ~300-token prompt each: total tokens/s against B = 1. A step reads the weights
once whatever B is, so the gain is how far decode is from compute-bound. Prints a markdown table and writes
bench/batching.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PROMPT = 300  # tokens already in the KV cache of every sequence
STEPS = 32  # timed decode steps per batch size (after 4 untimed)


def step_seconds(lm, batch: int, hidden: int) -> float:
    """Median seconds of one decode step of `batch` sequences after a PROMPT-token prefill."""
    from runtime.backends.openvino_backend import lm_feed

    request = lm.create_infer_request()
    rng = np.random.default_rng(batch)

    def run(tokens: int, past: int) -> None:
        request.infer(lm_feed((rng.standard_normal((batch, tokens, hidden)) * 0.02).astype(np.float32), past))

    run(PROMPT, 0)
    times = []
    for i in range(STEPS + 4):
        t0 = time.perf_counter()
        run(1, PROMPT + i)
        if i >= 4:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    """Time batch sizes 1, 2, 4 on one export; print and write the table."""
    p = argparse.ArgumentParser(prog="python -m bench.batching", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.environ.get("BENCH_MODEL", "builtin:random-1b"))
    p.add_argument("--cache-dir", default=os.environ.get("HF_CACHE_DIR") or "data/model_cache")
    p.add_argument("--precision", default="int8", help="export to time (default int8, the served one)")
    p.add_argument("--dynamic-quant-group", type=int, default=128, help="as OV_DYNAMIC_QUANT_GROUP (128)")
    p.add_argument("--out", type=Path, default=HERE / "batching.md")
    args = p.parse_args(argv)
    from runtime.backends.openvino_backend import OpenVINOBackend
    from runtime.errors import ArtifactsMissing
    from runtime.settings import RuntimeSettings

    # The language model compiled exactly as the engine serves it (KV and compute precisions from the
    # environment, as `make run` reads them), the compiled-model cache off so nothing is written.
    settings = RuntimeSettings.from_env(model_name=args.model, cache_dir=args.cache_dir, precision=args.precision,
                                        dynamic_quant_group=args.dynamic_quant_group, ov_cache_dir="off")
    try:
        backend = OpenVINOBackend(settings.export_dir, settings)
    except ArtifactsMissing:
        print(f"no export in {settings.export_dir}: run `python -m export --model {args.model} "
              f"--precision {args.precision}`", file=sys.stderr)
        return 1
    rows, base = [], None
    for batch in (1, 2, 4):
        secs = step_seconds(backend.lm, batch, backend.hidden_size)
        base = base or batch / secs
        rows.append(f"| {batch} | {secs * 1e3:.1f} | {batch / secs:.1f} | {batch / secs / base:.2f}x |")
        print(rows[-1], flush=True)
    lines = [f"Batched decode, `{args.model}` {args.precision} language model (int8 activations in groups of "
             f"{args.dynamic_quant_group}, {settings.kv_cache_precision} KV), {os.cpu_count()} cores, after a {PROMPT}-token prompt per "
             f"sequence; median of {STEPS} steps (`python -m bench.batching`):", "",
             "| sequences in the batch | ms per step | total tokens/s | vs one sequence |",
             "|---|---|---|---|", *rows, ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
