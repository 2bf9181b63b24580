"""Sources: a name, one or more locations and a text field, read as a stream of records.

A location is a local file, folder or glob (.txt .md .rst .py, .jsonl, .jsonl.gz, .jsonl.zst, .parquet,
.tar/.tar.gz/.tar.xz archives of text files, and files of any other name whose content is text, such as README
or copyright; .gz files are read by their inner name, so changelog.gz is text) or a Hugging Face dataset,
`hf://org/name?name=subset` (see rain.data.hub). In a folder, a file that is neither named as a known kind nor
text (an image, a compiled file) is skipped and counted as a `binary` issue.

Every record has a position (location, file, record) so a stream can restart exactly where it stopped. Bad
input is a record too (an `issue`), so it is counted where the stream is, not where the reader is."""

from __future__ import annotations

import fnmatch
import glob as globlib
import gzip
import json
import lzma
import os
import random
import tarfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from rain.data.hub import parse_hf, read_hf
from rain.data.records import (KINDS, SPLITS, Location, Probe, Record, Source, TextField, binary_reason,  # noqa: F401
                               clean_surrogates, decode_utf8, text_record)
from rain.errors import RainError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
PARQUET_SUFFIXES = (".parquet",)
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")  # text files inside, one document each
SUPPORTED = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES + ARCHIVE_SUFFIXES  # read by name alone
READS = "text files of any name (binary ones are skipped), .gz text files, " + ", ".join(SUPPORTED[len(TEXT_SUFFIXES):])
BINARY_PROBE = 8192  # the bytes that decide whether a file with no known suffix is text
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


def _split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    rest = b""
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


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
    """Why a file with no known suffix is not text, judged by its first bytes; None if it is text."""
    with _open_bytes(path) as f:
        head = f.read(BINARY_PROBE)
    return binary_reason(head, complete=len(head) < BINARY_PROBE)


def _jsonl_lines(path: Path) -> Iterator[bytes]:
    if path.name.lower().endswith(".zst"):
        yield from _split_lines(_zst_chunks(path))
    else:
        with _open_bytes(path) as f:
            yield from f


def _read_jsonl(source: Source, key: tuple[int, int], path: Path, field: TextField, skip: int) -> Iterator[Record]:
    probe = Probe(source, path, field)
    lineno = 0
    for lineno, line in enumerate(_jsonl_lines(path), 1):
        if lineno <= skip or not line.strip():
            continue
        pos = (*key, lineno - 1)
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
                        yield Record((*key, row), None, "missing_field", 0, where)
                    else:
                        yield text_record((*key, row), text, 0, where)
                row += 1
    except (pa.ArrowException, OSError) as exc:
        raise RainError(f"{path}: row {row}: unreadable parquet data ({exc}); it may be truncated, re-download it") from None


def _read_text(source: Source, key: tuple[int, int], path: Path, skip: int, sniff: bool = False) -> Iterator[Record]:
    """A text file (gunzipped for .gz) as one document, or one per line or paragraph. With sniff (no known
    suffix), a file whose first bytes are not text is one `binary` issue instead."""
    if sniff and (reason := not_text_reason(path)):
        if skip == 0:
            yield Record((*key, 0), None, "binary", 0, f"{path} ({reason})")
        return
    with _open_bytes(path) as f:
        if source.split == "file":
            if skip == 0:
                text, bad = decode_utf8(f.read())
                yield text_record((*key, 0), text, bad, str(path))
            return
        yield from _split_text(source.split, key, path, f, skip)


def _split_text(split: str, key: tuple[int, int], path: Path, f: BinaryIO, skip: int) -> Iterator[Record]:
    index, lines = 0, []
    for lineno, line in enumerate(f, 1):
        if split == "line":
            if index >= skip:
                text, bad = decode_utf8(line.rstrip(b"\r\n"))
                yield text_record((*key, index), text, bad, f"{path}:{lineno}")
            index += 1
        elif line.strip():
            lines.append(line)
        elif lines:
            if index >= skip:
                text, bad = decode_utf8(b"".join(lines))
                yield text_record((*key, index), text, bad, f"{path}:{lineno}")
            index, lines = index + 1, []
    if lines and index >= skip:
        text, bad = decode_utf8(b"".join(lines))
        yield text_record((*key, index), text, bad, str(path))


def _read_tar(source: Source, key: tuple[int, int], path: Path, skip: int) -> Iterator[Record]:
    """Regular files inside an archive (read as a stream), selected like a folder's files."""
    index = 0
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                name = member.name
                chosen = fnmatch.fnmatch(name, source.glob) if source.glob else name.lower().endswith(TEXT_SUFFIXES)
                if not member.isfile() or not chosen or _excluded(name, source.exclude):
                    continue
                if index >= skip:
                    text, bad = decode_utf8(tar.extractfile(member).read())
                    yield text_record((*key, index), text, bad, f"{path}:{name}")
                index += 1
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, zlib.error) as exc:
        raise RainError(f"{path}: truncated or corrupt archive after {index} files ({exc}); re-download it") from None


# --- the stream -----------------------------------------------------------------------------------------


def _read_documents(source: Source, skip: int) -> Iterator[Record]:
    for i, (label, text) in enumerate(source.documents()):
        if i < skip:
            continue
        text, bad = clean_surrogates(text)
        rec = text_record((0, 0, i), text, bad, f"document {i}")
        yield rec._replace(label=label)


def read_records(source: Source, seed: int, start: tuple[int, int, int] = (0, 0, 0)) -> Iterator[Record]:
    """Every record of a source in a fixed order, from position `start` (location, file, record) on."""
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
                yield from _read_jsonl(source, (li, fi), path, field, skip)
            elif kind == "parquet":
                yield from _read_parquet(source, (li, fi), path, field, skip)
            elif kind == "tar":
                yield from _read_tar(source, (li, fi), path, skip)
            else:
                yield from _read_text(source, (li, fi), path, skip, sniff=kind == "sniff")


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
