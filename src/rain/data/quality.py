"""Quality scores of a prepared folder's documents, and the filter that keeps documents by them.

Three kinds of score, one per training document (rain.eval.quality computes the two that need a model):
- `perplexity`: the document's bits per byte under a reference model (lower: more like the reference's text);
- `classifier`: a Hugging Face sequence classifier's output (e.g. FineWeb-Edu's educational score);
- `readability`: Flesch reading ease, computed here (`readability`), no model.

The design: score once, filter many times. `rain score` decodes each document of the training split from the
shards (byte-level BPE decodes to the exact text), scores it and writes the scores beside the documents:

    scores/NAME.npy   float32, one score per training document in stream order (the document index's order)
    scores/NAME.json  the kind, the model, its tokenizer, the settings, per-source statistics, the speed, and the
                      training shards the scores belong to (file and tokens of each), so scores of another
                      version of the folder are refused in one line instead of silently misaligned

`rain data filter DATA --scores NAME` then chooses the documents to keep (a threshold or the best fraction of
each source, CCNet-style: every source judged against its own scores) and writes a report of what it would keep
and drop, per source, with the documents nearest the threshold on either side (scores/NAME.filter.md/.json).
That is free to rerun with another threshold: nothing is rescored. `--drop` rewrites the training split
without the dropped documents, through rain.data.contamination's `drop_documents` (the one writer that rewrites
a folder: new shards beside the old, the manifest's atomic replacement as the commit, counts per source in the
manifest's filters, which `rain data report` lists), and rewrites every scores file to the documents kept, so
a stricter threshold can follow. `--out NEW` writes the filtered folder as a copy instead, leaving DATA and its
scores whole, so a looser threshold stays possible too.

Why not a score step inside `rain prepare` (a mixture key `score = {...}` per source): the perplexity and
classifier scores need a model, and rain.data may not import rain.model, rain.checkpoint's loading or anything
above (tests/test_layers.py); prepare would also have to tokenise the corpus again for every new threshold.
Scoring the prepared folder needs neither: the documents are already split, deduplicated and filtered, the
scores align with the document index, and the model side lives in rain.eval.quality (allowed to see both),
which hands this module a plain scorer: a function from a list of texts to a list of floats.

Only the training split is scored and filtered: the validation split is held-out text scored for loss, and
changing it would make validation losses before and after a filter incomparable (as `rain decontaminate` argues).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rain.data.contamination import drop_documents, split_documents
from rain.data.prepared import PreparedData
from rain.data.shards import MANIFEST
from rain.data.tokenizer import Tokenizer
from rain.errors import RainError
from rain.files import write_atomic, write_json_atomic
from rain.progress import progress

SCORES = "scores"
SPLIT = "train"
KINDS = ("perplexity", "classifier", "readability")
HIGHER_IS_BETTER = {"perplexity": False, "classifier": True, "readability": True}
EXCERPT_CHARS = 240
Scorer = Callable[[list[str]], list[float]]


# ----------------------------------------------------------------------------- readability

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?|\d+")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|\n\s*\n")
_VOWELS = re.compile(r"[aeiouy]+")


def _syllables(word: str) -> int:
    """Vowel groups, less a silent final e: the usual heuristic (textstat's dictionary-based count needs NLTK's
    cmudict, which it downloads at run time)."""
    w = word.lower()
    n = len(_VOWELS.findall(w))
    if n > 1 and w.endswith("e") and not w.endswith(("le", "ee")):
        n -= 1
    return max(1, n)


def readability(text: str) -> float:
    """Flesch reading ease: 206.835 - 1.015 words/sentence - 84.6 syllables/word. About 60-70 for plain
    English, below 30 for dense academic text, far below 0 for text without sentences (lists, tables, code,
    boilerplate) or with long words. A text without words scores 0."""
    words = _WORD.findall(text)
    if not words:
        return 0.0
    sentences = max(1, len(_SENTENCE_END.findall(text.strip())))
    syllables = sum(_syllables(w) for w in words)
    return 206.835 - 1.015 * len(words) / sentences - 84.6 * syllables / len(words)


def readability_scorer(texts: list[str]) -> list[float]:
    return [readability(t) for t in texts]


# ----------------------------------------------------------------------------- scoring a folder


def _fingerprint(data: PreparedData) -> list[list]:
    return [[r["file"], int(r["tokens"])] for r in data.manifest["splits"].get(SPLIT, [])]


def documents(data: PreparedData, batch: int = 64) -> Iterator[tuple[np.ndarray, list[str]]]:
    """The training documents as text, in stream order: (document numbers, texts) a batch at a time."""
    docs = split_documents(data, SPLIT)
    tokenizer = Tokenizer.from_file(data.tokenizer_path)
    stream = data.stream(SPLIT)
    for a in range(0, len(docs), batch):
        b = min(a + batch, len(docs))
        first, last = int(docs.starts[a]), int(docs.starts[b - 1] + docs.lengths[b - 1])
        tokens = stream.read(first, last)
        texts = [tokenizer.decode(tokens[s - first: s - first + n].tolist())
                 for s, n in zip(docs.starts[a:b].tolist(), docs.lengths[a:b].tolist())]
        yield np.arange(a, b), texts


def score_path(data_dir: str | Path, name: str) -> tuple[Path, Path]:
    folder = Path(data_dir) / SCORES
    return folder / f"{name}.npy", folder / f"{name}.json"


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name.endswith((".filter", ".npy", ".json")):
        raise RainError(f"--name {name!r}: use letters, digits, '_', '-' and '.' (a file name under {SCORES}/)")


def score_folder(data_dir: str | Path, name: str, kind: str, scorer: Scorer, meta: dict, batch: int = 64,
                 log: Callable[[str], None] = print) -> dict:
    """Score every training document with `scorer` (texts -> floats) and write scores/NAME.npy and .json.
    `meta` (the model, its tokenizer, settings) goes into the JSON. Returns the JSON's content."""
    if kind not in KINDS:
        raise RainError(f"--kind {kind!r}: choose one of {', '.join(KINDS)}")
    _check_name(name)
    data = PreparedData(data_dir)
    docs = split_documents(data, SPLIT)
    fingerprint = _fingerprint(data)
    scores = np.full(len(docs), np.nan, dtype=np.float32)
    t0 = time.perf_counter()
    bar = progress(total=len(docs), desc=f"scoring ({kind})", unit="doc")
    try:
        for numbers, texts in documents(data, batch):
            values = scorer(texts)
            if len(values) != len(texts):  # pragma: no cover - a scorer's bug
                raise AssertionError(f"the scorer returned {len(values)} scores for {len(texts)} documents")
            scores[numbers] = np.asarray(values, dtype=np.float32)
            bar.update(len(texts))
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    if _fingerprint(PreparedData(data_dir)) != fingerprint:
        raise RainError(f"{data_dir}: its training shards changed while they were scored (a drop or prepare?); "
                        "nothing was written: score again")
    names = data.source_names
    info = {"name": name, "kind": kind, "higher_is_better": HIGHER_IS_BETTER[kind], "split": SPLIT,
            **meta, "documents": len(docs), "seconds": round(seconds, 2),
            "documents_per_second": round(len(docs) / seconds, 2) if seconds > 0 else None,
            "by_source": {n: _stats(scores[docs.sources == i]) for i, n in enumerate(names)
                          if (docs.sources == i).any()},
            "shards": fingerprint, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    npy, js = score_path(data_dir, name)
    _write_scores(npy, scores)
    write_json_atomic(js, info)
    log(f"scored {len(docs):,} documents ({kind}) in {seconds:.1f} s ({info['documents_per_second']} documents/s); "
        f"wrote {npy} and {js.name}")
    return info


def _write_scores(path: Path, scores: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, scores.astype(np.float32))
    write_atomic(path, buffer.getvalue())


def _stats(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return {"documents": len(values), "unscored": len(values)}
    q = np.quantile(finite, [0.1, 0.5, 0.9])
    return {"documents": len(values), "unscored": int(len(values) - len(finite)),
            "mean": round(float(finite.mean()), 4), "p10": round(float(q[0]), 4), "median": round(float(q[1]), 4),
            "p90": round(float(q[2]), 4)}


@dataclass
class Scores:
    """A scores file read back and checked against the folder."""
    values: np.ndarray
    info: dict

    @property
    def higher_is_better(self) -> bool:
        return bool(self.info.get("higher_is_better", True))


def load_scores(data_dir: str | Path, name: str, data: PreparedData | None = None) -> Scores:
    npy, js = score_path(data_dir, name)
    if not npy.is_file() or not js.is_file():
        have = sorted(p.stem for p in (Path(data_dir) / SCORES).glob("*.npy")) if (Path(data_dir) / SCORES).is_dir() else []
        raise RainError(f"{npy}: no such scores (scored here: {', '.join(have) or 'none'}); write them with "
                        f"`rain score {data_dir} --kind ... --name {name}`")
    try:
        info = json.loads(js.read_text(encoding="utf-8"))
        values = np.load(npy)
    except (OSError, ValueError) as exc:
        raise RainError(f"{npy}: unreadable scores ({exc}); score again") from None
    data = data or PreparedData(data_dir)
    if info.get("shards") != _fingerprint(data) or len(values) != info.get("documents"):
        raise RainError(f"{npy}: scored for other training shards than the folder holds now (re-prepared or "
                        f"rewritten since); score again with `rain score {data_dir} --name {name} ...`")
    return Scores(values, info)


# ----------------------------------------------------------------------------- choosing what to keep


def parse_rules(thresholds: list[str] | None, quantiles: list[str] | None, sources: list[str]) -> dict:
    """`[SOURCE=]VALUE` options -> {source or None (every other source): ("threshold" | "quantile", value)}."""
    rules: dict = {}
    for kind, items in (("threshold", thresholds or []), ("quantile", quantiles or [])):
        flag = "--threshold" if kind == "threshold" else "--keep-quantile"
        for item in items:
            source, _, text = item.rpartition("=")
            source = source or None
            if source is not None and source not in sources:
                raise RainError(f"{flag} {item}: no source {source!r} in the folder (sources: {', '.join(sources)})")
            try:
                value = float(text)
            except ValueError:
                raise RainError(f"{flag} {item}: expected [SOURCE=]NUMBER") from None
            if kind == "quantile" and not 0 < value <= 1:
                raise RainError(f"{flag} {item}: the share of each source's documents to keep, in (0, 1]")
            if source in rules:
                raise RainError(f"{flag} {item}: {'source ' + source if source else 'the default'} already has a rule")
            rules[source] = (kind, value)
    if not rules:
        raise RainError("say what to keep: --threshold [SOURCE=]X or --keep-quantile [SOURCE=]Q")
    return rules


def keep_mask(values: np.ndarray, sources: np.ndarray, names: list[str], rules: dict,
              higher_is_better: bool) -> tuple[np.ndarray, dict[str, float | None]]:
    """Which documents pass, and the threshold applied to each source (None: kept whole). A threshold keeps
    scores at or above it (at or below it for perplexity, lower is better); a quantile q keeps a source's best
    q of its documents (its threshold: the score of the ceil(q x n)-th best; ties with it are kept). An unscored
    document (NaN: an empty text) never passes."""
    keep = np.ones(len(values), dtype=bool)
    applied: dict[str, float | None] = {}
    sign = 1.0 if higher_is_better else -1.0
    for sid, name in enumerate(names):
        mine = sources == sid
        rule = rules.get(name, rules.get(None))
        if rule is None or not mine.any():
            applied[name] = None
            continue
        kind, value = rule
        v = values[mine] * sign  # higher is better from here on
        if kind == "quantile":
            finite = np.sort(v[np.isfinite(v)])[::-1]
            k = int(np.ceil(value * len(finite)))
            cut = float(finite[k - 1]) if k else np.inf
        else:
            cut = value * sign
        keep[mine] = np.isfinite(v) & (v >= cut)
        applied[name] = float(cut * sign) if np.isfinite(cut) else None
    return keep, applied


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS - 3] + "..."


def filter_report(data: PreparedData, scores: Scores, keep: np.ndarray, applied: dict, rules: dict,
                  samples: int = 3) -> dict:
    """Counts per source kept and dropped, and the `samples` documents nearest the threshold on each side."""
    docs = split_documents(data, SPLIT)
    tokenizer = Tokenizer.from_file(data.tokenizer_path)
    stream = data.stream(SPLIT)
    sign = 1.0 if scores.higher_is_better else -1.0

    def text(d: int) -> str:
        s = int(docs.starts[d])
        return tokenizer.decode(stream.read(s, s + int(docs.lengths[d])).tolist())

    per_source = {}
    for sid, name in enumerate(data.source_names):
        mine = np.flatnonzero(docs.sources == sid)
        if not len(mine):
            continue
        kept, dropped = mine[keep[mine]], mine[~keep[mine]]
        rule = rules.get(name, rules.get(None))
        entry = {"rule": None if rule is None else {rule[0]: rule[1]}, "threshold": applied.get(name),
                 "documents": len(mine), "kept": len(kept), "dropped": len(dropped),
                 "tokens_kept": int(docs.lengths[kept].sum()), "tokens_dropped": int(docs.lengths[dropped].sum()),
                 "kept_samples": [], "dropped_samples": []}
        v = scores.values * sign
        # the kept documents with the worst scores and the dropped ones with the best: the threshold's two sides
        for key, group, order in (("kept_samples", kept, 1), ("dropped_samples", dropped, -1)):
            finite = group[np.isfinite(v[group])]
            for d in finite[np.argsort(order * v[finite], kind="stable")][:samples]:
                entry[key].append({"document": int(d), "score": round(float(scores.values[d]), 4),
                                   "excerpt": _excerpt(text(int(d)))})
        per_source[name] = entry
    total = {k: sum(e[k] for e in per_source.values())
             for k in ("documents", "kept", "dropped", "tokens_kept", "tokens_dropped")}
    return {"scores": scores.info["name"], "kind": scores.info["kind"], "model": scores.info.get("model"),
            "higher_is_better": scores.higher_is_better, "total": total, "by_source": per_source}


def report_markdown(report: dict) -> str:
    better = "higher" if report["higher_is_better"] else "lower"
    lines = [f"# Quality filter: scores `{report['scores']}` ({report['kind']}, {better} is better)", ""]
    if report.get("model"):
        lines += [f"Model: `{report['model']}`", ""]
    t = report["total"]
    lines += [(f"Kept {t['kept']:,} of {t['documents']:,} training documents ({t['tokens_kept']:,} tokens); "
              f"dropped {t['dropped']:,} ({t['tokens_dropped']:,} tokens)."), "",
              "| source | rule | threshold | documents | kept | dropped | tokens dropped |", "|---|---|---|---|---|---|---|"]
    for name, e in report["by_source"].items():
        rule = ", ".join(f"{k} {v:g}" for k, v in (e["rule"] or {}).items()) or "kept whole"
        thr = "-" if e["threshold"] is None else f"{e['threshold']:.4g}"
        lines.append(f"| {name} | {rule} | {thr} | {e['documents']:,} | {e['kept']:,} | {e['dropped']:,} | "
                     f"{e['tokens_dropped']:,} |")
    for name, e in report["by_source"].items():
        for key, title in (("kept_samples", "kept, nearest the threshold"), ("dropped_samples", "dropped, nearest the threshold")):
            if e[key]:
                lines += ["", f"## {name}: {title}", ""]
                lines += [f"- document {s['document']}, score {s['score']:.4g}: {s['excerpt']}" for s in e[key]]
    return "\n".join(lines) + "\n"


def filter_folder(data_dir: str | Path, name: str, thresholds: list[str] | None = None,
                  quantiles: list[str] | None = None, drop: bool = False, out: str | Path | None = None,
                  samples: int = 3, log: Callable[[str], None] = print) -> dict:
    """Choose the documents to keep by scores/NAME, write scores/NAME.filter.md/.json (in `out` when given) and,
    with drop, rewrite the training split in place, or with out, write the filtered folder as a copy there."""
    data_dir = Path(data_dir)
    data = PreparedData(data_dir)
    scores = load_scores(data_dir, name, data)
    names = data.source_names
    rules = parse_rules(thresholds, quantiles, names)
    docs = split_documents(data, SPLIT)
    keep, applied = keep_mask(scores.values, docs.sources, names, rules, scores.higher_is_better)
    report = filter_report(data, scores, keep, applied, rules, samples)
    if drop and out is not None:
        raise RainError("--drop rewrites the folder in place and --out writes a filtered copy: choose one")
    target = data_dir
    if out is not None:
        target = Path(out)
        _copy_folder(data, target)
    report_dir = target / SCORES
    report_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report_dir / f"{name}.filter.json", report)
    write_atomic(report_dir / f"{name}.filter.md", report_markdown(report).encode())
    if drop or out is not None:
        dropped = np.flatnonzero(~keep)
        record = {"scores": name, "kind": scores.info["kind"], "model": scores.info.get("model"),
                  "rules": {(k or "*"): {kind: v} for k, (kind, v) in rules.items()}}
        if len(dropped):
            drop_documents(target, dropped, record, rules={f"{name}": dropped}, family=f"quality:{name}",
                           history="quality_filtered", log=log, scanned=data.manifest["splits"][SPLIT])
            _realign_scores(target, keep)
        report["dropped"] = {"documents": len(dropped), "folder": str(target)}
        write_json_atomic(report_dir / f"{name}.filter.json", report)
    report["path"] = str(report_dir / f"{name}.filter.md")
    return report


def _copy_folder(data: PreparedData, target: Path) -> None:
    """The files the manifest lists (and the scores) copied into a new folder, which must not hold data yet."""
    if (target / MANIFEST).exists():
        raise RainError(f"--out {target}: already holds a prepared folder; choose a new folder")
    target.mkdir(parents=True, exist_ok=True)
    files = {data.manifest.get("tokenizer", "tokenizer.json")}
    for records in data.manifest["splits"].values():
        for rec in records:
            files.update(n for n in (rec["file"], rec.get("index")) if n)
    for extra in ("report.md", "report.json", "doc_lengths.png"):
        if (data.dir / extra).is_file():
            files.add(extra)
    for f in sorted(files):
        shutil.copy2(data.dir / f, target / f)
    if (data.dir / SCORES).is_dir():
        shutil.copytree(data.dir / SCORES, target / SCORES, dirs_exist_ok=True)
    shutil.copy2(data.dir / MANIFEST, target / MANIFEST)  # last: until it is there, the copy is no folder


def _realign_scores(folder: Path, keep: np.ndarray) -> None:
    """Every scores file of the folder cut to the documents kept, with the new shards as its fingerprint."""
    data = PreparedData(folder)
    fingerprint = _fingerprint(data)
    for js in sorted((folder / SCORES).glob("*.json")):
        if js.name.endswith(".filter.json"):
            continue
        npy = js.with_suffix(".npy")
        try:
            info = json.loads(js.read_text(encoding="utf-8"))
            values = np.load(npy)
        except (OSError, ValueError):
            continue  # unreadable: load_scores says so when it is used
        if len(values) != len(keep):
            continue  # stale already: load_scores refuses it
        _write_scores(npy, values[keep])
        write_json_atomic(js, {**info, "documents": int(keep.sum()), "shards": fingerprint})
