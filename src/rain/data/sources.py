"""Sources: a name, one or more locations and a text field, read as a stream of records.

A location is a local file, folder or glob (.txt .md .rst .py, .jsonl, .jsonl.gz, .jsonl.zst, .parquet,
.tar/.tar.gz/.tar.xz archives of text files, and files of any other name whose content is text, such as README
or copyright; .gz files are read by their inner name, so changelog.gz is text) or a Hugging Face dataset,
`hf://org/name?name=subset` (see rain.data.hub). In a folder, a file that is neither named as a known kind nor
text (an image, a compiled file) is skipped and counted as a `binary` issue. Every text file (whatever its name)
and every record is checked the same way: binary data is a `binary` issue, named in the manifest and report.
A file that starts with a byte-order mark is read in its encoding (UTF-8, UTF-16 or UTF-32).

Text files are read in blocks, and a record longer than data.max_doc_chars is cut into pieces (see
rain.data.text.Cutter), so memory stays bounded whatever the input. A JSON line too long to parse within
that bound is a `too_long` issue.

Every record has a position (location, file, record, piece) so a stream can restart exactly where it stopped
(a long record is read and cut again, and the pieces before the position are passed over). Bad input is a
record too (an `issue`), so it is counted where the stream is, not where the reader is."""

from __future__ import annotations

import fnmatch
import glob as globlib
import gzip
import io
import json
import lzma
import os
import random
import tarfile
import zlib
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from rain.data.hub import parse_hf, read_hf
from rain.data.text import (KINDS, SPLITS, Cutter, Location, Probe, Record, Source, TextField,  # noqa: F401
                               Utf8Decoder, binary_reason, bom_encoding, clean_surrogates, decode_utf8, piece_where,
                               recode_to_utf8, split_record, text_record)
from rain.errors import RainError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
PARQUET_SUFFIXES = (".parquet",)
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")  # text files inside, one document each
SUPPORTED = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES + ARCHIVE_SUFFIXES  # read by name alone
READS = "text files of any name (binary ones are skipped), .gz text files, " + ", ".join(SUPPORTED[len(TEXT_SUFFIXES):])
BINARY_PROBE = 8192  # the first bytes of a file, which decide whether it is text
BLOCK = 1 << 20  # bytes read at a time from a text file (a longer line arrives in several reads)
JSON_BYTES_PER_CHAR = 12  # the most one character takes in a JSON line (an escaped surrogate pair, \ud83d\ude00)
SKIP_DIRS = {".git", ".hg", ".svn"}  # version-control metadata: never documents, not even its text files


# --- files --------------------------------------------------------------------------------------------


def file_kind(path: Path | str) -> str:
    """How a file is read, by its name: jsonl, parquet, tar, text, or sniff (no known suffix: read as text if
    its first bytes are text, else skipped as binary). A .gz that is neither .jsonl.gz nor .tar.gz is read
    gunzipped, by its inner name: notes.md.gz is text, changelog.gz is sniffed."""
    name = Path(path).name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(ARCHIVE_SUFFIXES):
        return "tar"
    return "text" if name.removesuffix(".gz").endswith(TEXT_SUFFIXES) else "sniff"


def has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def resolve_files(source: Source, loc: Location, seed: int) -> list[Path]:
    """The files of a local location, sorted then shuffled by seed (so a partial read samples across files)."""
    path = os.path.expanduser(loc.path)
    explicit_pattern = has_glob(path) or bool(source.glob)
    if has_glob(path):
        files = [Path(p) for p in globlib.glob(path, recursive=True)]
    elif Path(path).is_dir():
        files = _walk(path, source.glob or ("**/*.py" if source.kind == "code" else "**/*"), source.exclude)
    elif Path(path).is_file():
        reason = file_kind(path) == "sniff" and not_text_reason(Path(path))
        if reason:  # named on its own, so an error (in a folder it would be skipped and counted)
            raise RainError(f"source {source.name}: {path}: unsupported file type: not text ({reason}); rain reads {READS}")
        return [Path(path)]
    else:
        raise RainError(f"source {source.name}: {path}: no such file or folder"
                        + (" (for a Hugging Face dataset write hf://org/name)" if path.count("/") == 1 else ""))
    files = [p for p in files if p.is_file() and not _excluded(str(p), source.exclude)]
    if not files:
        raise RainError(f"source {source.name}: {path}: no files to read"
                        + ("" if explicit_pattern else f" (rain reads {READS})"))
    files.sort()
    random.Random(f"{seed}/{source.name}/{loc.path}").shuffle(files)
    return files


def _walk(root: str, pattern: str, exclude: list[str]) -> list[Path]:
    """Files under root whose relative path matches pattern ("**/" also matches the top level), not
    descending into excluded folders."""
    names = {x for x in exclude if not has_glob(x)}
    short = pattern[3:] if pattern.startswith("**/") else pattern
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in names and d not in SKIP_DIRS]
        rel = os.path.relpath(folder, root)
        for name in files:
            path = name if rel == "." else f"{rel}/{name}"
            if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, short):
                found.append(Path(folder) / name)
    return found


def _excluded(path: str, patterns: list[str]) -> bool:
    """An exclude pattern names a folder or file anywhere in the path ("tests"), or is a glob ("*_test.py")."""
    parts = path.split("/")
    return any(x in parts or (has_glob(x) and fnmatch.fnmatch(path, f"*{x}")) for x in patterns)


def _zst_chunks(path: Path) -> Iterator[bytes]:
    """Decompressed bytes of a (possibly multi-frame) .zst file; a frame cut short raises RainError."""
    dctx = zstandard.ZstdDecompressor()
    with open(path, "rb") as f:
        obj, pending = dctx.decompressobj(), False
        while chunk := f.read(1 << 20):
            while chunk:
                try:
                    out = obj.decompress(chunk)
                except zstandard.ZstdError as exc:
                    raise RainError(f"{path}: not a valid zstd file ({exc})") from None
                pending = True
                if out:
                    yield out
                if obj.eof:
                    chunk, obj, pending = obj.unused_data, dctx.decompressobj(), False
                else:
                    chunk = b""
        if pending and not obj.eof:
            raise RainError(f"{path}: truncated zstd file (the last frame is incomplete); re-download or recompress it")


class _Chunks(io.RawIOBase):
    """Byte strings from an iterator as a stream, so io.BufferedReader can read it (and readline with a limit)."""

    def __init__(self, chunks: Iterable[bytes]):
        self.chunks, self.rest = iter(chunks), memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.rest:
            chunk = next(self.chunks, None)
            if chunk is None:
                return 0
            self.rest = memoryview(chunk)
        n = min(len(buffer), len(self.rest))
        buffer[:n] = self.rest[:n]
        self.rest = self.rest[n:]
        return n


def _blocks(f: BinaryIO) -> Iterator[bytes]:
    return iter(lambda: f.read(BLOCK), b"")


def _bounded_lines(f: BinaryIO, limit: int) -> Iterator[bytes | int]:
    """The lines of a stream; a line of more than `limit` bytes (0: no limit) is read through without being
    held, and given as its length."""
    while line := f.readline(limit or -1):
        if not limit or len(line) < limit or line.endswith(b"\n"):
            yield line
            continue
        size = len(line)
        while more := f.readline(limit):
            size += len(more)
            if more.endswith(b"\n"):
                break
        yield line if size == len(line) else size  # exactly `limit` bytes and the end of the file: a whole line


@contextmanager
def _open_bytes(path: Path) -> Iterator[BinaryIO]:
    """A file's bytes, gunzipped for .gz; a truncated or corrupt .gz stops with one line naming the file."""
    if not path.name.lower().endswith(".gz"):
        with open(path, "rb") as f:
            yield f
        return
    try:
        with gzip.open(path, "rb") as f:
            yield f
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise RainError(f"{path}: truncated or corrupt gzip file ({exc}); re-download it") from None


def not_text_reason(path: Path) -> str | None:
    """Why a file is not text, judged by its first bytes; None if it is text."""
    with _open_bytes(path) as f:
        head = f.read(BINARY_PROBE)
    return binary_reason(head, complete=len(head) < BINARY_PROBE)


def _jsonl_lines(path: Path, limit: int) -> Iterator[bytes | int]:
    if path.name.lower().endswith(".zst"):
        yield from _bounded_lines(io.BufferedReader(_Chunks(_zst_chunks(path))), limit)
    else:
        with _open_bytes(path) as f:
            yield from _bounded_lines(f, limit)


def _read_jsonl(source: Source, key: tuple[int, int], path: Path, field: TextField, skip: int,
                max_chars: int) -> Iterator[Record]:
    """JSON Lines. A line longer than JSON_BYTES_PER_CHAR * max_chars bytes holds a record over the cap however
    its text is written; parsing it would hold it whole (several times over), so it is a `too_long` issue."""
    probe = Probe(source, path, field)
    lineno = 0
    for lineno, line in enumerate(_jsonl_lines(path, JSON_BYTES_PER_CHAR * max_chars), 1):
        if lineno <= skip:
            continue
        pos = (*key, lineno - 1, 0)  # piece 0: split_record cuts a long record
        if isinstance(line, int):
            yield Record(pos, None, "too_long", 0, f"{path}:{lineno} (a line of {line:,} bytes, over "
                         f"{JSON_BYTES_PER_CHAR} x data.max_doc_chars: too long to parse within bounded memory)")
            continue
        if not line.strip():
            continue
        raw, bad = decode_utf8(line)
        try:
            row = json.loads(raw)
        except ValueError:
            probe.note(False, lineno)
            yield Record(pos, None, "bad_json", bad, f"{path}:{lineno}")
            continue
        if not isinstance(row, dict):
            probe.note(False, lineno)
            yield Record(pos, None, "bad_json", bad, f"{path}:{lineno}")
            continue
        text = field.extract(row)
        probe.note(text is not None, lineno, row.keys())
        if text is None:
            yield Record(pos, None, "missing_field", bad, f"{path}:{lineno}")
            continue
        text, fixed = clean_surrogates(text)
        yield text_record(pos, text, bad + fixed, f"{path}:{lineno}")
    probe.finish(lineno)


def _read_parquet(source: Source, key: tuple[int, int], path: Path, field: TextField, skip: int) -> Iterator[Record]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise RainError(f"{path}: not a readable parquet file ({exc}); it may be truncated, re-download it") from None
    names = pf.schema_arrow.names
    missing = [f for f in field.fields if f not in names]
    if missing:
        note = f" ({source.note})" if source.note else ""
        raise RainError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names)}); set `text` for source {source.name}{note}")
    first_row, group = 0, 0
    while group < pf.num_row_groups and first_row + pf.metadata.row_group(group).num_rows <= skip:
        first_row += pf.metadata.row_group(group).num_rows
        group += 1
    row = first_row
    try:
        # Row-group batches: memory stays at one batch whatever the file size.
        for batch in pf.iter_batches(batch_size=1024, columns=field.fields, row_groups=range(group, pf.num_row_groups)):
            columns = {name: batch.column(name).to_pylist() for name in field.fields}
            for i in range(batch.num_rows):
                if row >= skip:
                    text = field.extract({name: values[i] for name, values in columns.items()})
                    where = f"{path}:row {row}"
                    if text is None:
                        yield Record((*key, row, 0), None, "missing_field", 0, where)
                    else:
                        yield text_record((*key, row, 0), text, 0, where)
                row += 1
    except (pa.ArrowException, OSError) as exc:
        raise RainError(f"{path}: row {row}: unreadable parquet data ({exc}); it may be truncated, re-download it") from None


def _text_blocks(f: BinaryIO, encoding: str = "") -> tuple[Iterator[bytes] | None, str | None]:
    """A text file's bytes as UTF-8 (a UTF-8 byte-order mark dropped; UTF-16/UTF-32 or the source's configured
    encoding recoded), in blocks, or None and why the file is not text, judged by its first bytes."""
    head = f.read(BINARY_PROBE)
    complete = len(head) < BINARY_PROBE
    rest = iter(()) if complete else _blocks(f)  # (a read of BLOCK bytes costs an allocation that size)
    if encoding:
        return recode_to_utf8(chain([head], rest), encoding), None
    bom = bom_encoding(head)
    if bom is None:
        reason = binary_reason(head, complete)
        return (None, reason) if reason else (chain([head], rest), None)
    encoding, size = bom
    if encoding == "utf-8":
        return chain([head[size:]], rest), None
    return recode_to_utf8(chain([head], rest), encoding), None


class _Pieces:
    """One record's bytes as they are read, as records of at most max_chars characters (0: one record). Up to
    max_chars bytes (so at most as many characters) are held and decoded at once, as one record if the record
    ends there; beyond, they are decoded as they come and cut (Cutter), and undecodable bytes are counted with
    the piece being built when they are read."""

    def __init__(self, pos: tuple[int, int, int], max_chars: int, path: Path | str):
        self.pos, self.max_chars, self.path = pos, max_chars, path
        self.held: list[bytes] = []
        self.size = self.count = self.counted_bad = 0
        self.decoder: Utf8Decoder | None = None  # made once the record is longer than max_chars bytes
        self.cutter = Cutter(max_chars)

    def add(self, data: bytes, lineno: int = 0) -> list[Record]:
        self.held.append(data)
        self.size += len(data)
        return self._cut(lineno) if self.max_chars and self.size > self.max_chars else []

    def end(self, lineno: int = 0) -> list[Record]:
        if self.decoder is None:
            text, bad = decode_utf8(b"".join(self.held))
            return [text_record((*self.pos, 0), text, bad, self._where(lineno))]
        records = self._cut(lineno, final=True)
        return records + [self._record(self.cutter.end(), lineno, self.count > 0)]

    def _cut(self, lineno: int, final: bool = False) -> list[Record]:
        self.decoder = self.decoder or Utf8Decoder()
        text = self.decoder.decode(b"".join(self.held), final)
        self.held, self.size = [], 0
        return [self._record(piece, lineno, True) for piece in self.cutter.add(text)]

    def _record(self, text: str, lineno: int, split: bool) -> Record:
        bad, self.counted_bad = self.decoder.bad - self.counted_bad, self.decoder.bad
        where = piece_where(self._where(lineno), self.count) if split else self._where(lineno)
        self.count += 1
        return text_record((*self.pos, self.count - 1), text, bad, where, split)

    def _where(self, lineno: int) -> str:
        return f"{self.path}:{lineno}" if lineno else str(self.path)


def _whole(blocks: Iterable[bytes], pos: tuple[int, int, int], where: str, max_chars: int) -> Iterator[Record]:
    pieces = _Pieces(pos, max_chars, where)
    for block in blocks:
        yield from pieces.add(block)
    yield from pieces.end()


def _read_text(source: Source, key: tuple[int, int], path: Path, skip: int, max_chars: int) -> Iterator[Record]:
    """A text file (gunzipped for .gz) as one document, or one per line or paragraph; a file whose first bytes
    are not text is one `binary` issue instead."""
    if source.split == "file" and skip:
        return
    with _open_bytes(path) as f:
        blocks, reason = _text_blocks(f, source.encoding)
        if reason:
            if skip == 0:
                yield Record((*key, 0, 0), None, "binary", 0, f"{path} ({reason})")
        elif source.split == "file":
            yield from _whole(blocks, (*key, 0), str(path), max_chars)
        else:
            yield from _split_text(source.split, key, path, io.BufferedReader(_Chunks(blocks)), skip, max_chars)


def _split_text(split: str, key: tuple[int, int], path: Path, f: BinaryIO, skip: int, max_chars: int) -> Iterator[Record]:
    """One record per line, or per paragraph (lines up to a blank one). A line longer than BLOCK bytes arrives
    in several reads (and is never blank)."""
    index, lineno, pieces, line_start, block = 0, 0, None, True, BLOCK
    for fragment in iter(lambda: f.readline(block), b""):
        last = fragment.endswith(b"\n") or len(fragment) < block  # (else the line goes on, or the file ends)
        lineno += line_start
        whole_line, line_start = line_start and last, last
        if split == "line" and whole_line:  # the common case, without _Pieces
            if index >= skip:
                text, bad = decode_utf8(fragment.rstrip(b"\r\n"))
                record = text_record((*key, index, 0), text, bad, f"{path}:{lineno}")
                yield from split_record(record, max_chars) if max_chars and len(text) > max_chars else [record]
            index += 1
        elif split == "paragraph" and whole_line and not fragment.strip():  # a blank line
            if pieces is not None:
                if index >= skip:
                    yield from pieces.end(lineno)
                index, pieces = index + 1, None
        else:
            pieces = pieces or _Pieces((*key, index), max_chars, path)
            if index >= skip:
                yield from pieces.add(fragment.rstrip(b"\r\n") if split == "line" and last else fragment, lineno)
            if split == "line" and last:
                if index >= skip:
                    yield from pieces.end(lineno)
                index, pieces = index + 1, None
    if pieces is not None and index >= skip:
        yield from pieces.end(lineno if split == "line" else 0)


def _read_tar(source: Source, key: tuple[int, int], path: Path, skip: int, max_chars: int) -> Iterator[Record]:
    """Regular files inside an archive (read as a stream), selected like a folder's files, one document each."""
    index = 0
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                name = member.name
                chosen = fnmatch.fnmatch(name, source.glob) if source.glob else name.lower().endswith(TEXT_SUFFIXES)
                if not member.isfile() or not chosen or _excluded(name, source.exclude):
                    continue
                if index >= skip:
                    yield from _read_member(tar.extractfile(member), (*key, index), f"{path}:{name}", max_chars,
                                            source.encoding)
                index += 1
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, zlib.error) as exc:
        raise RainError(f"{path}: truncated or corrupt archive after {index} files ({exc}); re-download it") from None


def _read_member(f: BinaryIO, pos: tuple[int, int, int], where: str, max_chars: int,
                 encoding: str = "") -> Iterator[Record]:
    blocks, reason = _text_blocks(f, encoding)
    if reason:
        yield Record((*pos, 0), None, "binary", 0, f"{where} ({reason})")
    else:
        yield from _whole(blocks, pos, where, max_chars)


# --- the stream -----------------------------------------------------------------------------------------


def _read_documents(source: Source, skip: int) -> Iterator[Record]:
    for i, (label, text) in enumerate(source.documents()):
        if i < skip:
            continue
        text, bad = clean_surrogates(text)
        rec = text_record((0, 0, i, 0), text, bad, f"document {i}")
        yield rec._replace(label=label)


def read_records(source: Source, seed: int, start: tuple[int, ...] = (0, 0, 0, 0), max_chars: int = 0) -> Iterator[Record]:
    """Every record of a source in a fixed order, from position `start` (location, file, record[, piece]) on,
    a record longer than max_chars characters (0: no cap) cut into pieces of at most that many."""
    if max_chars < 0:
        raise RainError(f"data.max_doc_chars must be >= 0 (0: no cap), not {max_chars}")
    start = (*start, 0) if len(start) == 3 else tuple(start)
    for record in _records(source, seed, start, max_chars):
        if len(record.pos) == 4 and (record.text is None or not max_chars or len(record.text) <= max_chars):
            if record.pos >= start:  # the pieces of the first record that come before `start` were read before
                yield record
            continue
        for piece in split_record(record, max_chars):
            if piece.pos >= start:
                yield piece


def _records(source: Source, seed: int, start: tuple[int, ...], max_chars: int) -> Iterator[Record]:
    """Records from record start[:3] on, whole or (text files and archives, read in blocks) in pieces."""
    if source.documents is not None:
        yield from _read_documents(source, start[2])
        return
    for li, loc in enumerate(source.locations):
        if li < start[0]:
            continue
        field = TextField(loc.text)
        if loc.path.startswith("hf://"):
            skip = start[2] if li == start[0] else 0
            yield from read_hf(source, (li, 0), loc, field, skip)
            continue
        check_scheme(source, loc.path)
        for fi, path in enumerate(resolve_files(source, loc, seed)):
            if (li, fi) < start[:2]:
                continue
            skip = start[2] if (li, fi) == start[:2] else 0
            kind = file_kind(path)
            if kind == "jsonl":
                yield from _read_jsonl(source, (li, fi), path, field, skip, max_chars)
            elif kind == "parquet":
                yield from _read_parquet(source, (li, fi), path, field, skip)
            elif kind == "tar":
                yield from _read_tar(source, (li, fi), path, skip, max_chars)
            else:
                yield from _read_text(source, (li, fi), path, skip, max_chars)


def check_scheme(source: Source, path: str) -> None:
    scheme = urlparse(path).scheme
    if "://" in path and scheme != "hf":
        raise RainError(f"source {source.name}: {path}: unknown scheme {scheme + '://'!r} (use a local path or hf://org/name)")


def validate_source(source: Source) -> None:
    """Checks that need no reading: kinds, splits, schemes."""
    if source.kind not in KINDS:
        raise RainError(f"source {source.name}: kind {source.kind!r} must be one of {', '.join(KINDS)}")
    if source.split not in SPLITS:
        raise RainError(f"source {source.name}: split {source.split!r} must be one of {', '.join(SPLITS)}")
    if source.documents is None and not source.locations:
        raise RainError(f"source {source.name}: no location")
    for loc in source.locations:
        if not loc.path.startswith("hf://"):
            check_scheme(source, loc.path)
        else:
            parse_hf(loc.path)
