"""`python -m bench.export`: wall time and peak RSS of `python -m export` on the real-size configuration.

For each precision, `python -m export` runs in a fresh process with a fresh cache folder, so nothing is
skipped as already done. The random checkpoint (builtin:random-1b: the exact InternVL3.5-1B configuration,
bf16 like the published weights) is built once beforehand, timed on its own, and hard-linked into each
cache folder: the figures are those of the export alone. Peak RSS is wait4's ru_maxrss of the export
process (its largest process, had it started any). Also recorded: how many cores other processes kept busy
meanwhile, since on a shared machine they stretch the wall time but not the CPU time. Prints a markdown
table and this machine's block (bench/machine.py) and writes bench/export.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL = "builtin:random-1b"
TIMEOUT_S = 2 * 3600


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line flags, each defaulting to its environment variable."""
    e = os.environ.get
    p = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precisions", default=e("BENCH_EXPORT_PRECISIONS") or "int8,int4,fp16",
                   help="BENCH_EXPORT_PRECISIONS: comma-separated export precisions (default int8,int4,fp16)")
    p.add_argument("--model", default=e("BENCH_EXPORT_MODEL") or MODEL,
                   help=f"BENCH_EXPORT_MODEL: a builtin checkpoint (default {MODEL})")
    p.add_argument("--work-dir", type=Path, default=Path(e("BENCH_EXPORT_WORK_DIR") or HERE / "cache" / "export"),
                   help="BENCH_EXPORT_WORK_DIR: the checkpoint and each run's cache folder "
                        "(default bench/cache/export)")
    p.add_argument("--repo", type=Path, default=Path(e("BENCH_EXPORT_REPO") or ROOT),
                   help="BENCH_EXPORT_REPO: the checkout whose `python -m export` runs (default this one; another, "
                        "such as a worktree of an earlier commit, gives the figures to compare with)")
    p.add_argument("--out", type=Path, default=Path(e("BENCH_EXPORT_OUT") or HERE / "export.md"),
                   help="BENCH_EXPORT_OUT: markdown output (default bench/export.md)")
    p.add_argument("--keep", action="store_true", default=e("BENCH_EXPORT_KEEP", "") in ("1", "true", "yes"),
                   help="BENCH_EXPORT_KEEP: keep each run's cache folder (default: removed once measured)")
    return p.parse_args(argv)


def run_measured(cmd: list[str], env: dict, cwd: Path, log: Path) -> dict:
    """Run cmd to its end, its output in log; its exit code, wall and CPU seconds, peak RSS, and the cores
    others kept busy meanwhile."""
    import psutil

    def busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    log.parent.mkdir(parents=True, exist_ok=True)
    b0, t0 = busy(), time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    deadline = t0 + TIMEOUT_S
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
        time.sleep(0.2)
    if status:
        print(f"bench: {' '.join(cmd[:3])} ... failed; its output is in {log}", flush=True)
    wall = time.perf_counter() - t0
    cpu = usage.ru_utime + usage.ru_stime
    return {"rc": os.waitstatus_to_exitcode(status), "wall_s": wall, "cpu_s": cpu,
            "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9, "others_cores": max(0.0, (busy() - b0 - cpu) / wall)}


def build_checkpoint(model: str, work: Path, env: dict, repo: Path) -> tuple[Path, dict | None]:
    """The model's native folder under work/checkpoint (built unless already there); the build's figures."""
    from runtime.settings import model_slug

    folder = work / "checkpoint" / "builtin" / model_slug(model)
    if (folder / "config.json").is_file():
        return folder, None
    code = ("import sys; from export.settings import ExportSettings; from export.source import resolve_source; "
            "resolve_source(ExportSettings(model_name=sys.argv[1], cache_dir=sys.argv[2]))")
    print(f"bench: building the checkpoint {model} (once)", flush=True)
    figures = run_measured([sys.executable, "-c", code, model, str(work / "checkpoint")], env, repo,
                           work / "checkpoint.log")
    if figures["rc"] != 0:
        raise SystemExit(f"bench: building {model} failed with status {figures['rc']}")
    return folder, figures


def export_once(model: str, precision: str, checkpoint: Path, work: Path, env: dict, repo: Path,
                keep: bool) -> dict:
    """One `python -m export` in a fresh cache folder holding only the checkpoint; its figures and size."""
    from runtime.settings import artifact_dir

    cache = work / f"run-{precision}"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.copytree(checkpoint, cache / "builtin" / checkpoint.name, copy_function=_link_or_copy)
    cmd = [sys.executable, "-m", "export", "--model", model, "--precision", precision, "--cache-dir", str(cache)]
    print(f"bench: exporting {model} at {precision}", flush=True)
    row = {"precision": precision, **run_measured(cmd, env, repo, work / f"export-{precision}.log")}
    out = artifact_dir(str(cache), model, precision)
    row["size_gb"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e9 if out.is_dir() else None
    if not keep:
        shutil.rmtree(cache, ignore_errors=True)
    return row


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link a checkpoint file (2 GB copied per run would only measure the disk), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def render(results: dict) -> str:
    """The markdown: the table, the checkpoint build and the machine."""
    m = results["machine"]
    lines = [f"Export of `{results['model']}` (`python -m export` in a fresh process and cache folder per "
             f"precision; `python -m bench.export`, {results['created']}):", "",
             "| precision | wall s | CPU s | peak RSS GB | export size on disk GB | other processes' load (cores) |",
             "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        if r["rc"] != 0:
            lines.append(f"| {r['precision']} | failed (exit status {r['rc']}) | | | | |")
            continue
        lines.append(f"| {r['precision']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['peak_rss_gb']:.2f} | "
                     f"{r['size_gb']:.2f} | {r['others_cores']:.1f} |")
    build = results.get("checkpoint_build")
    if build:
        lines += ["", f"Building the random checkpoint (once, not in the figures above): {build['wall_s']:.0f} s, "
                      f"peak RSS {build['peak_rss_gb']:.2f} GB."]
    ceilings = (f"; fp32 GEMM {m['gemm_fp32_gflops']} GFLOP/s, memory read {m['mem_read_gbs']} GB/s on "
                f"{m['threads']} threads" if "gemm_fp32_gflops" in m else "")
    lines += ["", f"Machine: {m.get('cpu')}, {m.get('cores')} cores ({', '.join(m.get('isa', []))}), "
                  f"{m.get('ram_gb')} GB RAM{ceilings}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Build the checkpoint once, export it at each precision, print and write the table."""
    from export.builtin import is_builtin

    args = parse_args(argv)
    if not is_builtin(args.model):
        print(f"bench: {args.model} is not a builtin checkpoint (builtin:random-1b, builtin:tiny-random)",
              file=sys.stderr)
        return 2
    work = args.work_dir.resolve()
    repo = args.repo.resolve()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    checkpoint, build = build_checkpoint(args.model, work, env, repo)
    results = {"model": args.model, "created": time.strftime("%Y-%m-%d %H:%M"), "rows": [],
               "checkpoint_build": build}
    for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
        results["rows"].append(export_once(args.model, precision, checkpoint, work, env, repo, args.keep))
        print("bench: " + json.dumps(results["rows"][-1]), flush=True)
        (work / "results.json").write_text(json.dumps(results, indent=2))  # kept should a later step fail
    results["machine"] = measure_machine()
    text = render(results)
    args.out.write_text(text)
    print(text)
    return 0 if all(r["rc"] == 0 for r in results["rows"]) else 1


def measure_machine() -> dict:
    """bench.machine's ceilings, or only the CPU facts when the measurement fails."""
    from bench import machine

    print("bench: measuring this machine's ceilings (fp32 GEMM, memory read)", flush=True)
    try:
        ceilings = machine.measure()
    except (subprocess.SubprocessError, OSError, ValueError) as exc:
        print(f"bench: the ceilings could not be measured ({type(exc).__name__})", flush=True)
        return machine.cpu_facts()
    print("bench: " + json.dumps(ceilings), flush=True)
    return ceilings


if __name__ == "__main__":
    sys.exit(main())
