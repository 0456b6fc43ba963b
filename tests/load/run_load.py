"""Load test: the real server (`python -m webapp`, tiny random model) under concurrent mixed clients.

    python tests/load/run_load.py                       # 16 clients x 50 requests (MAX_QUEUE=4: some 503s)
    python tests/load/run_load.py --clients 4 --requests 25 --max-queue 8
    python tests/load/run_load.py --rate-limit 100/minute   # some 429s as well

Loopback only (127.0.0.1, a free port). Prints a table and writes tests/artifacts/<name>.json; exits 1 when a
request got a 500 or a malformed answer, or was lost (sent != answered, also checked against /metrics).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, so that `load` imports as a package

from load.clients import Mix, run_clients  # noqa: E402
from load.report import ARTIFACTS, failures, summarise, table, write_json  # noqa: E402
from load.server import HealthProbe, RssSampler, ServerProcess, counted_requests, ensure_tiny_export  # noqa: E402,E501

DEFAULT_CACHE = ARTIFACTS / "model_cache"
HEALTH_MAX_MS = 2000  # a container health check must never time out because generations are queued


def run_load(cache: Path, clients: int, per_client: int, name: str = "load", seed: int = 0,
             mix: Mix | None = None, hostile: int = 0, **server_env) -> dict:
    """Start the server over cache, run the clients (and `hostile` hostile ones beside them), stop it; returns
    the summary (also written as JSON)."""
    ensure_tiny_export(cache)
    with ServerProcess(cache, ARTIFACTS / f"{name}-server.log", **server_env) as server:
        server.wait_health()
        before = counted_requests(server.url)
        with RssSampler(server.pid) as rss, HealthProbe(server.url) as health:
            records, wall = run_clients(server.url, clients, per_client, mix, seed, hostile=hostile)
        counted = counted_requests(server.url) - before
        alive = server.alive()
        log_500s = server.log().count("internal error")
    summary = summarise(records, wall, clients=clients, hostile_clients=hostile, requests_per_client=per_client,
                        server_env=server_env,
                        server_counted=counted, server_alive=alive, logged_internal_errors=log_500s,
                        health=health.summary(),
                        rss_mb={"start": rss.samples[0][1] if rss.samples else 0, "peak": rss.peak(),
                                "end": rss.samples[-1][1] if rss.samples else 0})
    summary["json"] = str(write_json(summary, name))
    return summary


def load_failures(summary: dict) -> list[str]:
    """failures() plus the server's side: it counted every request and is still running."""
    out = failures(summary)
    # bodies over the hard limit are answered by waitress from their headers, before the app counts them
    expected = summary["sent"] - summary["kinds"].get("oversize_body", {}).get("sent", 0)
    if summary["server_counted"] != expected:
        out.append(f"server counted {summary['server_counted']} requests, clients sent {expected} to the app")
    if not summary["server_alive"]:
        out.append("the server process died")
    health = summary["health"]
    if health["not_200"] or health["max_ms"] > HEALTH_MAX_MS:
        out.append(f"/health under load: {health} (must stay 200 within {HEALTH_MAX_MS} ms)")
    return out


def main(argv=None) -> int:
    """Parse flags, run, print, return 0 when the load held."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--requests", type=int, default=50, help="requests per client (default 50)")
    p.add_argument("--max-queue", type=int, default=4,
                   help="server MAX_QUEUE (default 4, so that some of the 16 clients are refused)")
    p.add_argument("--retry-pause", type=float, default=0.5,
                   help="seconds a refused client waits before its next request (default 0.5)")
    p.add_argument("--concurrency", type=int, default=1, help="server CONCURRENCY (default 1)")
    p.add_argument("--threads", type=int, default=16, help="server WEB_THREADS (default 16)")
    p.add_argument("--rate-limit", default="", help='server RATE_LIMIT, e.g. "100/minute" (default off)')
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"HF_CACHE_DIR (default {DEFAULT_CACHE})")
    p.add_argument("--hostile", type=int, default=0,
                   help="hostile clients beside the ordinary ones (load/hostile.py; default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="load", help="name of the JSON and log files in tests/artifacts/")
    args = p.parse_args(argv)
    env = {"MAX_QUEUE": args.max_queue, "CONCURRENCY": args.concurrency, "WEB_THREADS": args.threads}
    if args.rate_limit:
        env["RATE_LIMIT"] = args.rate_limit
    summary = run_load(args.cache, args.clients, args.requests, args.name, args.seed,
                       Mix(retry_pause_s=args.retry_pause), hostile=args.hostile, **env)
    print(table(summary))
    print(f"server RSS MiB: {summary['rss_mb']}; counted by the server: {summary['server_counted']}; "
          f"/health under load: {summary['health']}")
    print(f"written: {summary['json']}")
    problems = load_failures(summary)
    for line in problems:
        print("FAILED:", line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
