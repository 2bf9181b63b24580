"""Trends over training: a markdown table (a row per series, a column per checkpoint) and PNG curves of every
metric against tokens seen, one panel per task (validation: one per metric), with the random baseline."""

from __future__ import annotations

import math
import os
from pathlib import Path

from rain.data.shards import write_atomic

TABLE_FILE, PLOT_FILE = "trends.md", "trends.png"
# Chance accuracy: 4 choices for ARC (mostly) and HellaSwag, 2 for PIQA and WinoGrande.
RANDOM_BASELINE = {"arc_easy": 0.25, "arc_challenge": 0.25, "hellaswag": 0.25, "piqa": 0.5, "winogrande": 0.5}


def series_label(row: dict) -> str:
    if row["task"] == "val":
        return f"val {row['metric']} ({row.get('source') or 'all'})"
    label = f"{row['task']} {row['n_shot']}-shot {row['metric']}" if row.get("n_shot") is not None else \
        f"{row['task']} {row['metric']}"
    if row.get("limit") is not None:
        label += f" (limit {row['limit']:g})"
    if row.get("evaluator", "rain") != "rain":
        label += f" [{row['evaluator']}]"
    return label


def panel_of(row: dict) -> str:
    return f"val {row['metric']}" if row["task"] == "val" else row.get("group") or row["task"]


def baseline(row: dict) -> float | None:
    return RANDOM_BASELINE.get(row["task"]) if row["metric"] in ("acc", "acc_norm") else None


def human_tokens(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _checkpoint_key(row: dict):
    return (row.get("tokens") is None, row.get("tokens") or 0, row.get("step") or 0, row.get("checkpoint"))


def _series(rows: list[dict]) -> tuple[list[tuple], dict[str, dict]]:
    """Checkpoints in token order and {series label: {"row": a row of it, "points": {checkpoint key: row}}};
    a later row for the same checkpoint and series replaces an earlier one."""
    checkpoints = sorted({_checkpoint_key(r) for r in rows})
    series: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: (r["task"] == "val", panel_of(r), series_label(r))):
        entry = series.setdefault(series_label(r), {"row": r, "points": {}})
        entry["points"][_checkpoint_key(r)] = r
    return checkpoints, series


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    value, stderr = row["value"], row.get("stderr")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.4g}" if row["task"] == "val" else f"{value:.3f}"
    return text + (f" ± {stderr:.3f}" if stderr is not None else "")


def trend_table(rows: list[dict]) -> str:
    if not rows:
        return "(no results yet)\n"
    checkpoints, series = _series(rows)
    header = ["metric", "random"] + [f"{k[3]} ({human_tokens(None if k[0] else k[1])} tok)" for k in checkpoints]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, entry in series.items():
        chance = baseline(entry["row"])
        cells = [label, f"{chance:.2f}" if chance is not None else ""]
        cells += [_cell(entry["points"].get(k)) for k in checkpoints]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_trends(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("tokens") is not None]
    _, series = _series(rows)
    panels: dict[str, list[dict]] = {}
    for entry in series.values():
        panels.setdefault(panel_of(entry["row"]), []).append(entry)
    n = max(1, len(panels))
    cols = min(3, n)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(5.2 * cols, 3.6 * math.ceil(n / cols)), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (panel, entries) in zip(axes.flat, panels.items()):
        chances = set()
        for entry in entries:
            points = sorted(entry["points"].values(), key=_checkpoint_key)
            ax.plot([p["tokens"] for p in points], [p["value"] for p in points], marker="o", ms=3,
                    label=series_label(entry["row"]).removeprefix(f"{panel} "))
            chances.add(baseline(entry["row"]))
        for chance in chances - {None}:
            ax.axhline(chance, color="gray", ls="--", lw=1, label=f"random ({chance:.2f})")
        ax.set_title(panel)
        ax.set_xlabel("tokens seen")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_trends(eval_dir: Path, rows: list[dict], plot: bool = False) -> list[Path]:
    """eval_dir/trends.md, and eval_dir/trends.png with plot=True (when there is something to draw)."""
    eval_dir = Path(eval_dir)
    eval_dir.mkdir(parents=True, exist_ok=True)
    table = eval_dir / TABLE_FILE
    write_atomic(table, ("# Evaluation trends\n\n" + trend_table(rows)).encode())
    drawable = plot and any(r.get("tokens") is not None for r in rows)
    return [table] + ([plot_trends(rows, eval_dir / PLOT_FILE)] if drawable else [])
