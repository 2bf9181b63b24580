"""Categories of benchmark items, for per-category results and comparisons.

What the data carries, and nothing guessed: HellaSwag's `activity_label` and its source (the prefix of
`source_id`: "activitynet" or "wikihow"); ARC's exam source (the letters that open its `id`: "Mercury",
"NYSEDREGENTS", "MCAS", ...; this ARC copy has no grade or subject field); the `subject` of MMLU-style items.
Tasks whose items carry none of these have no categories.
"""

from __future__ import annotations

import re

_ARC_SOURCE = re.compile(r"[A-Za-z&]+")


def item_categories(task: str, doc: dict) -> dict[str, str]:
    """{category kind: value} of one evaluated document, e.g. {"source": "wikihow", "activity": "Baking cookies"}."""
    out: dict[str, str] = {}
    if task == "hellaswag":
        source_id = str(doc.get("source_id") or "")
        if "~" in source_id:
            out["source"] = source_id.split("~", 1)[0]
        if doc.get("activity_label"):
            out["activity"] = str(doc["activity_label"])
    elif task.startswith("arc_"):
        match = _ARC_SOURCE.match(str(doc.get("id") or ""))
        if match:
            out["source"] = match.group(0)
    if isinstance(doc.get("subject"), str) and doc["subject"]:
        out["subject"] = doc["subject"]
    return out


def item_id(doc: dict, index: int) -> str:
    """A document's own id where it has one (ARC `id`, HellaSwag `ind`, WinoGrande `qID`), else its position."""
    for key in ("id", "qID", "task_id", "ind"):
        if doc.get(key) not in (None, ""):
            return str(doc[key])
    return str(index)
