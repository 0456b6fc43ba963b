"""Soak: many mixed requests against the real server; its resident memory must level off.

    python tests/load/soak.py                      # 1200 requests, 4 clients
    python tests/load/soak.py --requests 3000 --clients 8

The server runs with small bounds on everything it keeps (sessions, grounding downloads, image and KV
caches), so that they fill during the warm-up and the rest of the run shows whether anything else grows.
Writes tests/artifacts/<name>.csv (requests done, seconds, RSS MiB), <name>.png (when matplotlib is
installed) and <name>.json; exits 1 when RSS grew more than --max-growth-mb after the warm-up, or a
request was answered wrongly or lost.
"""
from __future__ import annotations

import argparse
import csv
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, so that `load` imports as a package

from load.clients import Mix, run_clients  # noqa: E402
from load.report import ARTIFACTS, failures, summarise, table, write_json  # noqa: E402
from load.server import ServerProcess, ensure_tiny_export, rss_mb  # noqa: E402

DEFAULT_CACHE = ARTIFACTS / "model_cache"
# Small bounds, so that every store is full well before the warm-up ends. The clients all call from one
# address, so they are one client to the stores: it may fill them whole.
BOUNDED = {"MAX_SESSIONS": 24, "SESSION_STORE_MB": 16, "MAX_RESULTS": 24, "RESULT_STORE_MB": 8,
           "IMAGE_CACHE_MB": 16, "KV_CACHE_MB": 32, "MAX_QUEUE": 8, "RECENT_REQUESTS": 20,
           "CLIENT_SHARE_PERCENT": 100}


class Curve:
    """RSS every `every` answered requests: rows of (requests, seconds, MiB)."""

    def __init__(self, pid: int, every: int):
        self.pid, self.every, self.rows, self.done = pid, every, [], 0
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()
        self.sample()

    def sample(self) -> None:
        """Record one point now."""
        self.rows.append((self.done, round(time.perf_counter() - self._t0, 2), round(rss_mb(self.pid), 1)))

    def tick(self, k: int = 1) -> None:
        """Called by the clients after each scenario with the requests it made."""
        with self._lock:
            before, self.done = self.done, self.done + k
            if before // self.every != self.done // self.every:
                self.sample()


def level_off(rows: list[tuple], warmup: int) -> dict:
    """RSS at the end of the warm-up, peak, last, growth since the warm-up, and the slope of the rest
    (least squares, MiB per 1000 requests)."""
    after = [r for r in rows if r[0] >= warmup] or rows[-1:]
    at_warmup, last = after[0][2], rows[-1][2]
    xs, ys = [r[0] for r in after], [r[2] for r in after]
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if n > 1 and var else 0.0
    return {"start_mb": rows[0][2], "warmup_requests": warmup, "at_warmup_mb": at_warmup,
            "peak_mb": max(r[2] for r in rows), "end_mb": last, "growth_after_warmup_mb": round(last - at_warmup, 1),
            "max_after_warmup_mb": max(ys), "slope_mb_per_1000": round(1000 * slope, 2)}


def write_curve(rows: list[tuple], name: str, warmup: int) -> list[Path]:
    """The CSV, and the PNG when matplotlib is available."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = [ARTIFACTS / f"{name}.csv"]
    with out[0].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["requests_done", "seconds", "rss_mib"])
        w.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return out
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([r[0] for r in rows], [r[2] for r in rows], marker=".", linewidth=1)
    ax.axvline(warmup, color="grey", linestyle="--", label="end of warm-up")
    ax.set_xlabel("requests answered")
    ax.set_ylabel("server RSS, MiB")
    ax.set_title("Soak: resident memory of python -m webapp (tiny model)")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(ARTIFACTS / f"{name}.png", dpi=100)
    plt.close(fig)
    return out + [ARTIFACTS / f"{name}.png"]


def run_soak(cache: Path, total: int, clients: int = 4, warmup: int | None = None, name: str = "soak",
             every: int = 10, mix: Mix | None = None, **server_env) -> dict:
    """Run about `total` requests through the server with bounded stores; returns the summary with the curve."""
    ensure_tiny_export(cache)
    warmup = total // 3 if warmup is None else warmup
    env = {**BOUNDED, **server_env}
    with ServerProcess(cache, ARTIFACTS / f"{name}-server.log", **env) as server:
        server.wait_health()
        curve = Curve(server.pid, every)
        records, wall = run_clients(server.url, clients, -(-total // clients), mix, seed=7, on_done=curve.tick)
        curve.sample()
        alive = server.alive()
    summary = summarise(records, wall, clients=clients, server_env=env, server_alive=alive,
                        rss=level_off(curve.rows, warmup), curve_points=len(curve.rows))
    summary["files"] = [str(p) for p in write_curve(curve.rows, name, warmup)]
    summary["json"] = str(write_json(summary, name))
    return summary


def main(argv=None) -> int:
    """Parse flags, soak, print, return 0 when memory levelled off and every answer was right."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1200, help="requests in all (default 1200)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    p.add_argument("--warmup", type=int, default=None, help="requests before RSS must level off (default 1/3)")
    p.add_argument("--max-growth-mb", type=float, default=40.0,
                   help="largest RSS growth allowed after the warm-up, MiB (default 40)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"HF_CACHE_DIR (default {DEFAULT_CACHE})")
    p.add_argument("--name", default="soak", help="name of the CSV / PNG / JSON files in tests/artifacts/")
    args = p.parse_args(argv)
    summary = run_soak(args.cache, args.requests, args.clients, args.warmup, args.name)
    print(table(summary))
    print("RSS:", summary["rss"])
    print("written:", ", ".join(summary["files"] + [summary["json"]]))
    problems = failures(summary)
    if summary["rss"]["max_after_warmup_mb"] - summary["rss"]["at_warmup_mb"] > args.max_growth_mb:
        problems.append(f"RSS grew {summary['rss']['max_after_warmup_mb'] - summary['rss']['at_warmup_mb']:.1f} "
                        f"MiB after the warm-up (allowed {args.max_growth_mb})")
    for line in problems:
        print("FAILED:", line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
