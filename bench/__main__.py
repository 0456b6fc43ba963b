"""`python -m bench`: build the exports if needed, measure this machine, run every configuration, report.

Every flag also reads an environment variable (BENCH_*); MODEL_NAME and HF_CACHE_DIR as everywhere else.
Results of configurations not run this time are kept from the previous bench/results.json (--fresh drops them).
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

from bench import configs as cfgs
from bench.configs import Config

HERE = Path(__file__).resolve().parent
RANDOM_MODEL = "builtin:random-1b"
CHILD_TIMEOUT_S = 3 * 3600


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line flags, each defaulting to its environment variable."""
    e = os.environ.get
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="configs: " + ", ".join(c.name for c in cfgs.CONFIGS))
    p.add_argument("--configs", default=e("BENCH_CONFIGS"),
                   help="BENCH_CONFIGS: comma-separated config names, or 'all' (default: the default set)")
    p.add_argument("--repeats", type=int, default=int(e("BENCH_REPEATS") or 3),
                   help="BENCH_REPEATS: timed rounds per workload, median reported (default 3)")
    p.add_argument("--quick", action="store_true", default=e("BENCH_QUICK", "") in ("1", "true", "yes"),
                   help="BENCH_QUICK: 1 repeat, the baseline and OpenVINO int8 / int4 only")
    p.add_argument("--model", default=e("BENCH_MODEL"),
                   help=f"BENCH_MODEL: checkpoint to time (default: MODEL_NAME when it is in the cache, "
                        f"else {RANDOM_MODEL}, random weights with the exact configuration)")
    p.add_argument("--cache-dir", default=e("HF_CACHE_DIR"), help="HF_CACHE_DIR: where the exports live")
    p.add_argument("--out-dir", type=Path, default=Path(e("BENCH_OUT_DIR") or HERE),
                   help="BENCH_OUT_DIR: where results.json / .md / .png go (default bench/)")
    p.add_argument("--port", type=int, default=int(e("BENCH_PORT") or 7871), help="BENCH_PORT: web app port")
    p.add_argument("--no-server", action="store_true", default=e("BENCH_NO_SERVER", "") in ("1", "true", "yes"),
                   help="BENCH_NO_SERVER: skip the 4-client HTTP workload")
    p.add_argument("--quiet-wait", type=float, default=float(e("BENCH_QUIET_WAIT_S") or 300),
                   help="BENCH_QUIET_WAIT_S: before each process, wait up to this long for other processes "
                        "to leave the CPU idle (default 300)")
    p.add_argument("--nice", type=int, default=int(e("BENCH_NICE") or 0),
                   help="BENCH_NICE: niceness of the measured processes; negative (root only) shields them "
                        "from other work on a shared machine (default 0)")
    p.add_argument("--fresh", action="store_true", help="forget rows of an earlier results.json")
    p.add_argument("--report-only", action="store_true", help="rewrite results.md / .png from results.json")
    p.add_argument("--no-readme", action="store_true", default=e("BENCH_NO_README", "") in ("1", "true", "yes"),
                   help="BENCH_NO_README: leave the README's performance section alone (default: rewrite it, "
                        "between its bench markers, when the results are written to bench/)")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = 1
    return args


def choose_model(args) -> str:
    """The real checkpoint when MODEL_NAME (or --model) is already in the cache, else the random one."""
    if args.model:
        return args.model
    name = os.environ.get("MODEL_NAME")
    if not name or name.startswith("builtin:"):
        return name or RANDOM_MODEL
    from export.settings import ExportSettings
    from export.source import find_local

    settings = ExportSettings.from_env(model_name=name, cache_dir=args.cache_dir)
    return name if find_local(settings) is not None else RANDOM_MODEL


def ensure_exports(model: str, cache: str, selected: list[Config]) -> dict[str, str]:
    """Run `python -m export` for each needed precision (it skips finished work); {precision: error}."""
    needed: dict[str, set] = {}
    for c in selected:
        needed.setdefault(c.precision, set()).update(c.formats.split(","))
    failed = {}
    for precision, formats in sorted(needed.items()):
        cmd = [sys.executable, "-m", "export", "--model", model, "--cache-dir", cache, "--precision", precision,
               "--formats", ",".join(sorted(formats))]
        if subprocess.run(cmd + ["--check"], capture_output=True).returncode == 0:
            continue
        print(f"bench: exporting {model} at {precision} ({','.join(sorted(formats))}); minutes, once", flush=True)
        if subprocess.run(cmd).returncode != 0:
            failed[precision] = "export failed"
    return failed


def wait_quiet(max_wait_s: float, busy_cores: float = 0.5) -> float:
    """Wait (up to max_wait_s) until other processes keep fewer than busy_cores cores busy; returns the
    last reading. Other people's test runs on a 2-core machine would otherwise skew every figure."""
    import psutil

    t0, shown = time.perf_counter(), False
    while True:
        others = psutil.cpu_percent(interval=3) / 100 * (os.cpu_count() or 1)
        if others < busy_cores or time.perf_counter() - t0 > max_wait_s:
            return others
        if not shown:
            print(f"bench: other processes keep {others:.1f} cores busy; waiting up to {max_wait_s:.0f} s "
                  "for a quieter machine", flush=True)
            shown = True


def renice(n: int):
    """A preexec_fn putting a child in its own session (so its own scheduler autogroup) at niceness n, or
    None for 0. With autogroups, a plain nice only ranks processes inside one group; other people's work in
    other groups would still take half the cores. Negative values need root."""
    def shield() -> None:
        os.setsid()
        try:
            Path("/proc/self/autogroup").write_text(str(n))
        except OSError:
            pass
        os.nice(n)
    return shield if n else None


def run_child(cmd: list[str], env: dict, nice: int = 0, timeout: float = CHILD_TIMEOUT_S) -> dict:
    """Run a child, waiting with wait4 for its own rusage; also how many cores others kept busy meanwhile."""
    import psutil

    def busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    b0, t0 = busy(), time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, preexec_fn=renice(nice))
    deadline = t0 + timeout
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
            time.sleep(0.2)
    except BaseException:  # Ctrl-C: the child has its own session when shielded, so stop it here
        proc.kill()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    child_cpu = usage.ru_utime + usage.ru_stime
    return {"rc": proc.returncode, "wall_s": wall, "child_peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,
            "others_cores": max(0.0, (busy() - b0 - child_cpu) / wall)}


def run_worker(cfg: Config, mode: str, env: dict, export_dir: Path, args, images: Path) -> dict:
    """One worker process for cfg in mode 'load' or 'full'; its JSON result plus the parent's view."""
    out = HERE / "cache" / f"{cfg.name}.{mode}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.worker", "--config", cfg.name, "--backend", cfg.backend,
           "--export-dir", str(export_dir), "--mode", mode, "--images", str(images),
           "--repeats", str(args.repeats), "--out", str(out)]
    wait_quiet(args.quiet_wait)
    child = run_child(cmd, env, args.nice)
    if child["rc"] != 0 or not out.is_file():
        return {"error": f"worker ({mode}) exited with status {child['rc']}", **child}
    return {**json.loads(out.read_text()), **child}


def inference_label(cfg: Config, info: dict) -> str:
    """'bf16 (default)', 'f32', ...: the precision the engine computes in, as the backend reports it."""
    raw = str(info.get("inference_precision", "fp32" if cfg.backend != "openvino" else cfg.inference_precision))
    names = {"bfloat16": "bf16", "float32": "f32", "f32": "f32", "bf16": "bf16", "float16": "f16", "f16": "f16"}
    label = next((v for k, v in names.items() if k in raw.lower()), raw)
    if cfg.backend != "openvino":
        return label
    label = f"{label} (default)" if not cfg.inference_precision else label
    group = info.get("dynamic_quant_group")  # activations quantised on the fly for int8/int4 weights
    if group is not None and cfg.precision in ("int8", "int4"):
        label += ", int8 act. /" + str(group) if int(group) else ", exact act."
    return label


def run_config(cfg: Config, model: str, cache: str, args, images: dict) -> dict:
    """Both cold starts, the workloads and the HTTP workload of one config; a results row (raw)."""
    from runtime.settings import artifact_dir

    export_dir = artifact_dir(cache, model, cfg.precision)
    row = {"config": cfg.name, "backend": cfg.backend, "precision": cfg.weights,
           "export": cfg.precision, "note": cfg.note}
    if "onnx" in cfg.formats and not (export_dir / "onnx").is_dir():
        return {**row, "error": f"no ONNX export in {export_dir}"}
    ov_cache = HERE / "cache" / "ov_cache" / cfg.name
    env = dict(os.environ, MODEL_NAME=model, HF_CACHE_DIR=cache, OV_CACHE_DIR=str(ov_cache), **cfg.runtime_env())
    if not cfg.server_only:
        shutil.rmtree(ov_cache, ignore_errors=True)  # the first start compiles; the second reads the cache
        first = run_worker(cfg, "load", env, export_dir, args, images["dir"])
        if "error" in first:
            return {**row, "error": first["error"]}
        full = run_worker(cfg, "full", env, export_dir, args, images["dir"])
        if "error" in full:
            return {**row, "load_s": first["load_s"], "error": full["error"]}
        row.update({k: v for k, v in full.items() if k not in ("load_s", "peak_rss_gb")})
        row.update(load_s=first["load_s"], load_cached_s=full["load_s"], peak_rss_gb=full["child_peak_rss_gb"],
                   process_to_ready_s=first["process_to_ready_s"],
                   process_to_ready_cached_s=full["process_to_ready_s"],
                   inference_precision=inference_label(cfg, full["info"]))
    else:
        row["inference_precision"] = cfg.inference_precision or "default"
    if cfg.server and not args.no_server:
        from bench import server

        log_path = HERE / "cache" / f"{cfg.name}.webapp.log"
        wait_quiet(args.quiet_wait)
        paths = [images[f"client{i}"] for i in range(server.CLIENTS)]
        row.update(server.run({k: env[k] for k in ("MODEL_NAME", "HF_CACHE_DIR", "OV_CACHE_DIR",
                                                   *cfg.runtime_env())}, paths, args.port, log_path,
                              lambda m: print(f"  [{cfg.name}] {m}", flush=True), renice(args.nice)))
    return row


def load_previous(path: Path) -> dict:
    """Rows of an earlier results.json by config name."""
    try:
        return {r["config"]: r for r in json.loads(path.read_text())["rows"]}
    except (OSError, ValueError, KeyError):
        return {}


def main(argv=None) -> int:
    """Run the benchmark; 0 when every selected config produced a row."""
    from bench import machine, report
    from bench.workloads import write_images
    from runtime.settings import default_cache_dir

    args = parse_args(argv)
    results_path = args.out_dir / "results.json"
    cache = str(Path(args.cache_dir or default_cache_dir()).resolve())
    if args.report_only:  # recompute floors and ratios from the stored figures, rewrite the files
        old = json.loads(results_path.read_text())
        raw = [dict(r, samples=old.get("samples", {}).get(r["config"])) for r in old["rows"]]
        results = report.build(old["machine"], old["model"], cache, raw)
        results["created"] = old["created"]
        report.write_all(results, args.out_dir)
        write_readmes(results, args)
        print(report.table(results))
        return 0
    try:
        selected = cfgs.select(args.configs, args.quick)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    model = choose_model(args)
    (HERE / "cache").mkdir(exist_ok=True)
    print(f"bench: model {model}, cache {cache}, configs {', '.join(c.name for c in selected)}, "
          f"{args.repeats} repeat(s)", flush=True)
    images = {**write_images(HERE / "cache" / "images"), "dir": HERE / "cache" / "images"}
    failed = ensure_exports(model, cache, selected)
    print("bench: measuring this machine's ceilings (fp32 GEMM, memory read)", flush=True)
    wait_quiet(args.quiet_wait)
    ceilings = machine.measure(renice(args.nice))
    print("bench: " + json.dumps(ceilings), flush=True)
    rows = {} if args.fresh else load_previous(results_path)
    for cfg in selected:
        print(f"bench: --- {cfg.name}: {cfg.note}", flush=True)
        if cfg.precision in failed:
            rows[cfg.name] = {"config": cfg.name, "backend": cfg.backend, "precision": cfg.weights,
                              "error": failed[cfg.precision]}
        else:
            rows[cfg.name] = run_config(cfg, model, cache, args, images)
        results = report.build(ceilings, model, cache, [rows[c.name] for c in cfgs.CONFIGS if c.name in rows])
        report.write_all(results, args.out_dir)
        print(report.table(results), flush=True)
    write_readmes(results, args)
    return 0 if all("error" not in rows[c.name] for c in selected) else 1


def write_readmes(results: dict, args) -> None:
    """The READMEs' performance sections, from the results (only for results written to bench/ itself)."""
    from bench import report

    if args.no_readme or args.out_dir.resolve() != HERE:
        return
    for path in report.update_readmes(report.markdown(results), [HERE.parent / "README.md",
                                                                  HERE.parent / "README.ru.md"]):
        print(f"bench: updated the performance section of {path.name}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
