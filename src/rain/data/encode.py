"""Parallel filtering and tokenising: the main process reads records in chunks, worker processes (one per
core) check, hash and encode them, and `DocStream` hands the results back one document at a time, in order.

Results depend only on the records, never on the chunking or the number of workers, so a run with 1 or N
workers, interrupted or not, produces the same documents."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import chain
from typing import Iterator, NamedTuple

import numpy as np

from rain.config import DataConfig
from rain.data.filters import (FilterConfig, Signer, detect_language, detects_language, gopher_reason, length_reason,
                               normalized_hash, word_hashes)
from rain.data.sources import Record, Source, read_records

CHUNK_BYTES = 1 << 20
CHUNK_RECORDS = 2048


def is_validation(data: bytes, seed: int, fraction: float) -> bool:
    """Held out by a keyed hash of the document itself, never by its position in a stream."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(data, digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


@dataclass(frozen=True)
class Job:
    """What a worker does to every document of a chunk (sent with each chunk; small)."""
    filters: FilterConfig
    prose: bool
    val_seed: int
    val_fraction: float
    tokenizer: str | None  # tokenizer.json path; None: check only, do not encode
    dtype: str = "uint16"
    dedup: bool = False  # compute the exact-dedup hash (and the MinHash signature when near_dedup)


class Processed(NamedTuple):
    reasons: list[str | None]
    val: np.ndarray
    nbytes: np.ndarray
    hashes: list[int]
    signatures: np.ndarray | None
    lengths: np.ndarray
    tokens: np.ndarray
    languages: list[str]  # ISO 639-1 code per document; "" where not detected (no need, or dropped before)
    chars: np.ndarray


class Doc(NamedTuple):
    record: Record
    reason: str | None = None
    val: bool = False
    nbytes: int = 0
    hash: int = 0
    signature: np.ndarray | None = None
    tokens: np.ndarray | None = None
    language: str = ""
    chars: int = 0


_tokenizers: dict = {}
_signers: dict = {}


def _init_worker(parent: int) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    # A worker waits on a queue whose other end it shares, so it never notices a parent killed with -9: watch.
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()


def _exit_when_orphaned(parent: int, every: float = 0.5) -> None:
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def process(texts: list[str], job: Job) -> Processed:
    f = job.filters
    n = len(texts)
    reasons: list[str | None] = [None] * n
    val = np.zeros(n, dtype=bool)
    nbytes = np.zeros(n, dtype=np.int64)
    hashes = [0] * n
    near = job.dedup and f.near_dedup
    signer = _signers.setdefault((f.num_perm, f.shingle_words), Signer(f.num_perm, f.shingle_words)) if near else None
    signatures = np.zeros((n, f.num_perm), dtype=signer.template.hashvalues.dtype) if near else None
    languages = [""] * n
    detect = detects_language(f, job.prose)
    for i, text in enumerate(texts):
        data = text.encode("utf-8")
        nbytes[i] = len(data)
        val[i] = is_validation(data, job.val_seed, job.val_fraction)
        reason = length_reason(text, f)
        words = None
        if reason is None and detect:
            languages[i] = detect_language(text)
            if f.languages and languages[i] not in f.languages:
                reason = f"language:{languages[i]}"
        # The Gopher rules are English rules (stop words, word lengths): other languages are not checked by them.
        if reason is None and job.prose and f.quality and languages[i] in ("", "en"):
            words = word_hashes(text)
            reason = gopher_reason(text, *words)
        reasons[i] = reason
        if reason is None and job.dedup:
            hashes[i] = normalized_hash(text)
            if near:
                signatures[i] = signer.signature((words or word_hashes(text))[0])
    dtype = np.dtype(job.dtype)
    chars = np.fromiter(map(len, texts), dtype=np.int64, count=n)
    if job.tokenizer is None or not n:
        return Processed(reasons, val, nbytes, hashes, signatures, np.zeros(n, np.int64), np.zeros(0, dtype), languages, chars)
    stat = os.stat(job.tokenizer)
    key = (job.tokenizer, stat.st_mtime_ns, stat.st_size)  # a new prepare in the same folder has a new file
    if key not in _tokenizers:
        from rain.data.tokenizer import Tokenizer  # with the pre-tokenisation its sidecar records

        _tokenizers.clear()
        _tokenizers[key] = Tokenizer.from_file(job.tokenizer)
        # A document that quotes "<|endoftext|>" gets ordinary tokens: only the writer's own end-of-text
        # tokens mark document boundaries (which document masking relies on).
        _tokenizers[key].hf.encode_special_tokens = True
    # Documents a filter removed are not encoded (their tokens are estimated in the report); duplicates are:
    # whether a document repeats an earlier one is only known in stream order, in the main process.
    kept = [i for i in range(n) if reasons[i] is None]
    ids = _tokenizers[key].encode_batch([texts[i] for i in kept])
    lengths = np.zeros(n, dtype=np.int64)
    lengths[kept] = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    tokens = np.fromiter(chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
    return Processed(reasons, val, nbytes, hashes, signatures, lengths, tokens, languages, chars)


class Pool:
    """Worker processes, forked where possible (spawn cannot start from a script on stdin or a notebook);
    the children turn the tokenizer library's own threads off. One worker: everything runs in this process."""

    def __init__(self, workers: int):
        self.workers = workers if workers > 0 else (os.cpu_count() or 1)
        self.executor = None

    def submit(self, texts: list[str], job: Job) -> Future:
        if self.executor is None and self.workers > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self.executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(method),
                                                initializer=_init_worker, initargs=(os.getpid(),))
        if self.executor is not None:
            return self.executor.submit(process, texts, job)
        done: Future = Future()
        done.set_result(process(texts, job))
        return done

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def record_cap(max_doc_chars: int, filters: FilterConfig) -> int:
    """The length above which records are cut into pieces: data.max_doc_chars (0: none), or the length filter's
    maximum if that is higher, so that every record cut is one the filter drops whole (see _filtered_piece)."""
    return max(max_doc_chars, filters.max_chars) if max_doc_chars else 0


def _filtered_piece(record: Record, job: Job) -> bool:
    """A piece of a record longer than the filter's max_chars: dropped like the record, without encoding it."""
    return record.split and record.text is not None and job.filters.max_chars > 0


class DocStream:
    """One source's records from `start` on, processed by the pool a few chunks ahead of need. A record longer
    than max_chars (data.max_doc_chars) is cut into pieces, each a document, so no worker holds more."""

    def __init__(self, source: Source, seed: int, pool: Pool, job: Job, start=(0, 0, 0), keep_text: bool = False,
                 max_chars: int = DataConfig.max_doc_chars):
        self.records = read_records(source, seed, start, record_cap(max_chars, job.filters))
        self.pool, self.job, self.keep_text = pool, job, keep_text
        self.inflight: deque[tuple[list[Record], Future]] = deque()
        self.ready: deque[Doc] = deque()
        self.depth = max(2, pool.workers)
        self.done = False

    def _submit(self) -> None:
        chunk, size = [], 0
        for record in self.records:
            chunk.append(record)
            size += len(record.text) if record.text is not None else 0
            if size >= CHUNK_BYTES or len(chunk) >= CHUNK_RECORDS:
                break
        if not chunk:
            self.done = True
            return
        texts = [r.text for r in chunk if r.text is not None and not _filtered_piece(r, self.job)]
        self.inflight.append((chunk, self.pool.submit(texts, self.job)))

    def _fill(self) -> None:
        while not self.done and len(self.inflight) < self.depth:
            self._submit()

    def _unpack(self, chunk: list[Record], out: Processed) -> Iterator[Doc]:
        offsets = np.concatenate([[0], np.cumsum(out.lengths)])
        j = 0
        for record in chunk:
            if record.text is None:
                yield Doc(record)
                continue
            if _filtered_piece(record, self.job):
                nbytes = len(record.text.encode("utf-8", "surrogatepass"))
                rec = record if self.keep_text else record._replace(text="")
                yield Doc(rec, "too_long", nbytes=nbytes, tokens=np.zeros(0, np.dtype(self.job.dtype)))
                continue
            sig = out.signatures[j] if out.signatures is not None else None
            rec = record if self.keep_text else record._replace(text="")
            yield Doc(rec, out.reasons[j], bool(out.val[j]), int(out.nbytes[j]), out.hashes[j], sig,
                      out.tokens[offsets[j] : offsets[j + 1]], out.languages[j], int(out.chars[j]))
            j += 1

    def next(self) -> Doc | None:
        if not self.ready:
            self._fill()
            if not self.inflight:
                return None
            chunk, future = self.inflight.popleft()
            self.ready.extend(self._unpack(chunk, future.result()))
            self._fill()
        return self.ready.popleft() if self.ready else self.next()
