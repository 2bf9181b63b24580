"""Every benchmark item's score, kept so that results can be broken down by category and two checkpoints
compared on the very same items (`rain compare`) without scoring them again.

`rain eval` appends one line per checkpoint, task and shot count to eval/items.jsonl: the checkpoint's step and
tokens seen, the unit's task, n_shot, limit and evaluator, the items' ids, each metric as a string of 0s and 1s
in item order (compact: 10,000 HellaSwag items are 10 kB a metric), and each item's categories
(rain.eval.categories). A later line for the same checkpoint and unit replaces an earlier one.
"""

from __future__ import annotations

from pathlib import Path

from rain.errors import RainError
from rain.eval.categories import item_categories, item_id
from rain.eval.multiple_choice import mean_stderr
from rain.eval.tasks import TaskRequests
from rain.files import append_jsonl, read_jsonl_rows

ITEMS_FILE = "items.jsonl"
UNIT_FIELDS = ("task", "n_shot", "limit", "evaluator")


def item_record(task: TaskRequests, scores: dict[str, list[float]]) -> dict:
    """One task's per-item scores (from score_tasks' per_item) with the items' ids and categories; only the
    metrics that score an item right or wrong (0 or 1) are kept."""
    categories: dict[str, list[str | None]] = {}
    for k, item in enumerate(task.items):
        for kind, value in item_categories(task.name, item.doc).items():
            categories.setdefault(kind, [None] * len(task.items))[k] = value
    return {"task": task.name, "n_shot": task.n_shot, "ids": [item_id(i.doc, i.index) for i in task.items],
            "scores": {m: "".join("1" if v else "0" for v in values) for m, values in scores.items()
                       if all(v in (0.0, 1.0) for v in values)},  # right/wrong metrics (not LAMBADA's log-likelihood)
            "categories": categories}


def correct(record: dict, metric: str) -> list[int]:
    text = record["scores"].get(metric)
    if text is None:
        raise RainError(f"{record['task']} has no per-item {metric} (it has {', '.join(record['scores'])})")
    return [1 if c == "1" else 0 for c in text]


def category_rows(record: dict) -> list[dict]:
    """Result rows per category: task, metric, value, stderr, items and category ("source=wikihow")."""
    rows = []
    scores = {metric: correct(record, metric) for metric in record["scores"]}
    for kind, labels in record["categories"].items():
        for label in sorted({x for x in labels if x is not None}):
            members = [k for k, x in enumerate(labels) if x == label]
            for metric, values_of in scores.items():
                values = [float(values_of[k]) for k in members]
                rows.append({"task": record["task"], "metric": metric, "value": sum(values) / len(values),
                             "stderr": mean_stderr(values), "items": len(values), "category": f"{kind}={label}"})
    return rows


def read_items(path: Path) -> list[dict]:
    return read_jsonl_rows(path, ("task", "n_shot", "ids", "scores"), "a per-item record")


def append_items(path: Path, records: list[dict]) -> None:
    append_jsonl(path, records)
