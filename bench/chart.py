"""results.png: one bar panel per figure, configs side by side, with the target and the floor drawn in."""
from __future__ import annotations

from pathlib import Path

PANELS = ["load_cached_s", "ttft_1tile_s", "ttft_3tile_s", "ttft_turn2_s", "ttft_prepared_1tile_s",
          "decode_tok_s", "peak_rss_gb", "concurrent_tok_s"]


def draw(results: dict, figures: dict, path: Path) -> None:
    """Write the chart to path (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if "error" not in r]
    names = [r["config"] for r in rows]
    fig, axes = plt.subplots(2, 4, figsize=(20, 9))
    default = results.get("default")
    for ax, key in zip(axes.flat, PANELS):
        title, unit, better, target = figures[key]
        raw = [r.get(key) for r in rows]
        values = [v or 0 for v in raw]
        colors = ["#999999" if n == results["baseline"] else "#d62728" if n == default else "#1f77b4"
                  for n in names]
        ax.barh(range(len(rows)), values, color=colors)
        ax.set_yticks(range(len(rows)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{title} ({unit}, {'lower' if better == 'low' else 'higher'} is better)", fontsize=9)
        for i, v in enumerate(raw):
            label = " n/a" if v is None else f" {v:.2f}" if v < 10 else f" {v:.0f}"
            ax.text(v or 0, i, label, va="center", fontsize=7)
        if target is not None:
            ax.axvline(target, color="green", linestyle="--", linewidth=1, label="target")
        floor = next((r["floors"].get(key) for r in rows if r["config"] == default and r.get("floors")), None)
        if floor:
            ax.axvline(floor, color="black", linestyle=":", linewidth=1,
                       label="ceiling (default)" if key == "decode_tok_s" else "floor (default)")
        if target is not None or floor:
            ax.legend(fontsize=7, loc="lower right")
    model = "random weights, exact InternVL3.5-1B config" if results["model"].startswith("builtin:") \
        else results["model"]
    m = results["machine"]
    fig.suptitle(f"InternVL3.5-1B on {m.get('cpu')} ({m.get('cores')} cores), {model}; grey = baseline "
                 f"(transformers fp32), red = default (make run)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
