"""What sources are made of: their configuration (Source, Location), the records they yield, text fields
and templates, and UTF-8 decoding that counts what it had to replace."""

from __future__ import annotations

import codecs
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from rain.errors import RainError

KINDS = ("prose", "code", "math")
SPLITS = ("file", "line", "paragraph")
STRUCTURE_PROBE = 100  # a file whose first this-many records give no text is the wrong file or field
# Binary data has NUL bytes or is mostly invalid UTF-8; Latin-1 prose has only a few percent of such bytes.
MAX_NOT_UTF8 = 0.3


@dataclass
class Location:
    path: str
    text: str = "text"  # a field name, or a template such as "{question}\n\n{answer}"


@dataclass
class Source:
    name: str
    locations: list[Location]
    kind: str = "prose"
    weight: float | None = None
    glob: str = ""  # which files of a folder; default: every supported file (kind "code": **/*.py)
    exclude: list[str] = field(default_factory=list)  # glob patterns of paths to leave out
    split: str = "file"  # .txt/.md/.rst/.py: one document per "file", "line" or "paragraph"
    note: str = ""  # shown with structure errors (e.g. how to obtain the real data)
    filters: dict = field(default_factory=dict)  # per-source overrides of the mixture's [filters]
    documents: Callable[[], Iterable[tuple[str, str]]] | None = None  # in-memory (label, text) records
    hf_mirror: str = ""


class Record(NamedTuple):
    pos: tuple[int, int, int]  # (location, file, record within file)
    text: str | None
    issue: str | None = None  # bad_json | missing_field | empty | binary (text is None)
    bad_bytes: int = 0  # undecodable bytes replaced by U+FFFD
    where: str = ""  # file:line, for issues
    label: str | None = None  # stats key when a source carries several (in-memory documents)


# --- text decoding -----------------------------------------------------------------------------------

_replaced = [0]


def _count_replace(err: UnicodeDecodeError) -> tuple[str, int]:
    _replaced[0] += err.end - err.start
    return "\ufffd", err.end


codecs.register_error("rain.count", _count_replace)


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Text and the number of bytes that were not UTF-8 (each replaced by U+FFFD)."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        _replaced[0] = 0
        text = data.decode("utf-8", "rain.count")
        return text, _replaced[0]


def binary_reason(head: bytes, complete: bool) -> str | None:
    """Why the first bytes of a file say it is not text, or None if they are text. `complete`: head is the
    whole file (if not, a character cut at its end is not held against it)."""
    if b"\0" in head:
        return "it holds NUL bytes"
    _replaced[0] = 0
    codecs.getincrementaldecoder("utf-8")("rain.count").decode(head, final=complete)
    if _replaced[0] > MAX_NOT_UTF8 * len(head):
        return f"{_replaced[0] / len(head):.0%} of its first {len(head):,} bytes are not UTF-8"
    return None


def clean_surrogates(text: str) -> tuple[str, int]:
    """JSON may carry lone surrogates ("\\ud800"), which are not text: each becomes U+FFFD and is counted."""
    try:
        text.encode("utf-8")
        return text, 0
    except UnicodeEncodeError:
        bad = sum(0xD800 <= ord(c) <= 0xDFFF for c in text)
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text), bad


# --- text fields and templates ------------------------------------------------------------------------


class TextField:
    def __init__(self, spec: str):
        self.spec = spec
        self.template = "{" in spec
        self.fields = [f for _, f, _, _ in string.Formatter().parse(spec) if f] if self.template else [spec]

    def extract(self, row: dict) -> str | None:
        if not self.template:
            value = row.get(self.spec)
            return value if isinstance(value, str) else None
        if any(row.get(f) is None for f in self.fields):
            return None
        return self.spec.format_map({f: row[f] for f in self.fields})


class Probe:
    """Raises a structure error when none of a file's first records gives any text."""

    def __init__(self, source: Source, path: Path | str, field: TextField):
        self.source, self.path, self.field = source, path, field
        self.seen = self.good = 0
        self.keys: list[str] = []

    def note(self, ok: bool, lineno: int, keys: Iterable[str] = ()) -> None:
        if self.seen >= STRUCTURE_PROBE or self.good:
            return
        self.seen += 1
        self.good += ok
        self.keys = self.keys or list(keys)
        if self.seen == STRUCTURE_PROBE and not self.good:
            self.fail(lineno)

    def finish(self, lineno: int) -> None:
        if self.seen and not self.good and self.seen < STRUCTURE_PROBE:
            self.fail(lineno)

    def fail(self, lineno: int) -> None:
        found = f"fields: {', '.join(self.keys)}" if self.keys else "no line is a JSON object"
        note = f" ({self.source.note})" if self.source.note else ""
        raise RainError(f"{self.path}:{lineno}: none of the first {self.seen} records has text field "
                        f"{self.field.spec!r} ({found}); set `text` for source {self.source.name}{note}")


def text_record(pos, text: str, bad: int, where: str) -> Record:
    if not text.strip():
        return Record(pos, None, "empty", bad, where)
    return Record(pos, text, None, bad)
