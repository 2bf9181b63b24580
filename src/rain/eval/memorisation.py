"""Memorisation audit: the longest span of each generated completion found verbatim in the training data.

Index. The train split is read as one token stream (shards in manifest order). Every window of k tokens
(k = 32 by default) starting at a multiple of `stride` is hashed to 64 bits, and the index stores two sorted
uint64 rows, the window hashes and their stream positions, as `windows.npy` (shape (2, n); memory-mapped
on load, never read whole) beside `index.json` (k, stride, the shards it was built from).

Lookup. Every window of a completion is hashed and binary-searched in the index. A hit only names an
alignment (corpus position - completion offset); the completion is then compared token by token with the
corpus along that alignment, so a reported span is exact: a hash collision never produces one, and a span
is measured to its true ends even when a single one of its windows is in the index. Spans shorter than k
tokens are not measured (reported as 0).

Guarantee. A verbatim span of L tokens holds L - k + 1 consecutive window starts; once L >= k + stride - 1
one of them is a multiple of the stride, so every such span is found, with certainty (no probability).
stride = 1 is exact for every span of at least k tokens.

Bounded memory, 10B tokens on a 24 GB machine. An entry is 16 bytes, so stride 1 would need 160 GB. To find
every span of >= 50 tokens with k = 32, stride = 50 - 32 + 1 = 19: 10e9 / 19 = 526M entries = 8.4 GB on disk,
memory-mapped for lookups (a binary search touches ~30 pages). The build streams the shards in chunks of
`chunk_tokens` (8M: ~20 bytes a token at stride >= 4, 64 at stride 1) and appends entries to 2^b bucket files
by the top b bits of the hash; each bucket is then sorted on its own (~40 bytes an entry) and copied into its
slice of the final array. With memory_bytes = 4 GB, 10B tokens use 8 buckets of ~66M entries (~2.6 GB
each); disk during the build is twice the index. Measured on 2 busy CPU cores: ~12M tokens/s at stride 19
(10B tokens in ~15 min), peak RSS 0.5 GB for 100M tokens.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from rain.data.contamination import mix64  # splitmix64's finaliser, shared with the decontamination scan
from rain.data.prepared import PreparedData, TokenStream
from rain.files import write_json_atomic
from rain.errors import RainError

INDEX_FILE, META_FILE = "windows.npy", "index.json"
HASH_VERSION = 1
BYTES_PER_ENTRY_SORTING = 40  # hashes + positions + argsort order + the reordered copy
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_BASE = np.uint64(0x100000001B3)  # odd, = 3 mod 8: position swaps cannot cancel in the low bits


def window_hashes(tokens: np.ndarray, k: int, stride: int = 1) -> np.ndarray:
    """64-bit hashes of the windows tokens[i:i+k] for i = 0, stride, 2*stride, ... (whole windows only)."""
    n = (len(tokens) - k) // stride + 1 if len(tokens) >= k else 0
    values = np.asarray(tokens).astype(np.uint64)
    values += _GAMMA
    values = mix64(values)
    h = np.zeros(n, dtype=np.uint64)
    for j in range(k):
        h *= _BASE
        h += values[j: j + (n - 1) * stride + 1: stride]
    return mix64(h)


class WindowIndex:
    """A built index: sorted window hashes, their positions, and the token stream to verify hits against."""

    def __init__(self, path: Path, windows: np.ndarray, meta: dict, stream: TokenStream):
        self.path, self.meta, self.stream = path, meta, stream
        self.hashes, self.positions = windows[0], windows[1]
        self.k, self.stride = int(meta["k"]), int(meta["stride"])

    @property
    def guaranteed_span(self) -> int:
        """Every verbatim span of at least this many tokens is found."""
        return self.k + self.stride - 1

    @property
    def nbytes(self) -> int:
        return int(self.hashes.nbytes + self.positions.nbytes)

    def __len__(self) -> int:
        return len(self.hashes)


def _shard_records(data_dir: Path, split: str) -> list[dict]:
    return [{k: rec.get(k) for k in ("file", "tokens", "sha256")} for rec in PreparedData(data_dir).manifest["splits"][split]]


def stride_for(min_span: int = 50, k: int = 32) -> int:
    """The largest stride that still finds every verbatim span of min_span tokens."""
    if min_span < k:
        raise RainError(f"memorisation index: spans shorter than k ({k}) tokens cannot be found; lower k")
    return min_span - k + 1


def bucket_bits(entries: int, memory_bytes: int) -> int:
    """Fewest hash-prefix bits b such that one of the 2^b buckets sorts within memory_bytes."""
    return max(0, math.ceil(math.log2(max(1.0, entries * BYTES_PER_ENTRY_SORTING / memory_bytes))))


def build_index(data_dir: str | Path, out_path: str | Path, k: int = 32, stride: int = 1, split: str = "train",
                memory_bytes: int = 2 << 30, chunk_tokens: int = 1 << 23,
                log: Callable[[str], None] | None = None) -> WindowIndex:
    """Index the k-token windows of a split (every `stride`-th start) into the folder out_path.
    Memory: 20-64 bytes x chunk_tokens while hashing, then at most memory_bytes while sorting a bucket."""
    if k < 1 or stride < 1:
        raise RainError(f"memorisation index: k ({k}) and stride ({stride}) must be at least 1")
    data_dir, out = Path(data_dir), Path(out_path)
    stream = PreparedData(data_dir).stream(split)
    n_windows = max(stream.total - k + 1, 0)
    bits = bucket_bits(-(-n_windows // stride), memory_bytes)
    chunk = max(chunk_tokens // stride, 1) * stride
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)  # an index without its index.json is unfinished
    tmp = out / ".buckets"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files = [open(tmp / f"{b:05d}.bin", "wb") for b in range(1 << bits)]
    counts = np.zeros(1 << bits, dtype=np.int64)
    try:
        for a in range(0, n_windows, chunk):
            h = window_hashes(stream.read(a, min(a + chunk, n_windows) + k - 1), k, stride)
            pairs = np.stack([h, np.arange(a, a + len(h) * stride, stride, dtype=np.uint64)], axis=1)
            bucket = (h >> np.uint64(64 - bits)).astype(np.int64) if bits else np.zeros(len(h), np.int64)
            order = np.argsort(bucket, kind="stable")
            sizes = np.bincount(bucket, minlength=1 << bits)
            for b, part in enumerate(np.split(pairs[order], np.cumsum(sizes)[:-1])):
                if len(part):
                    files[b].write(part.tobytes())
            counts += sizes
            if log:
                log(f"hashed {min(a + chunk, n_windows):,}/{n_windows:,} windows")
    finally:
        for f in files:
            f.close()
    windows = np.lib.format.open_memmap(out / INDEX_FILE, mode="w+", dtype=np.uint64, shape=(2, int(counts.sum())))
    offset = 0
    for b in range(1 << bits):
        pairs = np.fromfile(tmp / f"{b:05d}.bin", dtype=np.uint64).reshape(-1, 2)
        order = np.argsort(pairs[:, 0], kind="stable")  # equal hashes keep their positions in stream order
        windows[0, offset: offset + len(pairs)] = pairs[order, 0]
        windows[1, offset: offset + len(pairs)] = pairs[order, 1]
        offset += len(pairs)
        del pairs, order
    windows.flush()
    del windows
    shutil.rmtree(tmp)
    meta = {"version": HASH_VERSION, "k": k, "stride": stride, "split": split, "data_dir": str(data_dir.resolve()),
            "tokens": stream.total, "entries": int(counts.sum()), "buckets": 1 << bits,
            "guaranteed_span": k + stride - 1, "shards": _shard_records(data_dir, split)}
    write_json_atomic(out / META_FILE, meta)
    return load_index(out, data_dir)


def load_index(path: str | Path, data_dir: str | Path | None = None) -> WindowIndex:
    """Open an index (memory-mapped) with the shards it was built from (data_dir defaults to the recorded one)."""
    path = Path(path)
    if not (path / META_FILE).is_file() or not (path / INDEX_FILE).is_file():
        raise RainError(f"{path}: not a finished memorisation index (no {META_FILE}); build it again")
    meta = json.loads((path / META_FILE).read_text())
    if meta.get("version") != HASH_VERSION:
        raise RainError(f"{path}: index version {meta.get('version')}, this rain reads {HASH_VERSION}; build it again")
    data_dir = Path(data_dir or meta["data_dir"])
    if _shard_records(data_dir, meta["split"]) != meta["shards"]:
        raise RainError(f"{path}: built from other shards than {data_dir}'s {meta['split']} split; build it again")
    windows = np.load(path / INDEX_FILE, mmap_mode="r" if meta["entries"] else None, allow_pickle=False)
    return WindowIndex(path, windows, meta, PreparedData(data_dir).stream(meta["split"]))


class Span(NamedTuple):
    length: int
    start: int  # in the completion, end exclusive
    end: int


def _best_match(index: WindowIndex, token_ids: Sequence[int], max_alignments: int = 4096,
                batch: int = 256) -> tuple[Span, int]:
    """The longest verbatim span and its position in the token stream (-1 when none of >= k tokens).
    max_alignments bounds the work for windows repeated thousands of times in the corpus (boilerplate)."""
    q = np.asarray(token_ids, dtype=np.int64)
    none = (Span(0, 0, 0), -1)
    if len(q) < index.k or len(index) == 0:
        return none
    h = window_hashes(q, index.k)
    lo = np.searchsorted(index.hashes, h, "left")
    hi = np.searchsorted(index.hashes, h, "right")
    hit = np.nonzero(hi > lo)[0]
    if not len(hit):
        return none
    # Every stream position of every hit window, as an alignment: stream position of the completion's token 0.
    per_hit = np.minimum(hi[hit] - lo[hit], max_alignments)
    take = np.repeat(lo[hit], per_hit) + (np.arange(per_hit.sum()) - np.repeat(np.cumsum(per_hit) - per_hit, per_hit))
    alignments = np.unique(index.positions[take].astype(np.int64) - np.repeat(hit, per_hit))[:max_alignments]
    best_len, best_start, best_pos = 0, 0, -1
    for i in range(0, len(alignments), batch):
        rows = alignments[i: i + batch]
        equal = index.stream.gather(rows[:, None] + np.arange(len(q))) == q
        edges = np.diff(np.pad(equal.astype(np.int8), ((0, 0), (1, 1))), axis=1)
        r0, c0 = np.nonzero(edges == 1)  # run starts and ends pair up, row by row in order
        _, c1 = np.nonzero(edges == -1)
        if not len(c0):
            continue
        j = int(np.argmax(c1 - c0))
        if c1[j] - c0[j] > best_len:
            best_len, best_start, best_pos = int(c1[j] - c0[j]), int(c0[j]), int(rows[r0[j]] + c0[j])
    if best_len < index.k:
        return none
    return Span(best_len, best_start, best_start + best_len), best_pos


def longest_verbatim_span(index: WindowIndex, token_ids: Sequence[int]) -> Span:
    """(length, start, end) of the longest span of token_ids found verbatim in the indexed data; (0, 0, 0)
    when there is none of at least k tokens. Exact for spans >= index.guaranteed_span tokens."""
    return _best_match(index, token_ids)[0]


def locate(index: WindowIndex, position: int) -> dict:
    """A stream position as a shard file and an offset in it."""
    shard = int(np.searchsorted(index.stream.starts, position, "right")) - 1
    return {"file": index.meta["shards"][shard]["file"], "offset": int(position - index.stream.starts[shard])}


def audit(completions_token_ids: Sequence[Sequence[int]], index: WindowIndex, min_span: int = 50) -> dict:
    """The share of completions holding a verbatim span of >= min_span tokens, and those spans (token ids
    and where they are in the shards; the caller decodes them)."""
    longest, spans = [], []
    for i, ids in enumerate(completions_token_ids):
        span, pos = _best_match(index, ids)
        longest.append(span.length)
        if span.length >= min_span:
            spans.append({"completion": i, "length": span.length, "start": span.start, "end": span.end,
                          "token_ids": [int(t) for t in ids[span.start: span.end]], "source": locate(index, pos)})
    n = len(longest)
    result = {"completions": n, "min_span": min_span, "with_span": len(spans),
              "share": len(spans) / n if n else 0.0, "longest": longest, "spans": spans,
              "k": index.k, "stride": index.stride, "guaranteed_span": index.guaranteed_span}
    if min_span < index.guaranteed_span:
        result["warning"] = (f"the index (k={index.k}, stride={index.stride}) finds every span of "
                             f">= {index.guaranteed_span} tokens; shorter ones down to {min_span} may be missed")
    return result
