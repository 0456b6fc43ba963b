"""This machine's measured ceilings and the floors they put under each figure.

`python -m bench.machine` prints the ceilings as JSON; `measure()` runs it in a subprocess whose environment
drops OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (so OpenBLAS picks its own kernel for this CPU) and asks for
2 threads, leaving the parent's environment alone.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

VIT_FLOP_PER_TILE = 0.72e12  # InternViT-300M on one 448x448 tile (model-facts.md)
LM_FLOP_PER_TOKEN = 0.9e9  # Qwen3-0.6B prefill, 2 x 0.44 B non-embedding weights
THREADS = 2


def _best(fn, repeats: int) -> float:
    """Shortest wall time of repeats calls of fn (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_gflops(n: int = 3072, repeats: int = 5) -> float:
    """fp32 GEMM throughput of numpy's BLAS (n x n x n), in GFLOP/s."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    return 2 * n**3 / _best(lambda: a @ b, repeats) / 1e9


def mem_read_gbs(mb: int = 1024, repeats: int = 5) -> dict:
    """Memory read bandwidth in GB/s: a BLAS gemv over a large matrix (threaded) and a plain numpy sum."""
    import numpy as np

    rows = mb * 2**20 // 4 // 8192
    a = np.ones((rows, 8192), np.float32)  # (rows, 8192), mb MiB, far larger than any cache
    x = np.ones(8192, np.float32)
    gemv = a.nbytes / _best(lambda: a @ x, repeats) / 1e9
    total = a.nbytes / _best(lambda: a.sum(dtype=np.float32), repeats) / 1e9
    return {"gemv": round(gemv, 1), "sum_1thread": round(total, 1)}


def torch_bf16_gflops(n: int = 3072, repeats: int = 5) -> float | None:
    """bf16 GEMM throughput of torch (oneDNN) on THREADS threads, or None without torch: shows what an
    engine computing in bf16 can reach beyond the fp32 ceiling."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(THREADS)
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    return 2 * n**3 / _best(lambda: a @ b, repeats) / 1e9


def cpu_facts() -> dict:
    """CPU model, core count, memory and the instruction-set extensions that matter here."""
    info = {"cpu": "unknown", "cores": os.cpu_count()}
    try:
        text = open("/proc/cpuinfo").read()
        info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name"))
        flags = set(next(ln for ln in text.splitlines() if ln.startswith("flags")).split())
        info["isa"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
                       if f in flags]
    except (OSError, StopIteration):
        pass
    try:
        import psutil
        info["ram_gb"] = round(psutil.virtual_memory().total / 1e9, 1)
    except ImportError:
        pass
    return info


def main() -> None:
    """Print this machine's ceilings as one JSON object."""
    out = cpu_facts()
    out["threads"] = THREADS
    out["gemm_fp32_gflops"] = round(gemm_gflops(), 1)
    bw = mem_read_gbs()
    out["mem_read_gbs"] = max(bw.values())
    out["mem_read_detail_gbs"] = bw
    bf16 = torch_bf16_gflops()
    if bf16 is not None:
        out["gemm_bf16_gflops_torch"] = round(bf16, 1)
    print(json.dumps(out))


def measure(preexec=None) -> dict:
    """Run main() in a subprocess with OpenBLAS left to detect this CPU and THREADS threads."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env.update(OPENBLAS_NUM_THREADS=str(THREADS), OMP_NUM_THREADS=str(THREADS))
    done = subprocess.run([sys.executable, "-m", "bench.machine"], env=env, capture_output=True, text=True,
                          timeout=600, check=True, preexec_fn=preexec)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- floors (seconds, or tokens/s for decode)


def prefill_floor(machine: dict, new_tokens: int, tiles: int, lm_bytes: float) -> float:
    """Least time to the first token: the FLOPs at the fp32 GEMM ceiling, and never less than reading the
    language model's weights once (which bounds short prefills such as a follow-up question)."""
    flops = VIT_FLOP_PER_TILE * tiles + LM_FLOP_PER_TOKEN * new_tokens
    compute = flops / (machine["gemm_fp32_gflops"] * 1e9)
    return max(compute, lm_bytes / (machine["mem_read_gbs"] * 1e9))


def decode_ceiling(machine: dict, lm_bytes: float) -> float:
    """Most tokens/s a decoder can reach when each token reads all language-model weights once."""
    return machine["mem_read_gbs"] * 1e9 / lm_bytes


if __name__ == "__main__":
    main()
