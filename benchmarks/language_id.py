"""Language identification throughput (rain.data.filters.detect_language, langid's model) on one core, against the
Gopher rules it sits beside in `rain prepare`'s workers, on the real samples of ../shared/data: the 300 C4
documents (~2.4 KB each) and the 30 Wikipedia articles (~33 KB each).

    python benchmarks/language_id.py [--repeats 3]

Prints the model's load time (unpacked from langid the first time, then from the user cache) and one markdown
row per way of reading a document: documents/s and MB/s of whole documents (what a prepare sees) and of the
bytes actually read, process CPU time (the machine is shared: wall time is printed too), and how often the answer
differs from reading the whole document."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from rain.data import filters

CORPUS = Path(__file__).resolve().parents[2] / "shared/data/corpus"


def timed(fn, texts, repeats):
    """(best CPU seconds, wall seconds of that repeat, answers) over `repeats` passes."""
    best = None
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        answers = [fn(t) for t in texts]
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        if best is None or cpu < best[0]:
            best = (cpu, wall, answers)
    return best


def worker_rows(texts: list[str], mb: float, repeats: int) -> list[str]:
    """What a prepare worker does to a prose document under the quality rules (Gopher, tokenising with a 16,384-token
    BPE trained on these texts; no dedup), with and without language ID: its share of the worker's time."""
    from rain.data.encode import Job, process
    from rain.data.tokenizer import train_bpe

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        path.write_text(train_bpe(iter(texts), 16384).hf.to_str())
        job = Job(filters.FilterConfig(quality=True), True, 0, 0.0, str(path))
        process(texts[:4], job)  # load the tokenizer
        available, rows = filters.language_id_available, []
        for label, detect in (("without language ID (langid missing)", False), ("with language ID", True)):
            filters.language_id_available = (lambda: True) if detect else (lambda: False)
            cpu, wall, _ = timed(lambda chunk: process(chunk, job), [texts], repeats)
            rows.append(f"| worker: Gopher + tokenise, {label} | {len(texts) / cpu:,.0f} | {mb / cpu:.2f} | - | "
                        f"{wall:.2f} s / {cpu:.2f} s | - |")
        filters.language_id_available = available
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core, as in a prepare worker
    texts = [json.loads(line)["text"] for line in (CORPUS / "c4_demo/c4_demo.jsonl").read_text().splitlines()]
    texts += (CORPUS / "wikipedia_demo/wiki_demo.txt").read_text().splitlines()
    mb = sum(len(t.encode()) for t in texts) / 1e6

    with tempfile.TemporaryDirectory() as cache:
        os.environ["XDG_CACHE_HOME"] = cache
        t0 = time.perf_counter()
        filters.language_model()
        cold = time.perf_counter() - t0
        filters._language = None
        t0 = time.perf_counter()
        filters.language_model()
        warm = time.perf_counter() - t0
    print(f"{len(texts)} documents, {mb:.2f} MB; model load: {cold:.2f} s unpacked from langid, {warm:.3f} s from the cache")

    default = filters.LANGUAGE_PREFIX_CHARS
    rows = []
    answers_whole = None
    for prefix in (len(max(texts, key=len)), 8000, default, 500):
        filters.LANGUAGE_PREFIX_CHARS = prefix
        cpu, wall, answers = timed(filters.detect_language, texts, args.repeats)
        answers_whole = answers_whole or answers
        read = sum(len(t[:prefix].encode()) for t in texts) / 1e6
        differ = sum(a != b for a, b in zip(answers, answers_whole))
        name = "whole document" if prefix >= len(max(texts, key=len)) else f"first {prefix:,} characters"
        rows.append(f"| detect_language, {name}{' (default)' if prefix == default else ''} | {len(texts) / cpu:,.0f} | "
                    f"{mb / cpu:.2f} | {read / cpu:.2f} | {wall:.2f} s / {cpu:.2f} s | {differ} |")
        if prefix == default:
            others = sum(a != "en" for a in answers)
    filters.LANGUAGE_PREFIX_CHARS = default
    from langid.langid import LanguageIdentifier, model

    langid = LanguageIdentifier.from_modelstring(model)
    cpu, wall, _ = timed(lambda t: langid.classify(t[:default].lower())[0], texts, 1)
    rows.append(f"| langid's own classify(), first {default:,} characters | {len(texts) / cpu:,.0f} | {mb / cpu:.2f} | "
                f"- | {wall:.2f} s / {cpu:.2f} s | - |")
    cpu, wall, _ = timed(lambda t: filters.gopher_reason(t, *filters.word_hashes(t)), texts, args.repeats)
    rows.append(f"| Gopher rules (for comparison), whole document | {len(texts) / cpu:,.0f} | {mb / cpu:.2f} | {mb / cpu:.2f} | "
                f"{wall:.2f} s / {cpu:.2f} s | - |")
    rows += worker_rows(texts, mb, args.repeats)
    print(f"detected as not English at the default prefix: {others} of {len(texts)}")
    print("| | documents/s (CPU) | MB/s of documents | MB/s read | wall / CPU | answers unlike the whole document's |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
