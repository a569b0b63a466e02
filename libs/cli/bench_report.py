"""Results of `llmserve bench`: a terminal table, a JSON file and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from .tables import table

COLUMNS = [
    ("mode", "mode"),
    ("level", "level"),
    ("requests", "reqs"),
    ("errors", "err"),
    ("output_tok_s", "tok/s"),
    ("req_s", "req/s"),
    ("ttft_p50_ms", "TTFT p50"),
    ("ttft_p99_ms", "TTFT p99"),
    ("itl_p50_ms", "ITL p50"),
    ("itl_p99_ms", "ITL p99"),
    ("e2e_p50_ms", "e2e p50"),
]


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def render_table(summaries: list[dict]) -> str:
    rows = [[_cell(s.get(key)) for key, _ in COLUMNS] for s in summaries]
    return table([title for _, title in COLUMNS], rows, right=range(1, len(COLUMNS)))


def write_json(path: Path, summaries: list[dict], meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "results": summaries}, indent=2) + "\n")


def write_plots(out_dir: Path, summaries: list[dict], title: str = "llmserve") -> list[Path]:
    """throughput.png (tok/s against concurrency) and latency.png (TTFT and ITL percentiles)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    closed = sorted((s for s in summaries if s["mode"] == "closed"), key=lambda s: s["level"])
    if not closed:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    levels = [s["level"] for s in closed]
    paths = [out_dir / "throughput.png", out_dir / "latency.png"]

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(levels, [s["output_tok_s"] for s in closed], marker="o")
    ax.set(
        xscale="log", xlabel="concurrent streams", ylabel="output tokens / s", title=f"{title}: throughput"
    )
    ax.set_xticks(levels, [str(x) for x in levels])
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("ttft", "itl"), strict=True):
        for q in (50, 90, 99):
            ax.plot(levels, [s[f"{metric}_p{q}_ms"] or 0 for s in closed], marker="o", label=f"p{q}")
        ax.set(xscale="log", xlabel="concurrent streams", ylabel="ms", title=f"{title}: {metric.upper()}")
        ax.set_xticks(levels, [str(x) for x in levels])
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths
