"""Token n-grams in a prepared folder: which documents of a split contain any of a set of given n-grams, and
dropping documents from the training split. This module knows nothing of benchmarks: it matches token sequences,
each owned by a numbered item, which the caller (rain.eval.decontaminate) makes from benchmark items.

Matching. Every text of every item gives its windows of n tokens (a text shorter than n tokens gives one window:
itself, GPT-3's rule for short items). Each window is hashed to 64 bits: a polynomial over per-token random values
(a table, one entry per token id) plus a per-length salt. The split is read in chunks of the memory-mapped
shards; one prefix sum per chunk gives the hash of the window at every position for every window length at once
(hash = (S[i + L] - S[i]) * B^(i + L - 1) with S the prefix sum of v_j * B^-j, all mod 2^64, B odd), so the cost
per token does not grow with n. Two bitmaps of the wanted hashes (of their top bits, packed to stay in the
CPU cache, then of their low bits; one pair per window length) throw away all but ~0.1% of the positions; the
survivors are binary-searched among the sorted wanted hashes and
then compared token by token with the item's window, so a reported match is exact: a hash collision never makes
one. A matching window never crosses a document (items hold no `<|endoftext|>`), so it lies in one document.

Dropping. The kept documents of the split are copied, in order, into new shards written by rain.data.shards'
ShardWriter under numbers after the old ones (`train_000012.bin`, ... when the old ones end at 11), while the
old shards and manifest stay in place and valid. Then manifest.json is replaced atomically: that rename is the
commit. The old shards are deleted after it. A kill before the rename leaves the old folder (plus unlisted new
files, removed by the next drop or by `rain prepare --overwrite`); a kill after it leaves the new folder (plus
unlisted old files, likewise). The folder is never half old and half new.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rain.data.prepared import PreparedData
from rain.data.shards import MANIFEST, ShardWriter, load_doc_index
from rain.data.tokenizer import Tokenizer
from rain.errors import RainError
from rain.files import FolderLock, write_json_atomic

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_BASE = 0x100000001B3  # odd, so it has an inverse mod 2^64
_BASE_INV = pow(_BASE, -1, 1 << 64)
BITMAP_BITS_PER_WINDOW = 5  # 2^5 bitmap entries per wanted window: ~3% of positions pass a bitmap
MAX_BITMAP_BITS = 27  # a 128 MB bool bitmap of low bits
MAX_TOP_BITS = 25  # a 4 MB packed bitmap of top bits: one lookup per position, in the cache


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place on a uint64 array (wrapping arithmetic)."""
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def _powers(base: int, n: int) -> np.ndarray:
    """base^0 .. base^(n-1) mod 2^64."""
    out = np.full(n, base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, dtype=np.uint64)


class Hasher:
    """Hashes of every window of given lengths in a token array, by one prefix sum (see the module docstring)."""

    def __init__(self, table_size: int, max_tokens: int = 1 << 16):
        self.table = mix64(np.arange(table_size, dtype=np.uint64) + _GAMMA)
        self._grow(max_tokens)

    def _grow(self, n: int) -> None:
        self.pow, self.inv = _powers(_BASE, n), _powers(_BASE_INV, n)

    @staticmethod
    def salt(length):
        """A value per window length (an int or an array of them), so windows of different lengths differ."""
        return mix64(np.atleast_1d(np.asarray(length, dtype=np.uint64)) ^ _GAMMA)

    def prefix(self, tokens: np.ndarray) -> np.ndarray:
        """S with S[0] = 0 and S[i + 1] = S[i] + v(tokens[i]) * B^-i."""
        if len(tokens) > len(self.pow):
            self._grow(len(tokens))
        if len(tokens) and int(tokens.max()) >= len(self.table):
            raise RainError(f"token id {int(tokens.max())} is outside the tokenizer's {len(self.table):,} ids; "
                            "the shards and tokenizer.json do not belong together: re-run `rain prepare`")
        v = self.table[tokens]
        v *= self.inv[: len(v)]
        s = np.empty(len(v) + 1, dtype=np.uint64)
        s[0] = 0
        np.cumsum(v, out=s[1:])
        return s

    def windows(self, s: np.ndarray, length: int, count: int | None = None) -> np.ndarray:
        """Hashes of the windows of `length` tokens starting at 0 .. count-1 (default: every whole window)."""
        m = len(s) - length
        m = max(0, m if count is None else min(count, m))
        h = s[length: length + m] - s[:m]
        h *= self.pow[length - 1: length - 1 + m]
        h += self.salt(length)
        return h

    def at(self, s: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Hashes of the windows tokens[starts[k]: starts[k] + lengths[k]] (lengths >= 1), from s = prefix(tokens)."""
        end = starts + lengths
        h = s[end] - s[starts]
        h *= self.pow[end - 1]
        h += self.salt(lengths)
        return h

    def hashes(self, tokens: np.ndarray, length: int) -> np.ndarray:
        return self.windows(self.prefix(np.asarray(tokens)), length)


@dataclass
class _Length:
    """The wanted windows of one length as two bitmaps: a packed one (bits) of their hashes' top bits, small
    enough to stay in the CPU cache, and a bool one of their low bits for the positions that pass it."""
    length: int
    top: np.ndarray
    low: np.ndarray
    shift: np.uint64
    mask: np.uint64

    def candidates(self, h: np.ndarray) -> np.ndarray:
        i = (h >> self.shift).astype(np.int64)
        cand = np.flatnonzero((self.top[i >> 3] >> (i & 7).astype(np.uint8)) & 1)
        return cand[self.low[h[cand] & self.mask]]


def _first_of_runs(hashes: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Stable order by hash, keeping the first of each run of equal (hash, owner) (an owner's entries are adjacent
    because owners are non-decreasing in the input)."""
    order = np.argsort(hashes, kind="stable")
    h, o = hashes[order], owner[order]
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = (h[1:] != h[:-1]) | (o[1:] != o[:-1])
    return order[keep]


class NgramSet:
    """The windows to look for: every n-token window of every text (a shorter text: the whole text), each owned
    by the item (a number) the text belongs to; texts are given grouped by owner (owners non-decreasing). Equal
    windows of one owner count once. Built in batches of about batch_tokens tokens (~40 bytes a token)."""

    def __init__(self, texts: Sequence[Sequence[int]], owners: Sequence[int], n: int, table_size: int,
                 batch_tokens: int = 1 << 21):
        if n < 1:
            raise RainError(f"--ngram must be at least 1, got {n}")
        owners = np.asarray(owners, dtype=np.int64)
        if len(owners) != len(texts) or np.any(np.diff(owners) < 0):
            raise ValueError("texts must come grouped by owner, one owner per text, in non-decreasing order")
        self.n = n
        self.n_owners = int(owners.max(initial=-1)) + 1
        self.hasher = Hasher(table_size)
        arrays = [np.asarray(t, dtype=np.int64) for t in texts]
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        self.base = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.tokens = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
        parts = []
        i = 0
        while i < len(arrays):  # batches of whole texts
            j = max(int(np.searchsorted(self.base, self.base[i] + batch_tokens, "right")) - 1, i + 1)
            parts.append(self._windows(i, min(j, len(arrays)), lengths, owners))
            i = j
        hashes, owner, start, length = (np.concatenate([p[k] for p in parts]) if parts else np.zeros(0, t)
                                        for k, t in enumerate((np.uint64, np.int32, np.int64, np.int32)))
        keep = _first_of_runs(hashes, owner)
        self.hashes, self.owner, self.start, self.length = hashes[keep], owner[keep], start[keep], length[keep]
        self.lengths: list[_Length] = []
        for size in np.unique(self.length):
            wanted = self.hashes[self.length == size]
            bits = int(np.clip(np.ceil(np.log2(len(wanted))) + BITMAP_BITS_PER_WINDOW, 10, MAX_BITMAP_BITS))
            top_bits = min(bits, MAX_TOP_BITS)
            top = np.zeros(1 << top_bits, dtype=bool)
            top[wanted >> np.uint64(64 - top_bits)] = True
            low = np.zeros(1 << bits, dtype=bool)
            low[wanted & np.uint64((1 << bits) - 1)] = True
            self.lengths.append(_Length(int(size), np.packbits(top, bitorder="little"), low,
                                        np.uint64(64 - top_bits), np.uint64((1 << bits) - 1)))

    def _windows(self, i: int, j: int, lengths: np.ndarray, owners: np.ndarray):
        """(hash, owner, start in self.tokens, length) of the windows of texts i..j-1, in text order."""
        a = int(self.base[i])
        s = self.hasher.prefix(self.tokens[a: int(self.base[j])])
        text = np.repeat(np.arange(i, j), lengths[i:j])
        pos = np.arange(len(text), dtype=np.int64)
        size = np.where(pos + self.n <= self.base[text + 1] - a, self.n, 0)  # the n-token windows
        short = np.flatnonzero((lengths[i:j] > 0) & (lengths[i:j] < self.n)) + i
        size[self.base[short] - a] = lengths[short]  # a shorter text: one window, the whole text
        starts = np.flatnonzero(size)  # in text order, so an owner's windows stay together
        size = size[starts]
        h = self.hasher.at(s, starts, size)
        owner = owners[text[starts]].astype(np.int32)
        return h, owner, starts + a, size.astype(np.int32)

    def __len__(self) -> int:
        return len(self.hashes)

    @property
    def longest(self) -> int:
        return max((x.length for x in self.lengths), default=1)

    def short_owners(self) -> np.ndarray:
        """Owners with a text shorter than n tokens (matched as a whole)."""
        return np.unique(self.owner[self.length < self.n])

    def find(self, tokens: np.ndarray, count: int,
             verify_rows: int = 1 << 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(window start, owner, window length) of every wanted window that starts at 0 .. count-1 in tokens (the
        windows may run on past count: pass the next `longest - 1` tokens too). Exact: each hit is compared token
        by token with the item's window."""
        s = self.hasher.prefix(tokens)
        found_pos, found_owner, found_length = [], [], []
        for group in self.lengths:
            h = self.hasher.windows(s, group.length, count)
            cand = group.candidates(h)
            if not len(cand):
                continue
            left = np.searchsorted(self.hashes, h[cand], "left")
            right = np.searchsorted(self.hashes, h[cand], "right")
            hit = right > left
            cand, left, reps = cand[hit], left[hit], (right - left)[hit]
            if not len(cand):
                continue
            pos = np.repeat(cand, reps)
            entry = np.repeat(left, reps) + (np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps))
            offsets = np.arange(group.length)
            for a in range(0, len(pos), verify_rows):  # bounded memory when a corpus holds a benchmark wholesale
                p, e = pos[a: a + verify_rows], entry[a: a + verify_rows]
                same = self.length[e] == group.length  # another length: a hash collision
                p, e = p[same], e[same]
                same = (tokens[p[:, None] + offsets] == self.tokens[self.start[e][:, None] + offsets]).all(axis=1)
                found_pos.append(p[same])
                found_owner.append(self.owner[e[same]].astype(np.int64))
                found_length.append(np.full(int(same.sum()), group.length, dtype=np.int64))
        if not found_pos:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(found_pos), np.concatenate(found_owner), np.concatenate(found_length)


# ----------------------------------------------------------------------------- documents of a split


@dataclass
class Documents:
    """The documents of a split in stream order: start (in the split's token stream), tokens (without the
    `<|endoftext|>` after each) and source id."""
    starts: np.ndarray
    lengths: np.ndarray
    sources: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    def at(self, positions: np.ndarray) -> np.ndarray:
        """The document each stream position lies in."""
        return np.searchsorted(self.starts, positions, "right") - 1


def split_documents(data: PreparedData, split: str) -> Documents:
    records = data.manifest["splits"].get(split, [])
    missing = [r["file"] for r in records if "index" not in r]
    if missing:
        raise RainError(f"{data.dir}/{MANIFEST}: shard {missing[0]} has no document index (a folder from an older "
                        "rain); re-run `rain prepare` to find and drop documents")
    rows, offset = [], 0
    for rec in records:
        r = load_doc_index(data.dir, rec).astype(np.int64).reshape(-1, 3)
        rows.append(r + np.array([offset, 0, 0]))
        offset += int(rec["tokens"])
    r = np.concatenate(rows) if rows else np.zeros((0, 3), np.int64)
    return Documents(r[:, 0].copy(), r[:, 1].copy(), r[:, 2].copy())


@dataclass
class Matches:
    """Which documents of a split hold which owners' windows: one row per (document, owner) pair."""
    split: str
    docs: np.ndarray  # document number in the split (stream order)
    owners: np.ndarray
    windows: np.ndarray  # how many matching windows (positions x windows of the owner) the document holds
    first: np.ndarray  # stream position of the first of them
    first_length: np.ndarray  # its length in tokens
    tokens: int  # tokens scanned
    seconds: float


def _reduce(docs, owners, windows, first, first_length, n_owners: int):
    key = docs * n_owners + owners
    order = np.lexsort((first, key))
    key, windows, first, first_length = key[order], windows[order], first[order], first_length[order]
    starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]])) if len(key) else np.zeros(0, np.int64)
    total = np.add.reduceat(windows, starts) if len(key) else np.zeros(0, np.int64)
    key = key[starts]
    return key // n_owners, key % n_owners, total, first[starts], first_length[starts]


def scan(data: PreparedData, split: str, ngrams: NgramSet, chunk_tokens: int = 1 << 20,
         log: Callable[[int, int], None] | None = None) -> tuple[Matches, Documents]:
    """Every (document, owner) pair of the split where the document holds one of the owner's windows.
    Memory: about 50 bytes x chunk_tokens, plus 24 bytes per document of the split."""
    t0 = time.perf_counter()
    n_owners = max(ngrams.n_owners, 1)
    documents = split_documents(data, split)
    stream = data.stream(split)
    extra = ngrams.longest - 1
    parts: list[tuple] = []
    for a in range(0, stream.total, chunk_tokens):
        count = min(chunk_tokens, stream.total - a)
        tokens = stream.read(a, a + count + extra)
        pos, owner, length = ngrams.find(tokens, count)
        if len(pos):
            gpos = pos + a
            parts.append(_reduce(documents.at(gpos), owner, np.ones(len(pos), np.int64), gpos, length, n_owners))
        if log:
            log(a + count, stream.total)
    if parts:
        merged = _reduce(*(np.concatenate(p) for p in zip(*parts)), n_owners)
    else:
        merged = tuple(np.zeros(0, np.int64) for _ in range(5))
    return Matches(split, *merged, tokens=stream.total, seconds=time.perf_counter() - t0), documents



# ----------------------------------------------------------------------------- dropping documents

SHARD_FILE = re.compile(r"^\.?(train|val)_(\d{6})\.(bin|idx\.npy)(\.partial)?(\.tmp-\d+)?$")
DISK_MARGIN = 1.05


def _unlisted_shard_files(folder: Path, manifest: dict, split: str) -> list[Path]:
    """Shard and index files of the split that the manifest does not list: what a killed drop leaves behind."""
    listed = {name for rec in manifest["splits"].get(split, []) for name in (rec["file"], rec.get("index"))}
    return [p for p in folder.iterdir()
            if p.is_file() and (m := SHARD_FILE.match(p.name)) and m.group(1) == split and p.name not in listed]


def drop_documents(data_dir: str | Path, drop: np.ndarray, record: dict, split: str = "train",
                   rules: dict[str, np.ndarray] | None = None, family: str = "decontamination",
                   log: Callable[[str], None] = print, scanned: list[dict] | None = None,
                   history: str = "decontaminated") -> dict:
    """Rewrite the split without the documents numbered `drop` (stream order, as `split_documents` numbers them),
    safely (see the module docstring). `record` (why they were dropped) is appended to the manifest's
    `history` list (`decontaminated`; rain.data.quality's filter: `quality_filtered`) with the counts; `rules` (a name -> the dropped documents it applies to, e.g. per
    benchmark) is counted per source under manifest `filters[source][family]`, which `rain data report` lists.
    `scanned`: the split's shard records when the documents were numbered; the drop is refused if the folder
    has changed since (the numbers would name other documents). Returns the appended record."""
    folder = Path(data_dir)
    lock = FolderLock(folder, f"a rewrite of its {split} shards (rain decontaminate or rain data filter, --drop)")
    try:
        return _drop(folder, np.unique(np.asarray(drop, dtype=np.int64)), record, split, rules or {}, family, log,
                     scanned, history)
    finally:
        lock.close()


def _drop(folder: Path, drop: np.ndarray, record: dict, split: str, rules: dict, family: str, log,
          scanned: list[dict] | None, history: str) -> dict:
    data = PreparedData(folder)
    manifest = data.manifest
    if scanned is not None and manifest["splits"].get(split) != scanned:
        raise RainError(f"{folder}: its {split} shards changed while it was being scanned (another drop or prepare?); "
                        "nothing was dropped: run the command again")
    for stale in _unlisted_shard_files(folder, manifest, split):  # left by a drop that was killed
        stale.unlink()
    docs = split_documents(data, split)
    if len(drop) and (drop[0] < 0 or drop[-1] >= len(docs)):
        raise ValueError(f"document numbers must be in [0, {len(docs)}), got {drop[0]}..{drop[-1]}")
    if len(drop) == len(docs):
        raise RainError(f"{folder}: every {split} document would be dropped; nothing would be left to train on")
    keep = np.ones(len(docs), dtype=bool)
    keep[drop] = False
    dtype = np.dtype(manifest["dtype"])
    kept_tokens = int((docs.lengths[keep] + 1).sum())
    need = int(kept_tokens * dtype.itemsize * DISK_MARGIN) + 24 * len(docs)
    free = shutil.disk_usage(folder).free
    if len(drop) and free < need:
        raise RainError(f"{folder}: dropping needs {need / 1e9:.2f} GB free for the rewritten {split} shards, "
                        f"{free / 1e9:.2f} GB are free; free some space (nothing was changed)")
    names = data.source_names
    tokenizer = Tokenizer.from_file(data.tokenizer_path)
    stream = data.stream(split)
    records = manifest["splits"][split]
    eot = int(manifest.get("eot_id", tokenizer.eot_id))
    shard_tokens = int((manifest.get("config", {}).get("data", {}) or {}).get("shard_tokens")
                       or max(r["tokens"] for r in records))
    first_free = 1 + max(int(SHARD_FILE.match(r["file"]).group(2)) for r in records)
    by_source = {n: {"documents": 0, "tokens": 0, "bytes": 0} for n in names}
    if len(drop):
        writer = ShardWriter(folder, split, dtype, shard_tokens, eot, start_index=first_free)
        _copy_kept(stream, docs, keep, writer, tokenizer, names, by_source)
        new_records = writer.close()
        if sum(r["tokens"] for r in new_records) != kept_tokens:  # pragma: no cover - a bug, never the user's input
            raise AssertionError("rewritten shards hold another number of tokens than the kept documents")
    else:
        new_records = records
    dropped = {"split": split, "documents": len(drop), "tokens": int((docs.lengths[drop] + 1).sum()),
               "bytes": sum(b["bytes"] for b in by_source.values()),
               "by_source": {n: b for n, b in by_source.items() if b["documents"]}, **record,
               "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if not len(drop):
        return dropped
    new = dict(manifest)
    new["splits"] = {**manifest["splits"], split: new_records}
    stats = {n: dict(v) for n, v in manifest.get("sources", {}).get(split, {}).items()}
    filters = {n: dict(v) for n, v in manifest.get("filters", {}).items()}
    for sid, name in enumerate(names):
        b = by_source[name]
        if not b["documents"]:
            continue
        s = stats.setdefault(name, {"documents": 0, "tokens": 0, "bytes": 0})
        s["documents"] -= b["documents"]
        s["tokens"] -= b["tokens"]
        s["bytes"] -= b["bytes"]
        mine = drop[docs.sources[drop] == sid]
        bucket = dict(filters.get(name, {}).get(family) or {"documents": 0, "tokens": 0, "bytes": 0, "rules": {}})
        bucket["documents"] += b["documents"]
        bucket["tokens"] += b["tokens"] - b["documents"]  # filter buckets count tokens without <|endoftext|>
        bucket["bytes"] += b["bytes"]
        bucket["rules"] = dict(bucket.get("rules", {}))
        for rule, members in rules.items():
            n = int(np.isin(mine, members).sum())
            if n:
                bucket["rules"][rule] = bucket["rules"].get(rule, 0) + n
        filters.setdefault(name, {})[family] = bucket
    new["sources"] = {**manifest.get("sources", {}), split: stats}
    new["filters"] = filters
    if split == "train" and "mixture" in manifest:
        total = sum(s.get("tokens", 0) for s in stats.values())
        new["mixture"] = {**manifest["mixture"], "train_tokens": total,
                          "realised": {n: s.get("tokens", 0) / max(1, total) for n, s in stats.items()}}
    new[history] = [*manifest.get(history, []), dropped]
    write_json_atomic(folder / MANIFEST, new)  # the commit: from here on the folder is the new one
    for rec in records:
        for name in (rec["file"], rec.get("index")):
            if name:
                (folder / name).unlink(missing_ok=True)
    log(f"{split}: dropped {dropped['documents']:,} document(s), {dropped['tokens']:,} tokens; "
        f"{len(new_records)} shard(s) rewritten")
    return dropped


def _copy_kept(stream, docs: Documents, keep: np.ndarray, writer: ShardWriter, tokenizer: Tokenizer,
               names: list[str], by_source: dict, batch_tokens: int = 1 << 22) -> None:
    """Append every kept document, in order, to the writer; count the dropped ones (their bytes decoded) per
    source. Reads the stream in runs of about batch_tokens."""
    i, n = 0, len(docs)
    while i < n:
        j = int(np.searchsorted(docs.starts, docs.starts[i] + batch_tokens, "left"))
        j = min(max(j, i + 1), n)
        a = int(docs.starts[i])
        tokens = stream.read(a, int(docs.starts[j - 1] + docs.lengths[j - 1]))
        for d in range(i, j):
            o, length = int(docs.starts[d]) - a, int(docs.lengths[d])
            if keep[d]:
                writer.add(tokens[o: o + length], int(docs.sources[d]))
            else:
                b = by_source[names[int(docs.sources[d])]] if int(docs.sources[d]) < len(names) else None
                if b is not None:
                    b["documents"] += 1
                    b["tokens"] += length + 1
                    b["bytes"] += len(tokenizer.decode(tokens[o: o + length].tolist()).encode("utf-8"))
        i = j
