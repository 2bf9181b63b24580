"""`rain decontaminate`: which benchmark items' n-grams occur in a prepared folder's shards, per task, and
optionally the training split without the documents that hold them.

Where this lives. The command joins two things: the benchmark items, read and formatted as lm-eval formats them
(rain.eval.tasks), and the prepared folder (rain.data). rain.data may import nothing above it, not even inside a
function (tests/test_layers.py), so `rain data decontaminate` or a `rain prepare --decontaminate` step could not
read the benchmarks. rain.eval may import rain.data, so the command is here (registered by rain.eval.commands, beside `rain
eval`, as a top-level `rain decontaminate`). The matching and the rewrite of the folder are
rain.data.contamination, which sees only numbered token sequences.

What is matched. An item's texts are the strings lm-eval scores for it at 0 shots: context + continuation for
each choice ("Question: ...\\nAnswer: <choice>" for ARC and PIQA, HellaSwag's preprocessed query + ending,
WinoGrande's sentence with each option filled in), so the question or context and every choice are covered, and
so is an item copied into training text in lm-eval's own format. Each text is tokenised with the prepared
folder's tokenizer twice, as it is and after a space (a word tokenises differently at the start of a document
and inside one), and gives its windows of --ngram tokens (13, as GPT-3's decontamination; a text shorter than
that is matched whole). An item is contaminated when a document holds any one of its windows exactly. Token
n-grams see the text as the model sees it; they do not match across case or punctuation changes, which lm-eval's
word-level janitor normalises away.

Both splits are scanned and reported. `--drop` rewrites the training split only: the validation split is held
out text scored for loss (the model never trains on it), and changing it would make the validation loss of runs
already trained on the folder incomparable with later ones.

Dropping in place, rather than a prepare-time step: the n-grams are in the folder's own tokens, which exist only
once its tokenizer is trained, and a rewrite copies the shards once instead of preparing the corpus again; it is
as safe (new shards beside the old ones, the manifest's atomic replacement as the commit, see
rain.data.contamination) and leaves a record of what was dropped in the manifest."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rain.data.contamination import NgramSet, drop_documents, scan
from rain.data.prepared import PreparedData
from rain.data.tokenizer import Tokenizer
from rain.errors import RainError
from rain.eval.tasks import (
    EVAL_DATA_LAYOUT,
    TASK_NAMES,
    eval_data_hint,
    get_task,
    load_task,
    local_files,
    make_item,
)
from rain.files import write_json_atomic
from rain.progress import progress

REPORT = "decontamination.json"
DEFAULT_NGRAM = 13  # GPT-3's
ITEM_ID = {"arc_easy": "id", "arc_challenge": "id", "hellaswag": "ind", "piqa": None, "winogrande": "qID"}
SPLITS = ("train", "val")
CONTEXT_TOKENS = 24  # shown either side of a match in the report


def item_requests(name: str, index: int, doc: dict) -> list[tuple[str, str]]:
    """The (context, continuation) pairs lm-eval scores for one (processed) document at 0 shots, one per choice."""
    return list(dict.fromkeys(make_item(get_task(name), index, doc, []).requests))


def item_texts(name: str, index: int, doc: dict) -> list[str]:
    """The strings lm-eval scores for one document: context + continuation per choice."""
    return [context + continuation for context, continuation in item_requests(name, index, doc)]


def found_tasks(eval_data: Path) -> list[str]:
    """The tasks whose evaluated split is in the folder."""
    return [name for name in TASK_NAMES if all(p.is_file() for p in local_files(name, eval_data).eval)]


def choose_tasks(tasks: list[str] | None, eval_data: Path | None) -> list[str]:
    if eval_data is not None and not eval_data.is_dir():
        raise RainError(f"--eval-data {eval_data}: no such folder; {eval_data_hint()}")
    if tasks:
        return [get_task(t).name for t in tasks]
    if eval_data is None:
        return list(TASK_NAMES)
    found = found_tasks(eval_data)
    if not found:
        raise RainError(f"--eval-data {eval_data}: holds none of the benchmarks rain knows ({', '.join(TASK_NAMES)}); "
                        f"a folder of them holds {EVAL_DATA_LAYOUT}")
    return found


def read_items(tasks: list[str], eval_data: Path | None) -> dict[str, list[tuple[int, str, list[str]]]]:
    """Per task: (index, id, (context, continuation) pairs) of every item of its evaluated split."""
    out = {}
    for name in tasks:
        field = ITEM_ID[name]
        docs = load_task(name, eval_data, need_pool=False).docs
        out[name] = [(i, str(doc.get(field, i)) if field else str(i), item_requests(name, i, doc))
                     for i, doc in enumerate(docs)]
    return out


def _head(text: str, words: int) -> str:
    """The text up to its `words`-th space (all of it when it has fewer)."""
    parts = text.split(" ")
    return text if len(parts) <= words else " ".join(parts[:words])


def tokenise(tokenizer: Tokenizer, items: dict, n: int, batch: int = 4096) -> tuple[list[list[int]], list[int]]:
    """The token texts whose n-token windows stand for each item, with the item's global number.

    Each request is context + continuation (the continuation starts with lm-eval's space, so its tokens follow
    the context's). Each distinct string is tokenised once, and so that no window is hashed twice: the first
    request whole, each other one from n - 1 tokens before where it departs from the first, and the start of
    each context once more after a space (its n + 1 first words: enough for every window that differs). A
    request shorter than n tokens is a text of its own, with and without the space (matched whole)."""
    strings: dict[str, int] = {}
    plans = []
    for task_items in items.values():
        for _, _, requests in task_items:
            plan = []
            for context, continuation in requests:
                head = _head(context, n + 1)
                keys = [strings.setdefault(x, len(strings)) for x in (context, continuation, " " + head)]
                plan.append((*keys, head == context))
            plans.append(plan)
    ids: list[list[int]] = []
    keys = list(strings)
    for a in range(0, len(keys), batch):
        ids += tokenizer.encode_batch(keys[a: a + batch])
    texts, owners = [], []
    for owner, plan in enumerate(plans):
        first = None
        mine: dict[tuple, None] = {}
        for context, continuation, spaced, whole in plan:
            request = ids[context] + ids[continuation]
            if first is None or len(request) < n:
                mine[tuple(request)] = None
                first = first or (context, continuation, request)
            else:
                if context == first[0]:  # the usual case: one context, a continuation per choice
                    common = len(ids[context]) + len(os.path.commonprefix([ids[first[1]], ids[continuation]]))
                else:
                    common = len(os.path.commonprefix([first[2], request]))
                if common < len(request):
                    mine[tuple(request[max(0, common - n + 1):])] = None
            mine[tuple(ids[spaced] + (ids[continuation] if whole else []))] = None
        texts += [list(t) for t in mine]
        owners += [owner] * len(mine)
    return texts, owners


def _scan_progress(split: str):
    bar = progress(desc=f"scanning {split}", unit="tok", unit_scale=True)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
    return bar, update


def decontaminate(data_dir: str | Path, eval_data: str | Path | None, tasks: list[str] | None = None,
                  ngram: int = DEFAULT_NGRAM, drop: bool = False, out: str | Path | None = None, samples: int = 3,
                  chunk_tokens: int = 1 << 20, log=print) -> dict:
    """Scan the folder's splits for the tasks' items, write REPORT into out (default: the folder) and return it;
    with drop, rewrite the training split without the documents that hold any item's n-gram."""
    data_dir = Path(data_dir)
    eval_data = Path(eval_data) if eval_data is not None else None
    if ngram < 1:
        raise RainError(f"--ngram must be at least 1, got {ngram}")
    data = PreparedData(data_dir)
    tokenizer = Tokenizer.from_file(data.tokenizer_path)
    tasks = choose_tasks(tasks, eval_data)
    items = read_items(tasks, eval_data)
    texts, owners = tokenise(tokenizer, items, ngram)
    table_size = max(tokenizer.vocab_size, int(data.manifest.get("tokenizer_vocab") or 0))
    ngrams = NgramSet(texts, owners, ngram, table_size)
    task_of = np.repeat(np.arange(len(tasks)), [len(items[t]) for t in tasks])
    first_owner = dict(zip(tasks, np.concatenate([[0], np.cumsum([len(items[t]) for t in tasks])]).tolist()))
    results = {}
    for split in SPLITS:
        bar, update = _scan_progress(split)
        try:
            results[split] = scan(data, split, ngrams, chunk_tokens=chunk_tokens, log=update)
        finally:
            bar.close()
    report = {"data": str(data_dir), "eval_data": str(eval_data) if eval_data else "huggingface hub", "ngram": ngram,
              "windows": len(ngrams),
              **_report(data, tokenizer, tasks, items, ngrams, task_of, first_owner, results, samples),
              "dropped": None}
    out_dir = Path(out) if out is not None else data_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / REPORT, report)  # first, so the findings survive a drop that fails
    if drop:
        matches, _ = results["train"]
        docs = np.unique(matches.docs)
        if len(docs):
            rules = {t: np.unique(matches.docs[task_of[matches.owners] == i]) for i, t in enumerate(tasks)}
            record = {"ngram": ngram, "tasks": tasks, "eval_data": report["eval_data"],
                      "report": str(out_dir / REPORT)}
            report["dropped"] = drop_documents(data_dir, docs, record, rules=rules, log=log,
                                               scanned=data.manifest["splits"]["train"])
        else:
            report["dropped"] = {"split": "train", "documents": 0, "tokens": 0}
        write_json_atomic(out_dir / REPORT, report)
        if len(docs):
            from rain.data.report import report as data_report

            data_report(data_dir)  # report.md, report.json: the counts changed
    report["path"] = str(out_dir / REPORT)
    return report


def _report(data: PreparedData, tokenizer: Tokenizer, tasks, items, ngrams: NgramSet, task_of, first_owner,
            results: dict, samples: int) -> dict:
    names = data.source_names
    source_name = (lambda sid: names[sid] if 0 <= sid < len(names) else f"source {sid}")
    short = set(ngrams.short_owners().tolist())
    per_task = {t: {"items": len(items[t]), "id_field": ITEM_ID[t],
                    "short_items": sum(first_owner[t] <= o < first_owner[t] + len(items[t]) for o in short)}
                for t in tasks}
    contaminated: dict[str, dict[int, dict]] = {t: {} for t in tasks}
    overall = {}
    for split, (m, documents) in results.items():
        stream = data.stream(split)
        records = data.manifest["splits"][split]
        hit_docs = np.unique(m.docs)
        overall[split] = {
            "documents": len(documents), "tokens": m.tokens, "seconds": round(m.seconds, 2),
            "tokens_per_second": round(m.tokens / m.seconds) if m.seconds > 0 else None,
            "contaminated_documents": len(hit_docs),
            "contaminated_tokens": int((documents.lengths[hit_docs] + 1).sum()),
            "by_source": _count_by(documents.sources[hit_docs], source_name),
        }
        for i, t in enumerate(tasks):
            mine = task_of[m.owners] == i
            docs, owners = m.docs[mine], m.owners[mine]
            by_source = {}
            for sid in np.unique(documents.sources[docs]):
                of_source = documents.sources[docs] == sid
                by_source[source_name(int(sid))] = {"items": len(np.unique(owners[of_source])),
                                                    "documents": len(np.unique(docs[of_source]))}
            n_items = len(np.unique(owners))
            per_task[t][split] = {"contaminated": n_items, "share": round(n_items / max(1, len(items[t])), 6),
                                  "documents": len(np.unique(docs)), "by_source": by_source}
        rows = np.lexsort((-m.windows, m.owners))  # per owner, the documents with most matching windows first
        for r in rows:
            owner = int(m.owners[r])
            t = tasks[int(task_of[owner])]
            index, item_id, _ = items[t][owner - first_owner[t]]
            entry = contaminated[t].setdefault(owner, {"index": index, "id": item_id, "matches": []})
            counts = entry.setdefault(split, {"documents": 0, "windows": 0})
            counts["documents"] += 1
            counts["windows"] += int(m.windows[r])
            if len(entry["matches"]) < samples:
                entry["matches"].append(_match(stream, records, documents, tokenizer, split, int(m.docs[r]),
                                               int(m.first[r]), int(m.first_length[r]), int(m.windows[r]),
                                               source_name))
    for t in tasks:
        per_task[t]["contaminated_items"] = [contaminated[t][o] for o in sorted(contaminated[t])]
    return {"tasks": per_task, "splits": overall}


def _count_by(sources: np.ndarray, name) -> dict[str, int]:
    ids, counts = np.unique(sources, return_counts=True)
    return {name(int(i)): int(c) for i, c in zip(ids, counts)}


def _match(stream, records, documents, tokenizer, split, doc, first, length, windows, source_name) -> dict:
    start, end = int(documents.starts[doc]), int(documents.starts[doc] + documents.lengths[doc])
    shard = int(np.searchsorted(stream.starts, first, "right")) - 1
    before = tokenizer.decode(stream.read(max(start, first - CONTEXT_TOKENS), first).tolist())
    match = tokenizer.decode(stream.read(first, first + length).tolist())
    after = tokenizer.decode(stream.read(first + length, min(end, first + length + CONTEXT_TOKENS)).tolist())
    return {"split": split, "document": doc, "source": source_name(int(documents.sources[doc])),
            "shard": records[shard]["file"], "offset": first - int(stream.starts[shard]), "windows": windows,
            "ngram": match, "context": f"{before}[[{match}]]{after}"}


def table(report: dict) -> str:
    s = report["splits"]
    lines = [(f"{report['ngram']}-token n-grams of {len(report['tasks'])} task(s) in {s['train']['tokens']:,} train "
              f"and {s['val']['tokens']:,} val tokens"),
             f"{'task':<15}{'items':>8}{'train: contaminated':>21}{'share':>9}{'documents':>11}{'val: contaminated':>19}"]
    for name, t in report["tasks"].items():
        lines.append(f"{name:<15}{t['items']:>8,}{t['train']['contaminated']:>21,}{100 * t['train']['share']:>8.2f}%"
                     f"{t['train']['documents']:>11,}{t['val']['contaminated']:>19,}")
    for split in SPLITS:
        sp = s[split]
        by = ", ".join(f"{k} {v:,}" for k, v in sp["by_source"].items()) or "none"
        share = 100 * sp["contaminated_documents"] / max(1, sp["documents"])
        speed = f"{sp['tokens_per_second'] / 1e6:.1f}M tokens/s" if sp["tokens_per_second"] else "-"
        lines.append(f"{split}: {sp['contaminated_documents']:,} of {sp['documents']:,} documents ({share:.2f}%) hold "
                     f"benchmark n-grams, by source: {by} (scanned in {sp['seconds']:.1f} s, {speed})")
    return "\n".join(lines) + "\n"
