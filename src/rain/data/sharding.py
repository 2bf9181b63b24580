"""The shard pass of `rain prepare`: each source's documents are read, filtered, held out or deduplicated,
drawn in the mixture's token shares and written to shards, with every decision counted per source.

It checkpoints after every finished training shard (source positions, counters, writers, dedup index), so
an interrupted run continues from there and writes exactly the same shards."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np

from rain.config import RunConfig
from rain.data.encode import Doc, DocStream, Job, Pool
from rain.data.filters import Deduper, FilterConfig, detects_language
from rain.data.mixture import Mixture, pick_source
from rain.data.shards import MANIFEST, ShardWriter, file_sha256, token_dtype
from rain.files import write_atomic, write_json_atomic
from rain.data.sources import Source
from rain.data.tokenizer import Tokenizer
from rain.errors import RainError
from rain.progress import progress

STATE = ".prepare_state.npz"  # one file (JSON state + arrays), so one atomic write makes a checkpoint
FILTERED_UNENCODED = ("too_short", "too_long", "language", "quality")
SKIPPED_LISTED = 100  # binary files/records (and too-long records) named per source in the manifest (all are counted)
ISSUES = ("bad_json", "missing_field", "empty", "binary", "too_long")


def _counter() -> dict:
    return {"documents": 0, "tokens": 0, "bytes": 0}


def _new_stats() -> dict:
    # records: whole input records; split: those longer than data.max_doc_chars, cut into pieces (each piece is a
    # document); skipped_files / skipped_too_long: the binary and the too-long files and records, by name
    return {"input": {"records": 0, **dict.fromkeys(ISSUES, 0), "split": 0, "bad_bytes": 0,
                      "examples": [], "skipped_files": [], "skipped_too_long": []},
            "removed": {}, "train": _counter(), "val": _counter()}


@dataclasses.dataclass
class SourceRun:
    """One source's place in the run."""
    source: Source
    filters: FilterConfig
    job: Job
    epoch: int = 1
    cursor: tuple = (0, 0, 0, 0)  # the next record (location, file, record, piece) to read
    ordinal: int = 0  # records read so far in this epoch
    head: Doc | None = None  # the next training candidate, read but not yet taken
    head_ordinal: int = 0
    exhausted: bool = False
    kept: bytearray = dataclasses.field(default_factory=bytearray)  # bit per epoch-1 record that went to training
    stream: DocStream | None = None


class ShardRun:
    def __init__(self, cfg: RunConfig, mixture: Mixture, out: Path, pool: Pool, tokenizer: Tokenizer, key: str, log):
        self.cfg, self.mixture, self.out, self.pool, self.key, self.log = cfg, mixture, out, pool, key, log
        d = cfg.data
        self.dtype = token_dtype(cfg.model.vocab_size)
        self.eot = tokenizer.eot_id
        self.tokenizer_sha = file_sha256(out / "tokenizer.json")
        dedup = FilterConfig(**{**dataclasses.asdict(mixture.filters),
                                "exact_dedup": any(mixture.source_filters(s).exact_dedup for s in mixture.sources),
                                "near_dedup": any(mixture.source_filters(s).near_dedup for s in mixture.sources)})
        self.deduper = Deduper(dedup, out)
        self.runs = []
        for source in mixture.sources:
            f = mixture.source_filters(source)
            job = Job(f, source.kind == "prose", d.seed, d.val_fraction, str(out / "tokenizer.json"), self.dtype.name,
                      dedup=dedup.exact_dedup or dedup.near_dedup)
            self.runs.append(SourceRun(source, f, job))
        everything = [r.source.name for r in self.runs
                      if r.job.prose and r.filters.quality and not detects_language(r.filters, True)]
        if everything:
            log(f"note: langid is not installed, so the Gopher rules (written for English) check every document of "
                f"{', '.join(everything)}, whatever its language; pip install 'rain[lang]' to check English only")
        self.train = ShardWriter(out, "train", self.dtype, d.shard_tokens, self.eot)
        self.val = ShardWriter(out, "val", self.dtype, d.shard_tokens, self.eot)
        self.labels: list[str] = []
        self.stats: dict[str, dict] = {}
        self.ended: dict = {}
        self.clock = 0.0  # the catch-up target once the budget is reached
        self.checkpointed = 0

    # --- accounting ---

    def _label(self, doc: Doc, run: SourceRun) -> str:
        label = doc.record.label or run.source.name
        if label not in self.stats:
            self.labels.append(label)
            self.stats[label] = _new_stats()
            self.stats[label]["language"] = _language_stats(run)
        return label

    def _count_input(self, doc: Doc, label: str) -> None:
        inp, record = self.stats[label]["input"], doc.record
        if record.pos[3] == 0:  # a record, or the first piece of one
            inp["records"] += 1
        elif record.pos[3] == 1:
            inp["split"] = inp.get("split", 0) + 1  # .get (here and below): a state saved before the key existed
        inp["bad_bytes"] += record.bad_bytes
        if record.issue:
            inp[record.issue] = inp.get(record.issue, 0) + 1
            if len(inp["examples"]) < 5:
                inp["examples"].append(f"{record.issue} at {record.where}")
            named = {"binary": "skipped_files", "too_long": "skipped_too_long"}.get(record.issue)
            if named and len(inp.setdefault(named, [])) < SKIPPED_LISTED:
                inp[named].append(record.where)

    def _remove(self, doc: Doc, label: str, reason: str) -> None:
        family, _, rule = reason.partition(":")
        bucket = self.stats[label]["removed"].setdefault(family, {**_counter(), **({"rules": {}} if rule else {})})
        if not (reason == "too_long" and doc.record.split and doc.record.pos[3] > 0):  # a record cut into pieces: once
            bucket["documents"] += 1
        bucket["tokens"] += len(doc.tokens)
        bucket["bytes"] += doc.nbytes
        if rule:
            bucket["rules"][rule] = bucket["rules"].get(rule, 0) + 1

    def _write(self, writer: ShardWriter, split: str, doc: Doc, label: str) -> None:
        writer.add(doc.tokens, self.labels.index(label))
        bucket = self.stats[label][split]
        bucket["documents"] += 1
        bucket["tokens"] += len(doc.tokens) + 1
        bucket["bytes"] += doc.nbytes
        if split == "train" and doc.language:
            shares = self.stats[label].setdefault("language", {}).setdefault("train", {})
            counts = shares.setdefault(doc.language, {"documents": 0, "chars": 0})
            counts["documents"] += 1
            counts["chars"] += doc.chars

    def _is_duplicate(self, doc: Doc, run: SourceRun, label: str) -> bool:
        dup = self.deduper.check(doc.hash, doc.signature, run.filters.exact_dedup, run.filters.near_dedup)
        if dup:
            self._remove(doc, label, dup)
            return True
        self.deduper.add(doc.hash, doc.signature)
        return False

    # --- reading ---

    def _next_epoch(self, run: SourceRun) -> bool:
        if self.mixture.on_exhausted != "upsample" or run.epoch >= self.mixture.max_epochs or not any(run.kept):
            return False
        run.epoch, run.cursor, run.ordinal, run.stream = run.epoch + 1, (0, 0, 0, 0), 0, None
        return True

    def head(self, run: SourceRun) -> Doc | None:
        """Read on to the source's next training candidate, routing held-out documents to the validation
        shards and counting everything that is dropped on the way."""
        while run.head is None and not run.exhausted:
            if run.stream is None:
                run.stream = DocStream(run.source, self.cfg.data.seed, self.pool, run.job, start=run.cursor,
                                       max_chars=self.cfg.data.max_doc_chars)
            doc = run.stream.next()
            if doc is None:
                run.exhausted = not self._next_epoch(run)
                continue
            ordinal, run.ordinal = run.ordinal, run.ordinal + 1
            pos = doc.record.pos
            run.cursor = (*pos[:3], pos[3] + 1)  # the record's next piece, or (if none) the next record
            if run.epoch > 1:  # a repeat epoch replays exactly the documents the first one trained on
                if ordinal >> 3 < len(run.kept) and run.kept[ordinal >> 3] >> (ordinal & 7) & 1:
                    run.head, run.head_ordinal = doc, ordinal
                continue
            label = self._label(doc, run)
            language = self.stats[label].get("language", {})  # absent from a state saved before languages
            if doc.reason is None and doc.language not in ("", "en") and language.get("gopher"):
                language["not_gopher_checked"] += 1
            if doc.record.issue or doc.reason or doc.val:
                self._count_input(doc, label)
            if doc.record.issue:
                continue
            if doc.reason:
                self._remove(doc, label, doc.reason)
            elif doc.val:
                if not self._is_duplicate(doc, run, label):
                    self._write(self.val, "val", doc, label)
            else:
                run.head, run.head_ordinal = doc, ordinal
        return run.head

    def take(self, run: SourceRun) -> int:
        """Write the source's head to the training shards unless it is a duplicate; returns tokens written."""
        doc, run.head = run.head, None
        label = self._label(doc, run)
        if run.epoch == 1:
            self._count_input(doc, label)
            if self._is_duplicate(doc, run, label):
                return 0
            if self.mixture.on_exhausted == "upsample":
                run.kept.extend(b"\0" * (run.head_ordinal // 8 + 1 - len(run.kept)))
                run.kept[run.head_ordinal >> 3] |= 1 << (run.head_ordinal & 7)
        self._write(self.train, "train", doc, label)
        if self.train.index > self.checkpointed:
            self.checkpoint()
        return len(doc.tokens) + 1

    # --- the mixture ---

    def train_tokens(self) -> int:
        return sum(s["train"]["tokens"] for s in self.stats.values())

    def train_docs(self) -> int:
        return sum(s["train"]["documents"] for s in self.stats.values())

    def _limits_reached(self) -> bool:
        budget, max_docs = self.mixture.budget, self.cfg.data.max_docs
        if budget and self.train_tokens() >= budget:
            self.ended = {"reason": "budget", "message": f"reached the budget of {budget:,} training tokens"}
        elif max_docs and self.train_docs() >= max_docs:
            self.ended = {"reason": "max_docs", "message": f"reached data.max_docs = {max_docs:,} documents"}
        return bool(self.ended)

    def run(self) -> None:
        bar = progress(total=self.mixture.budget or None, initial=self.train_tokens(), unit="tok", unit_scale=True, desc="prepare")
        try:
            if self.mixture.weighted:
                self._run_weighted(bar)
            else:
                self._run_whole(bar)
        finally:
            bar.close()

    def _run_weighted(self, bar) -> None:
        weights = [r.source.weight for r in self.runs]
        taken = [self.stats.get(r.source.name, _new_stats())["train"]["tokens"] for r in self.runs]
        while not self._limits_reached():
            heads = [self.head(r) for r in self.runs]
            if any(h is None for h in heads):
                gone = heads.index(None)
                self._catch_up(taken, weights, taken[gone] / weights[gone], bar)
                self._exhausted(self.runs[gone])
                return
            i = pick_source(taken, weights, [len(h.tokens) + 1 for h in heads])
            written = self.take(self.runs[i])
            taken[i] += written
            bar.update(written)
        if self.ended["reason"] == "budget":  # finish the round: the sources behind catch up with the one ahead
            self.clock = self.clock or max(t / w for t, w in zip(taken, weights))  # saved: a resumed run keeps it
            self._catch_up(taken, weights, self.clock, bar)

    def _catch_up(self, taken: list[int], weights: list[float], clock: float, bar) -> None:
        """Bring every source to `clock` (tokens / weight of the source that ran out, or of the one furthest
        ahead at the budget), taking a document only while it moves its source closer to its share, so the
        shares end as exact as the documents allow."""
        while True:
            best = None
            for i, run in enumerate(self.runs):
                head = None if run.exhausted else self.head(run)
                if head is not None and taken[i] + (len(head.tokens) + 1) / 2 <= weights[i] * clock:
                    best = i if best is None or taken[i] / weights[i] < taken[best] / weights[best] else best
            if best is None:
                return
            written = self.take(self.runs[best])
            taken[best] += written
            bar.update(written)

    def _run_whole(self, bar) -> None:
        for run in self.runs:
            while not self._limits_reached() and self.head(run) is not None:
                bar.update(self.take(run))
            if self.ended:
                return
        self.ended = {"reason": "all_read", "message": "read every source to the end"}

    def _exhausted(self, run: SourceRun) -> None:
        name, total, budget = run.source.name, self.train_tokens(), self.mixture.budget
        epochs = f" after {run.epoch} epoch(s)" if self.mixture.on_exhausted == "upsample" else ""
        if budget:
            fix = ("raise max_epochs" if self.mixture.on_exhausted == "upsample"
                   else 'set on_exhausted = "upsample" with max_epochs > 1')
            message = (f"source {name} ran out{epochs}: the corpus stops at {total:,} of the {budget:,}-token budget, "
                       f"with the shares kept; add data, lower [mixture] budget, or {fix}")
        else:
            message = f"source {name} is used up{epochs}: the corpus ends at {total:,} tokens, with the shares kept (budget = 0)"
        self.ended = {"reason": "exhausted", "source": name, "short": bool(budget), "message": message}

    # --- checkpoints ---

    def checkpoint(self) -> None:
        train_state, train_docs = self.train.checkpoint()
        val_state, val_docs = self.val.checkpoint()
        sources = []
        for run in self.runs:
            cursor, ordinal = (run.head.record.pos, run.head_ordinal) if run.head is not None else (run.cursor, run.ordinal)
            sources.append({"epoch": run.epoch, "cursor": list(cursor), "ordinal": ordinal, "exhausted": run.exhausted})
        state = {"fingerprint": self.key, "tokenizer_sha256": self.tokenizer_sha, "train": train_state, "val": val_state,
                 "dedup": self.deduper.checkpoint(), "labels": self.labels, "stats": self.stats, "sources": sources,
                 "clock": self.clock}
        arrays = {f"kept_{i}": np.frombuffer(bytes(run.kept), dtype=np.uint8) for i, run in enumerate(self.runs)}
        buf = io.BytesIO()
        np.savez(buf, state=np.array(json.dumps(state)), train_docs=train_docs, val_docs=val_docs, **arrays)
        write_atomic(self.out / STATE, buf.getvalue())
        self.checkpointed = self.train.index

    def restore(self, state: dict, arrays) -> None:
        d = self.cfg.data
        self.train = ShardWriter.resume(self.out, "train", self.dtype, d.shard_tokens, self.eot, state["train"], arrays["train_docs"])
        self.val = ShardWriter.resume(self.out, "val", self.dtype, d.shard_tokens, self.eot, state["val"], arrays["val_docs"])
        self.deduper.restore(state["dedup"])
        self.labels, self.stats, self.clock = state["labels"], state["stats"], state["clock"]
        for i, (run, saved) in enumerate(zip(self.runs, state["sources"])):
            run.epoch, run.cursor, run.ordinal = saved["epoch"], tuple(saved["cursor"]), saved["ordinal"]
            run.exhausted = saved["exhausted"]
            run.kept = bytearray(arrays[f"kept_{i}"].tobytes())
        self.checkpointed = self.train.index
        self.log(f"resuming {self.out} after training shard {self.train.index - 1} ({self.train_tokens():,} tokens)")

    # --- the end ---

    def _estimate_filtered_tokens(self) -> None:
        """Documents a length or quality filter removed were never encoded: their tokens are their bytes over
        the source's bytes per token (duplicates were encoded and are exact)."""
        for stats in self.stats.values():
            kept = [stats["train"], stats["val"]]
            tokens = sum(b["tokens"] - b["documents"] for b in kept)
            bytes_per_token = sum(b["bytes"] for b in kept) / tokens if tokens > 0 else 4.0
            for family, bucket in stats["removed"].items():
                if family in FILTERED_UNENCODED:
                    bucket["tokens"] = round(bucket["bytes"] / bytes_per_token)
                    bucket["tokens_estimated"] = True

    def finish(self, tokenizer: Tokenizer, timing: dict) -> dict:
        splits = {"train": self.train.close(), "val": self.val.close()}
        self.deduper.close()
        if not splits["train"]:
            raise RainError(f"no training documents: every document of {self.mixture.origin} was held out, filtered or "
                            f"unreadable" + _input_summary(self.stats))
        if not splits["val"]:
            raise RainError(f"no validation documents: none of the {self.train_docs():,} documents kept was held out at "
                            f"data.val_fraction = {self.cfg.data.val_fraction}; raise it (e.g. --set data.val_fraction=0.1) "
                            f"or add more documents")
        self._estimate_filtered_tokens()
        train_tokens = self.train_tokens()
        manifest = {
            "version": 2, "dtype": self.dtype.name, "vocab_size": self.cfg.model.vocab_size, "eot_id": self.eot,
            "tokenizer": "tokenizer.json", "tokenizer_sha256": self.tokenizer_sha, "tokenizer_vocab": tokenizer.vocab_size,
            "splits": splits,
            "sources": {split: {l: self.stats[l][split] for l in self.labels} for split in ("train", "val")},
            "source_names": self.labels,
            "mixture": {
                "origin": self.mixture.origin, "budget": self.mixture.budget, "train_tokens": train_tokens,
                "weights": {r.source.name: r.source.weight for r in self.runs},
                "realised": {l: self.stats[l]["train"]["tokens"] / max(1, train_tokens) for l in self.labels},
                "epochs": {r.source.name: r.epoch for r in self.runs}, "ended": self.ended,
            },
            "input": {l: self.stats[l]["input"] for l in self.labels},
            "filters": {l: self.stats[l]["removed"] for l in self.labels},
            "languages": {l: self.stats[l].get("language", {}) for l in self.labels},
            "bytes_per_token": {l: _bytes_per_token(self.stats[l]["val"]) for l in self.labels},
            "config": {"data": dataclasses.asdict(self.cfg.data), "mixture": self.mixture.to_dict()},
            "seconds": round(sum(timing.values()), 2),  # this session (a resumed run counts its last part)
            "timing": {k: round(v, 2) for k, v in timing.items()},  # tokenizer; shards: read, filter, mix, encode, write
        }
        write_json_atomic(self.out / MANIFEST, manifest)  # written last: its presence means the data is complete
        for path in [self.out / STATE, *self.out.glob(".dedup_*")]:
            path.unlink(missing_ok=True)
        return manifest


def _language_stats(run: SourceRun) -> dict:
    """Training documents and characters per detected language, and how the Gopher rules were applied: to
    documents detected as English ("english"), to every document when langid is missing ("all"), or not at all."""
    stats: dict = {"detected": detects_language(run.filters, run.job.prose), "train": {}}
    if run.job.prose and run.filters.quality:
        stats["gopher"] = "english" if stats["detected"] else "all"
        stats["not_gopher_checked"] = 0
    return stats


def _bytes_per_token(split: dict) -> float | None:
    tokens = split["tokens"] - split["documents"]  # without the <|endoftext|> after each document
    return round(split["bytes"] / tokens, 4) if tokens > 0 else None


def _input_summary(stats: dict) -> str:
    issues = {k: sum(s["input"].get(k, 0) for s in stats.values()) for k in ISSUES}
    removed: dict[str, int] = {}
    for s in stats.values():
        for family, bucket in s["removed"].items():
            removed[family] = removed.get(family, 0) + bucket["documents"]
    parts = [f"{k} {v}" for k, v in {**issues, **removed}.items() if v]
    return f" ({', '.join(parts)})" if parts else ""
