"""A prepared data folder as `rain prepare` wrote it, read through one API: the manifest, the tokenizer, and each
split as one token stream across its shards (with the source of every token where the documents are indexed).

Training, evaluation and the memorisation audit read prepared data only through this module, so the folder
format has one owner (rain.data.shards writes it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rain.data.shards import load_doc_index, load_manifest, open_split
from rain.errors import RainError


class TokenStream:
    """The shards of a split as one sequence of tokens, read by global position (nothing is loaded until read).
    `sources` (optional) maps each document start to its source id, so any token can be attributed."""

    def __init__(self, shards: list[np.ndarray], doc_starts: np.ndarray | None = None,
                 doc_sources: np.ndarray | None = None):
        self.shards = shards
        self.starts = np.cumsum([0] + [len(s) for s in shards])
        self.total = int(self.starts[-1])
        self.doc_starts, self.doc_sources = doc_starts, doc_sources

    def __len__(self) -> int:
        return self.total

    def read(self, a: int, b: int) -> np.ndarray:
        """Tokens [a, b) of the stream (a document may run on from one shard into the next)."""
        a, b = max(a, 0), min(b, self.total)
        parts = []
        for i in range(max(int(np.searchsorted(self.starts, a, "right")) - 1, 0), len(self.shards)):
            s0 = int(self.starts[i])
            if s0 >= b:
                break
            parts.append(self.shards[i][max(a - s0, 0): b - s0])
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """Tokens at an array of global positions; -1 outside the stream."""
        out = np.full(positions.shape, -1, dtype=np.int64)
        inside = (positions >= 0) & (positions < self.total)
        shard = np.searchsorted(self.starts, positions, "right") - 1
        for i in np.unique(shard[inside]):
            sel = inside & (shard == i)
            out[sel] = self.shards[i][positions[sel] - self.starts[i]]
        return out

    def source_ids(self, a: int, b: int) -> np.ndarray | None:
        """The source id of each token in [a, b) (a document's `<|endoftext|>` counts as its own), or None when
        the split has no document index."""
        if self.doc_starts is None:
            return None
        doc = np.searchsorted(self.doc_starts, np.arange(a, b), "right") - 1
        return self.doc_sources[np.maximum(doc, 0)]


class SourceTokens:
    """One source's documents in a split read as one sequence: its runs of consecutive documents (each document
    with its `<|endoftext|>`), in stream order, back to back. Nothing is read until asked for."""

    def __init__(self, stream: TokenStream, starts: np.ndarray, lengths: np.ndarray):
        self.stream, self.starts = stream, starts.astype(np.int64)
        self.cum = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])  # where each run begins in the source

    def __len__(self) -> int:
        return int(self.cum[-1])

    def read(self, a: int, b: int) -> np.ndarray:
        """Tokens [a, b) of the source (a window may span several runs)."""
        parts, b = [], min(b, len(self))
        run = int(np.searchsorted(self.cum, a, "right")) - 1
        while a < b:
            end = min(b, int(self.cum[run + 1]))
            offset = int(self.starts[run]) - int(self.cum[run])
            parts.append(self.stream.read(offset + a, offset + end))
            a, run = end, run + 1
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def source_tokens(stream: TokenStream, n_sources: int) -> list[SourceTokens]:
    """Each source's tokens in an indexed stream, by source id: runs of consecutive documents of one source."""
    src = stream.doc_sources
    first = np.concatenate([[0], np.flatnonzero(np.diff(src)) + 1])  # the first document of each run
    starts = stream.doc_starts[first]
    lengths = np.diff(np.append(starts, len(stream)))
    plain = TokenStream(stream.shards)  # the runs replace the document index, which is not kept
    return [SourceTokens(plain, starts[src[first] == i], lengths[src[first] == i]) for i in range(n_sources)]


def validation_windows(n_tokens: int, seq_len: int, n_windows: int, seed: int = 0) -> np.ndarray:
    """Start positions of `n_windows` windows of seq_len + 1 tokens spread over a split of n_tokens: the split is
    cut into n_windows equal strata and each window starts at a seeded random point of its own stratum, so every
    part of the split (every source, however the documents are ordered) is scored in proportion to its size.
    The same arguments always give the same windows. When the split holds fewer non-overlapping windows than
    asked, all of them are returned, in order."""
    if n_tokens < seq_len + 1:
        raise ValueError(f"the validation split has {n_tokens:,} tokens; a window needs {seq_len + 1:,}")
    room = n_tokens - seq_len  # possible start positions
    whole = (n_tokens - 1) // seq_len
    if n_windows >= whole:
        return np.arange(whole, dtype=np.int64) * seq_len
    edges = np.linspace(0, room, n_windows + 1)
    rng = np.random.default_rng(seed)
    starts = edges[:-1] + rng.random(n_windows) * np.maximum(edges[1:] - edges[:-1] - 1, 0)
    return np.floor(starts).astype(np.int64)


class PreparedData:
    """A folder written by `rain prepare`: manifest.json, tokenizer.json, `{split}_*.bin` shards and their
    per-document index (offset, tokens, source id)."""

    def __init__(self, folder: str | Path):
        self.dir = Path(folder)
        self.manifest = load_manifest(self.dir)
        for key in ("splits", "dtype"):
            if key not in self.manifest:
                raise RainError(f"{self.dir}/manifest.json: no {key!r} field; re-run `rain prepare`")

    @property
    def tokenizer_path(self) -> Path:
        return self.dir / self.manifest.get("tokenizer", "tokenizer.json")

    @property
    def source_names(self) -> list[str]:
        """The sources in the order of their ids in the document index."""
        return list(self.manifest.get("source_names") or self.manifest.get("sources", {}).get("train", {}))

    def shards(self, split: str) -> list[np.ndarray]:
        return open_split(self.dir, split, self.manifest)

    def stream(self, split: str, sources: bool = False) -> TokenStream:
        """The split as one stream; with `sources` (and a document index) every token's source is known, at
        24 bytes of memory per document."""
        shards = self.shards(split)
        records = self.manifest["splits"][split]
        if not sources or not records or any("index" not in r for r in records):
            return TokenStream(shards)
        offsets = np.cumsum([0] + [r["tokens"] for r in records])
        rows = [load_doc_index(self.dir, r) for r in records]
        starts = np.concatenate([offsets[i] + r[:, 0] for i, r in enumerate(rows)]).astype(np.int64)
        sources = np.concatenate([r[:, 2] for r in rows]).astype(np.int64)
        return TokenStream(shards, starts, sources)

    def sources(self, split: str) -> list[SourceTokens]:
        """Each source's tokens in a split (by source id, as in source_names), from the document index: 16 bytes of
        memory per run of consecutive documents of one source (10M documents of 3 interleaved sources: 5.4M runs,
        82 MiB, built in 1.2-3.7 s on this 2-core machine under load)."""
        stream = self.stream(split, sources=True)
        if stream.doc_sources is None:
            raise RainError(f"{self.dir}: the {split} split has no document index, so its tokens cannot be told apart "
                            "by source; re-run `rain prepare` to mix sources at training time")
        return source_tokens(stream, len(self.source_names))

    def counts(self, split: str, source: str | None = None) -> tuple[int, int]:
        """(tokens, UTF-8 bytes) of a split, or of one source in it: the ratio behind bits per byte."""
        stats = self.manifest.get("sources", {}).get(split, {})
        chosen = stats.values() if source is None else [stats.get(source, {})]
        return sum(s.get("tokens", 0) for s in chosen), sum(s.get("bytes", 0) for s in chosen)

    def split_tokens(self, split: str) -> int:
        return sum(r["tokens"] for r in self.manifest["splits"].get(split, []))
