"""What sources are made of: their configuration (Source, Location), the records they yield, text fields
and templates, UTF-8 decoding that counts what it had to replace, the checks that tell text from binary data
(per file and per record), and cutting records longer than data.max_doc_chars into pieces."""

from __future__ import annotations

import codecs
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

from rain.errors import RainError

KINDS = ("prose", "code", "math")
SPLITS = ("file", "line", "paragraph")
STRUCTURE_PROBE = 100  # a file whose first this-many records give no text is the wrong file or field
# Binary data has NUL bytes or is mostly invalid UTF-8; Latin-1 prose has only a few percent of such bytes.
MAX_NOT_UTF8 = 0.3
# Binary data read as text is ~10% control characters (random bytes: 29 of 256); text has next to none (a
# terminal log with colour codes may have a few percent).
MAX_CONTROL = 0.05
CONTROL_BYTES = bytes([*range(0x09), 0x0B, *range(0x0E, 0x20), 0x7F])  # not \t \n \r \f
# A byte-order mark names the encoding (UTF-32 first: its little-endian mark starts like UTF-16's).
BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


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
    encoding: str = ""  # text files (.txt/.md/.rst/.py, archive members) in a legacy encoding, e.g. "euc-kr"; "": UTF-8


class Record(NamedTuple):
    pos: tuple[int, ...]  # (location, file, record within file, piece of the record); readers may leave out the piece
    text: str | None
    issue: str | None = None  # bad_json | missing_field | empty | binary | too_long (text is None)
    bad_bytes: int = 0  # undecodable bytes replaced by U+FFFD
    where: str = ""  # file:line (with the reason for issues)
    label: str | None = None  # stats key when a source carries several (in-memory documents)
    split: bool = False  # a piece of a record longer than data.max_doc_chars


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


class Utf8Decoder:
    """One record's bytes decoded as they are read (a character cut between two reads stays whole), counting
    the bytes that were not UTF-8."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")("rain.count")
        self.bad = 0

    def decode(self, data: bytes, final: bool = False) -> str:
        _replaced[0] = 0
        text = self._decoder.decode(data, final)
        self.bad += _replaced[0]
        return text


def bom_encoding(head: bytes) -> tuple[str, int] | None:
    """The encoding a file's byte-order mark names and the mark's length, or None."""
    for bom, encoding in BOMS:
        if head.startswith(bom):
            return encoding, len(bom)
    return None


def _escape_bytes(err: UnicodeDecodeError) -> tuple[str, int]:
    return "\udcff" * (err.end - err.start), err.end  # encoded with surrogateescape: one 0xFF byte each


codecs.register_error("rain.escape", _escape_bytes)


def recode_to_utf8(chunks: Iterable[bytes], encoding: str) -> Iterator[bytes]:
    """Bytes in another encoding (UTF-16/32 with a byte-order mark, or a configured one such as EUC-KR) as UTF-8.
    Each undecodable byte becomes an invalid UTF-8
    byte, so the UTF-8 decoder counts and replaces it where it is, like any other."""
    decoder = codecs.getincrementaldecoder(encoding)("rain.escape")
    for chunk in chunks:
        yield decoder.decode(chunk).encode("utf-8", "surrogateescape")
    yield decoder.decode(b"", final=True).encode("utf-8", "surrogateescape")


def _control_count(data: bytes) -> int:
    return len(data) - len(data.translate(None, CONTROL_BYTES))


def _looks_utf16(head: bytes) -> bool:
    """Mostly-ASCII UTF-16 has a NUL in every other byte, on one side only."""
    even, odd = head[0::2].count(0), head[1::2].count(0)
    return max(even, odd) > 0.3 * (len(head) // 2) and min(even, odd) < 0.1 * max(even, odd)


# Pre-Unicode encodings of Korean, Chinese and Japanese text. Their byte ranges overlap (EUC-KR text often decodes
# as GB18030 too), so a file that decodes in one is only said to be in "a legacy encoding such as" these.
LEGACY_ENCODINGS = ("euc_kr", "gb18030", "shift_jis", "big5")


def _legacy_hint(head: bytes, complete: bool) -> str:
    """Advice for text in a legacy CJK encoding (rain reads UTF-8, or UTF-16/32 with a byte-order mark)."""
    if _control_count(head) > MAX_CONTROL * len(head):
        return ""
    for encoding in LEGACY_ENCODINGS:
        try:
            codecs.getincrementaldecoder(encoding)().decode(head, final=complete)
        except UnicodeDecodeError:
            continue
        return ("; it reads as text in a legacy encoding such as EUC-KR, GB18030, Shift_JIS or Big5: re-save it as "
                "UTF-8 (iconv -f ENCODING -t UTF-8 FILE) or give its [[source]] encoding = \"euc-kr\" (say which)")
    return ""


def binary_reason(head: bytes, complete: bool) -> str | None:
    """Why the first bytes of a file say it is not text, or None if they are text (a file with a byte-order
    mark is text in that encoding). `complete`: head is the whole file (if not, a character cut at its end is
    not held against it)."""
    if bom_encoding(head):
        return None
    if b"\0" in head:
        hint = "; UTF-16 without a byte-order mark? re-save it as UTF-8" if _looks_utf16(head) else ""
        return f"it holds NUL bytes{hint}"
    _replaced[0] = 0
    codecs.getincrementaldecoder("utf-8")("rain.count").decode(head, final=complete)
    if _replaced[0] > MAX_NOT_UTF8 * len(head):
        return f"{_replaced[0] / len(head):.0%} of its first {len(head):,} bytes are not UTF-8{_legacy_hint(head, complete)}"
    control = _control_count(head)
    if control > MAX_CONTROL * len(head):
        return f"{control / len(head):.0%} of its first {len(head):,} bytes are control characters"
    return None


def text_reason(text: str) -> str | None:
    """Why a record's text is binary data rather than text (NUL characters, many control characters, or mostly
    U+FFFD, the bytes that were not text), or None. It runs on every record, so it works on the UTF-8 bytes in
    C (bytes.translate, str.count: ~3 us per 1 kB), not with a Python loop or a regex per character."""
    data = text.encode("utf-8", "surrogatepass")
    control = _control_count(data)  # a control character is one byte in UTF-8, so bytes count characters here
    if control:
        if b"\0" in data:
            return "it holds NUL characters"
        if control > MAX_CONTROL * len(text):
            return f"{control / len(text):.0%} of its characters are control characters"
    if not text.isascii():  # isascii is a flag of the string: free
        replaced = text.count("\ufffd")
        if replaced > MAX_NOT_UTF8 * len(text):
            return f"{replaced / len(text):.0%} of its characters are U+FFFD (bytes that were not text)"
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


def text_record(pos, text: str, bad: int, where: str, split: bool = False) -> Record:
    """A record of text, or an `empty` or `binary` issue (the reason in `where`)."""
    if not text or text.isspace():
        return Record(pos, None, "empty", bad, where, None, split)
    if reason := text_reason(text):
        return Record(pos, None, "binary", bad, f"{where} ({reason})", None, split)
    return Record(pos, text, None, bad, where, None, split)


# --- records longer than data.max_doc_chars -----------------------------------------------------------------


def _cut_point(text: str, lo: int, hi: int) -> int:
    """Where to end a piece that starts at lo and may reach hi: after the last newline in the window's second
    half, else after its last other whitespace, else at hi (a run with no whitespace, e.g. base64 or CJK)."""
    mid = lo + (hi - lo) // 2
    at = text.rfind("\n", mid, hi)
    if at < 0:
        at = max(text.rfind(c, mid, hi) for c in " \t\r\f\v")
    return at + 1 if at >= 0 else hi


class Cutter:
    """Text that arrives in parts, as pieces of at most max_chars characters (0: one piece, however long);
    joined, the pieces are the text. At most max_chars plus one part is held."""

    def __init__(self, max_chars: int):
        self.max_chars = max_chars
        self.parts: list[str] = []
        self.size = 0

    def add(self, text: str) -> list[str]:
        """The pieces that are complete once text is added."""
        self.parts.append(text)
        self.size += len(text)
        if not self.max_chars or self.size <= self.max_chars:
            return []
        buf, start, pieces = "".join(self.parts), 0, []
        while len(buf) - start > self.max_chars:
            cut = _cut_point(buf, start, start + self.max_chars)
            pieces.append(buf[start:cut])
            start = cut
        self.parts, self.size = [buf[start:]], len(buf) - start
        return pieces

    def end(self) -> str:
        """The last piece."""
        return "".join(self.parts)


def piece_where(where: str, piece: int) -> str:
    return f"{where} (piece {piece + 1})"


def split_record(record: Record, max_chars: int) -> list[Record]:
    """A record as pieces of at most max_chars characters, each checked like a record: the record alone (its
    position given a piece number if it has none) if it is short enough."""
    if record.text is None or not max_chars or len(record.text) <= max_chars:
        return [record if len(record.pos) == 4 else record._replace(pos=(*record.pos, 0))]
    cutter, key = Cutter(max_chars), record.pos[:3]
    pieces = [*cutter.add(record.text), cutter.end()]
    return [text_record((*key, i), piece, record.bad_bytes if i == 0 else 0, piece_where(record.where, i),
                        split=True)._replace(label=record.label) for i, piece in enumerate(pieces)]
