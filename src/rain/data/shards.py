"""Token shards: flat uint16/uint32 arrays on disk (one .bin per shard, `<|endoftext|>` after every document),
a per-shard document index (.idx.npy) and a manifest.json, read back as numpy memmaps.

A shard is written to a hidden `.partial` file and renamed when full, so a finished shard is never touched
again; `checkpoint()` makes the open one durable up to a length that `resume()` cuts it back to."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from rain.errors import RainError
from rain.files import write_atomic

MANIFEST = "manifest.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class ShardWriter:
    """Appends documents to fixed-size shards `{split}_{i:06d}.bin`, each with an index
    `{split}_{i:06d}.idx.npy` of the documents that start in it: rows (offset, tokens without the
    `<|endoftext|>`, source id). A document may run on into the next shard."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int, eot_id: int, start_index: int = 0):
        self.out_dir, self.split, self.dtype = Path(out_dir), split, np.dtype(dtype)
        self.shard_tokens, self.eot_id = shard_tokens, eot_id
        self.index = start_index
        self.fill = 0
        self.docs: list[tuple[int, int, int]] = []
        self.records: list[dict] = []
        self._file = None
        self._sha = hashlib.sha256()

    def name(self, index: int) -> str:
        return f"{self.split}_{index:06d}.bin"

    def partial_path(self, index: int) -> Path:
        return self.out_dir / f".{self.name(index)}.partial"

    def add(self, ids, source: int = 0) -> None:
        """One document: its tokens then `<|endoftext|>`."""
        doc = np.asarray(ids, dtype=self.dtype)
        self.docs.append((self.fill, len(doc), source))
        self._write(np.append(doc, np.array([self.eot_id], dtype=self.dtype)))

    def _write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            if self._file is None:
                self._file = open(self.partial_path(self.index), "wb")
            take = min(len(tokens), self.shard_tokens - self.fill)
            data = tokens[:take].tobytes()
            self._file.write(data)
            self._sha.update(data)
            self.fill += take
            tokens = tokens[take:]
            if self.fill == self.shard_tokens:
                self._finish()

    def _finish(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        name = self.name(self.index)
        index_name = name.replace(".bin", ".idx.npy")
        write_atomic(self.out_dir / index_name, npy_bytes(np.asarray(self.docs, dtype=np.int64).reshape(-1, 3)))
        os.replace(self.partial_path(self.index), self.out_dir / name)
        self.records.append({"file": name, "tokens": int(self.fill), "sha256": self._sha.hexdigest(),
                             "documents": len(self.docs), "index": index_name})
        self.index += 1
        self.fill, self.docs, self._file, self._sha = 0, [], None, hashlib.sha256()

    def flush(self) -> None:
        """Close the open shard as it is (the last shard of a split may be short)."""
        if self.fill:
            self._finish()

    def close(self) -> list[dict]:
        self.flush()
        return self.records

    def checkpoint(self) -> tuple[dict, np.ndarray]:
        """Make the open shard durable; returns (state, document rows of the open shard) for `resume`."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
        state = {"index": self.index, "fill": self.fill, "records": list(self.records)}
        return state, np.asarray(self.docs, dtype=np.int64).reshape(-1, 3)

    @classmethod
    def resume(cls, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int, eot_id: int,
               state: dict, docs: np.ndarray) -> "ShardWriter":
        w = cls(out_dir, split, dtype, shard_tokens, eot_id, start_index=state["index"])
        w.records, w.fill, w.docs = list(state["records"]), state["fill"], [tuple(map(int, r)) for r in docs]
        size = w.fill * w.dtype.itemsize
        partial, final = w.partial_path(w.index), w.out_dir / w.name(w.index)
        if not partial.exists() and final.exists():  # the shard was finished after the checkpoint
            with open(final, "rb") as f:
                write_atomic(partial, f.read(size))
        if size and (not partial.exists() or partial.stat().st_size < size):
            raise RainError(f"{partial}: shorter than the saved state says; re-run `rain prepare` with --overwrite")
        if partial.exists():
            with open(partial, "r+b") as f:
                f.truncate(size)
                w._sha.update(f.read(size))
            w._file = open(partial, "ab")
        for stale in list(w.out_dir.glob(f"{split}_*")) + list(w.out_dir.glob(f".{split}_*.partial")):
            index = int(stale.name.lstrip(".").split(".")[0].split("_")[-1])
            if index > w.index or (index == w.index and stale != partial):  # written after the checkpoint: redone
                stale.unlink()
        return w


def load_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise RainError(f"{data_dir}: no {MANIFEST}; prepare the data first with `rain prepare --out {data_dir}`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RainError(f"{path}: not valid JSON ({exc}); re-run `rain prepare`") from None


def open_split(data_dir: str | Path, split: str, manifest: dict | None = None) -> list[np.ndarray]:
    """Memory-map every shard of a split (nothing is read into RAM until indexed)."""
    manifest = manifest or load_manifest(data_dir)
    dtype = np.dtype(manifest["dtype"])
    shards = []
    for rec in manifest["splits"].get(split, []):
        path = Path(data_dir) / rec["file"]
        if not path.is_file() or path.stat().st_size != rec["tokens"] * dtype.itemsize:
            raise RainError(f"{path}: missing or of the wrong size for {rec['tokens']} tokens; re-run `rain prepare`")
        shards.append(np.memmap(path, dtype=dtype, mode="r"))
    if not shards:
        raise RainError(f"{data_dir}: the manifest lists no {split!r} shards; re-run `rain prepare`")
    return shards


def load_doc_index(data_dir: str | Path, record: dict) -> np.ndarray:
    """Rows (offset in shard, tokens, source id) of the documents that start in one shard."""
    return np.load(Path(data_dir) / record["index"])


def verify_split(data_dir: str | Path, split: str, manifest: dict | None = None) -> None:
    """Raise a RainError naming the first shard whose sha256 differs from the manifest's."""
    manifest = manifest or load_manifest(data_dir)
    for rec in manifest["splits"].get(split, []):
        if file_sha256(Path(data_dir) / rec["file"]) != rec["sha256"]:
            raise RainError(f"{Path(data_dir) / rec['file']}: checksum differs from {MANIFEST}; re-run `rain prepare`")
