"""Trends over training: a markdown table (a row per series, a column per checkpoint) and PNG curves of every
metric against tokens seen, one panel per task (validation: one per metric), with the random baseline and a band
of one standard error. Validation perplexity is in the table only: drawn, it would repeat the loss panel."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from rain.files import write_atomic
from rain.train.metrics import human_tokens, tokens_axis

TABLE_FILE, PLOT_FILE = "trends.md", "trends.png"
# Chance accuracy: 4 choices for ARC (mostly) and HellaSwag, 2 for PIQA and WinoGrande.
RANDOM_BASELINE = {"arc_easy": 0.25, "arc_challenge": 0.25, "hellaswag": 0.25, "piqa": 0.5, "winogrande": 0.5,
                   "openbookqa": 0.25, "boolq": 0.5}  # lambada_openai's acc (greedy last word) has no chance level
# A panel's y-axis label by metric; series of one task in different units get separate panels.
UNITS = {"acc": "accuracy", "acc_norm": "accuracy", "loss": "loss (nats/token)", "bpb": "bits per byte",
         "stereotype_preference": "share preferring the stereotype",
         "stereotype_preference_full_sentence": "share preferring the stereotype",
         "bias_valence_gap": "mean |valence gap|", "prompt_adherence": "share of prompt words kept"}
# The prompt probes' rows (rain.eval.bias, rain.eval.probes) share one task; a panel per signal, titled by it.
PROBE_PANELS = {"stereotype_preference": "bias: likelihood pairs", "stereotype_preference_full_sentence":
                "bias: likelihood pairs", "bias_valence_gap": "bias: paired prompts", "prompt_adherence": "creative prompts"}


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
    if row.get("evaluator") == "probes":
        return f"{row['task']}: {PROBE_PANELS.get(row['metric'], row['metric'].replace('_', ' '))}"
    return f"val {row['metric']}" if row["task"] == "val" else row.get("group") or row["task"]


def baseline(row: dict) -> float | None:
    if row["metric"].startswith("stereotype_preference"):
        return 0.5  # no preference between the stereotyped and the other sentence
    return RANDOM_BASELINE.get(row["task"]) if row["metric"] in ("acc", "acc_norm") else None


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


def overall(rows: list[dict]) -> list[dict]:
    """The rows of whole tasks, without the per-category breakdown (rows with a `category`)."""
    return [r for r in rows if not r.get("category")]


def category_table(rows: list[dict]) -> str:
    """Per-category results of the latest checkpoint that has any: a row per task, shots, category and metric,
    with the item count and standard error (few items: a wide error)."""
    rows = [r for r in rows if r.get("category")]
    if not rows:
        return ""
    latest = max(_checkpoint_key(r) for r in rows)
    mine: dict[tuple, dict] = {}
    for r in rows:  # a later row for the same series replaces an earlier one
        if _checkpoint_key(r) == latest:
            mine[(series_label(r), r["category"])] = r
    lines = [f"## Per category: {latest[3]} ({human_tokens(None if latest[0] else latest[1])} tok)", "",
             "| task | category | items | value |", "|---|---|---:|---:|"]
    for (label, category), r in sorted(mine.items()):
        lines.append(f"| {label} | {category} | {r.get('items') or '-'} | {_cell(r)} |")
    return "\n".join(lines) + "\n"


def trend_table(rows: list[dict]) -> str:
    rows = overall(rows)
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


@dataclass
class Series:
    label: str
    tokens: list[int]
    values: list[float]
    stderr: list[float | None]


@dataclass
class Panel:
    title: str
    ylabel: str
    series: list[Series]
    baselines: list[float]  # random-guess levels to mark


def _unit(metric: str) -> str:
    return UNITS.get(metric, metric)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def trend_panels(rows: list[dict]) -> list[Panel]:
    """What trends.png draws: a panel per task (validation: per metric) and unit, each series' finite values
    against tokens seen (step 0 included), never validation perplexity (exp of the loss, which has its own
    panel) and never a panel with nothing in it. Rows without a token count cannot be placed and are left out."""
    rows = [r for r in overall(rows) if r.get("tokens") is not None and not (r["task"] == "val" and r["metric"] == "ppl")]
    _, series = _series(rows)
    panels: dict[tuple[str, str], Panel] = {}
    for label, entry in series.items():
        points = [p for p in sorted(entry["points"].values(), key=_checkpoint_key) if _finite(p["value"])]
        if not points:
            continue
        row = entry["row"]
        key = (panel_of(row), _unit(row["metric"]))
        panel = panels.setdefault(key, Panel(key[0], key[1], [], []))
        panel.series.append(Series(label.removeprefix(f"{key[0]} "), [p["tokens"] for p in points],
                                   [p["value"] for p in points], [p.get("stderr") for p in points]))
        chance = baseline(row)
        if chance is not None and chance not in panel.baselines:
            panel.baselines.append(chance)
    return list(panels.values())


def _draw(ax, panel: Panel) -> None:
    bands = False
    for s in panel.series:
        (line,) = ax.plot(s.tokens, s.values, marker="o", ms=3, label=s.label)
        if all(_finite(e) for e in s.stderr):  # a band of one standard error: how much is noise
            low = [v - e for v, e in zip(s.values, s.stderr)]
            high = [v + e for v, e in zip(s.values, s.stderr)]
            ax.fill_between(s.tokens, low, high, color=line.get_color(), alpha=0.15, lw=0)
            bands = True
    if bands:
        ax.fill_between([], [], color="gray", alpha=0.25, lw=0, label="± 1 standard error")  # its legend entry
    for chance in panel.baselines:
        ax.axhline(chance, color="gray", ls="--", lw=1, label=f"random ({chance:.2f})")
    ax.set_title(panel.title)
    ax.set_ylabel(panel.ylabel)
    tokens_axis(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_trends(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = trend_panels(rows)
    n = max(1, len(panels))
    cols = min(3, n)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(5.2 * cols, 3.6 * math.ceil(n / cols)), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        _draw(ax, panel)
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
    categories = category_table(rows)
    text = "# Evaluation trends\n\n" + trend_table(rows) + (f"\n{categories}" if categories else "")
    write_atomic(table, text.encode())
    drawable = plot and bool(trend_panels(rows))
    return [table] + ([plot_trends(rows, eval_dir / PLOT_FILE)] if drawable else [])
