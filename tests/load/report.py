"""Figures of a run: counts by outcome and status, p50/p95 latency, throughput; a table and a JSON file."""
from __future__ import annotations

import json
import math
import platform
import time
from collections import Counter
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # tests/artifacts/ (git-ignored)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest-rank method; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _latency(records) -> dict:
    seconds = [r.seconds for r in records]
    return {"p50_ms": round(1000 * percentile(seconds, 50), 1), "p95_ms": round(1000 * percentile(seconds, 95), 1),
            "max_ms": round(1000 * max(seconds, default=0), 1)}


def summarise(records: list, wall_s: float, **extra) -> dict:
    """Everything a reader needs about a run, JSON-ready."""
    outcomes = Counter(r.outcome for r in records)
    ok = [r for r in records if r.outcome == "ok"]
    kinds = {}
    for kind in sorted({r.kind for r in records}):
        mine = [r for r in records if r.kind == kind]
        kinds[kind] = {"sent": len(mine), **{o: sum(r.outcome == o for r in mine) for o in ("ok", "refused", "bad",
                                                                                            "lost")},
                       **_latency([r for r in mine if r.outcome == "ok"])}
    problems = Counter(r.problem for r in records if r.outcome in ("bad", "lost"))
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.machine(),
        "python": platform.python_version(), **extra,
        "sent": len(records), "answered": len(records) - outcomes["lost"],
        "outcomes": {o: outcomes[o] for o in ("ok", "refused", "bad", "lost")},
        "statuses": dict(sorted(Counter(str(r.status) for r in records).items())),
        "wall_s": round(wall_s, 2),
        "throughput_rps": round(len(ok) / wall_s, 2) if wall_s > 0 else 0.0,
        "tokens_per_s": round(sum(r.tokens for r in ok) / wall_s, 1) if wall_s > 0 else 0.0,
        "latency_ok": _latency(ok),
        "kinds": kinds,
        "problems": dict(problems.most_common(10)),
    }


def table(summary: dict) -> str:
    """The summary as a plain-text table, one row per request kind."""
    head = f"{'kind':<14}{'sent':>6}{'ok':>6}{'refused':>9}{'bad':>5}{'lost':>6}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}"
    rows = [head, "-" * len(head)]
    for kind, k in summary["kinds"].items():
        rows.append(f"{kind:<14}{k['sent']:>6}{k['ok']:>6}{k['refused']:>9}{k['bad']:>5}{k['lost']:>6}"
                    f"{k['p50_ms']:>9}{k['p95_ms']:>9}{k['max_ms']:>9}")
    o, lat = summary["outcomes"], summary["latency_ok"]
    rows.append("-" * len(head))
    rows.append(f"{'all':<14}{summary['sent']:>6}{o['ok']:>6}{o['refused']:>9}{o['bad']:>5}{o['lost']:>6}"
                f"{lat['p50_ms']:>9}{lat['p95_ms']:>9}{lat['max_ms']:>9}")
    rows.append(f"sent {summary['sent']}, answered {summary['answered']}, statuses {summary['statuses']}, "
                f"{summary['throughput_rps']} ok req/s, {summary['tokens_per_s']} generated tok/s over "
                f"{summary['wall_s']} s")
    for problem, count in summary["problems"].items():
        rows.append(f"  {count} x {problem}")
    return "\n".join(rows)


def write_json(summary: dict, name: str, folder: Path = ARTIFACTS) -> Path:
    """Write the summary as <folder>/<name>.json; returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(summary, indent=2))
    return path


def failures(summary: dict) -> list[str]:
    """What broke the contract (empty when the run held): bad answers, lost requests, sent != answered."""
    out = []
    if summary["outcomes"]["bad"]:
        out.append(f"{summary['outcomes']['bad']} bad answers: {summary['problems']}")
    if summary["outcomes"]["lost"] or summary["sent"] != summary["answered"]:
        out.append(f"{summary['sent']} sent but {summary['answered']} answered")
    return out
