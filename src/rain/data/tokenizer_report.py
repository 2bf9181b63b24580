"""`rain tokenizer report`: how well one or two tokenizers compress the same text, per source and per language,
so a vocabulary size or kind can be picked with numbers: UTF-8 bytes per token, tokens per word (per character
for languages written without spaces), and how often a tokenizer falls back to bytes (`<0x41>` tokens) or to
its unknown token. Two tokenizers are compared side by side on the same documents (B's tokens over A's).

Documents come from text files (a .jsonl's `text` field, or a text file's paragraphs) or from a prepared
folder's held-out split (each source's first documents, decoded with the folder's tokenizer). Each document's
language is langid's (rain.data.filters.detect_language), or `?` where langid is not installed."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rain.data.filters import detect_language, language_id_available
from rain.data.tokenizer import Tokenizer, load_tokenizer
from rain.errors import RainError
from rain.files import write_atomic, write_json_atomic

# Written without spaces between words, so "tokens per word" means nothing there: tokens per character instead.
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo"})
BYTE_FALLBACK = re.compile(r"<0x[0-9A-Fa-f]{2}>")
PREPARED_DOCUMENTS = 200  # per source, from the held-out split of a prepared folder
LANGUAGES_LISTED = 8  # language rows in report.md, by bytes; the rest are one "other" row (report.json has all)
UNKNOWN_LANGUAGE = "?"


@dataclass
class Counts:
    documents: int = 0
    bytes: int = 0
    chars: int = 0  # non-whitespace characters
    words: int = 0  # whitespace-separated
    tokens: int = 0
    byte_fallback: int = 0
    unknown: int = 0

    def add(self, other: Counts) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)


@dataclass
class Measured:
    """One tokenizer's counts on a set of documents, by source, by language and in total."""

    tokenizer: dict
    total: Counts = field(default_factory=Counts)
    by_source: dict[str, Counts] = field(default_factory=dict)
    by_language: dict[str, Counts] = field(default_factory=dict)
    source_languages: dict[str, dict[str, int]] = field(default_factory=dict)  # bytes per language per source


def describe(tokenizer: Tokenizer, name: str) -> dict:
    """What a tokenizer is, from its tokenizer.json: model kind, byte-level or byte fallback, vocabulary size."""
    spec = json.loads(tokenizer.hf.to_str())
    model, pre = spec.get("model") or {}, json.dumps(spec.get("pre_tokenizer"))
    return {"name": name, "model": model.get("type", "?"), "vocab_size": tokenizer.vocab_size,
            "normalizer": (spec.get("normalizer") or {}).get("type"),
            "pretokenize": getattr(tokenizer, "pretokenize", "none"),
            "byte_level": '"ByteLevel"' in pre, "byte_fallback": bool(model.get("byte_fallback")),
            "unk_id": _unknown_id(tokenizer, model)}


def _unknown_id(tokenizer: Tokenizer, model: dict) -> int | None:
    if model.get("unk_id") is not None:  # Unigram keeps the id
        return int(model["unk_id"])
    return tokenizer.token_id(model["unk_token"]) if model.get("unk_token") else None  # BPE, WordPiece: the token


def language_of(text: str) -> str:
    return detect_language(text) if language_id_available() else UNKNOWN_LANGUAGE


def count_document(tokenizer: Tokenizer, text: str, info: dict) -> Counts:
    ids = tokenizer.encode(text)
    tokens = [tokenizer.hf.id_to_token(i) or "" for i in ids]
    return Counts(documents=1, bytes=len(text.encode("utf-8")), chars=sum(not c.isspace() for c in text),
                  words=len(text.split()), tokens=len(ids),
                  byte_fallback=sum(bool(BYTE_FALLBACK.fullmatch(t)) for t in tokens),
                  unknown=sum(i == info["unk_id"] for i in ids) if info["unk_id"] is not None else 0)


def measure(tokenizer: Tokenizer, name: str, documents: dict[str, list[tuple[str, str]]]) -> Measured:
    """Counts per source and per language; documents: {source: [(language, text), ...]}."""
    m = Measured(describe(tokenizer, name))
    for source, docs in documents.items():
        for language, text in docs:
            c = count_document(tokenizer, text, m.tokenizer)
            shares = m.source_languages.setdefault(source, {})
            shares[language] = shares.get(language, 0) + c.bytes
            for group in (m.by_source.setdefault(source, Counts()), m.by_language.setdefault(language, Counts()), m.total):
                group.add(c)
    return m


def with_languages(texts: dict[str, list[str]]) -> dict[str, list[tuple[str, str]]]:
    """Each document with its language, detected once for every tokenizer measured."""
    return {source: [(language_of(t), t) for t in docs] for source, docs in texts.items()}


def unit(language: str | None) -> str:
    return "char" if language in NO_SPACE_LANGUAGES else "word"


def figures(c: Counts, language: str | None = None) -> dict:
    """The figures of a row: bytes/token, tokens per word (or per character, see `unit`), fallback and unknown
    rates as shares of the tokens."""
    per = c.chars if unit(language) == "char" else c.words
    return {"documents": c.documents, "bytes": c.bytes, "tokens": c.tokens, "unit": unit(language),
            "bytes_per_token": c.bytes / c.tokens if c.tokens else None,
            "tokens_per_unit": c.tokens / per if per else None,
            "byte_fallback_rate": c.byte_fallback / c.tokens if c.tokens else None,
            "unknown_rate": c.unknown / c.tokens if c.tokens else None}


def rows(m: Measured) -> list[dict]:
    """Table rows: every source, every language (largest first), then the total."""
    out = [{"group": "source", "name": s, **figures(c, main_language(m.source_languages.get(s, {})))}
           for s, c in m.by_source.items()]
    out += [{"group": "language", "name": lang, **figures(c, lang)}
            for lang, c in sorted(m.by_language.items(), key=lambda kv: (-kv[1].bytes, kv[0]))]
    return out + [{"group": "total", "name": "all", **figures(m.total)}]


def main_language(bytes_by_language: dict[str, int]) -> str | None:
    """A source's language with the most bytes: its rows count words, or characters where that language is
    written without spaces."""
    return max(bytes_by_language, key=bytes_by_language.get) if bytes_by_language else None


def compare(a: Measured, b: Measured) -> list[dict]:
    """B against A on the same documents, per row: B's tokens over A's (below 1: B needs fewer tokens)."""
    mine = {(r["group"], r["name"]): r for r in rows(b)}
    out = []
    for ra in rows(a):
        rb = mine[(ra["group"], ra["name"])]
        out.append({"group": ra["group"], "name": ra["name"], "tokens_a": ra["tokens"], "tokens_b": rb["tokens"],
                    "token_ratio": rb["tokens"] / ra["tokens"] if ra["tokens"] else None})
    return out


# --- reading the documents ---------------------------------------------------------------------------------

def read_text_file(path: Path) -> list[str]:
    """A .jsonl's `text` fields, or a text file's paragraphs (separated by blank lines)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RainError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RainError(f"{path}: not UTF-8 text (byte {exc.start}); convert it, e.g. iconv -t UTF-8") from None
    if path.suffix == ".jsonl":
        return _jsonl_texts(path, text)
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def _jsonl_texts(path: Path, text: str) -> list[str]:
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line).get("text")
        except (json.JSONDecodeError, AttributeError):
            raise RainError(f"{path}:{n}: not a JSON object; each line needs a `text` field") from None
        if isinstance(value, str) and value.strip():
            out.append(value)
    return out


def texts_from_files(specs: list[str]) -> dict[str, list[str]]:
    """{source: documents} from NAME=FILE or FILE arguments (the source is then the file's name without suffix);
    one name given to several files joins them."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        path = Path(path).expanduser()
        out.setdefault(name or path.name.split(".")[0], []).extend(read_text_file(path))
    return out


def texts_from_prepared(data_dir: str | Path, per_source: int = PREPARED_DOCUMENTS) -> dict[str, list[str]]:
    """Each source's first documents of a prepared folder's held-out split, decoded with its own tokenizer."""
    from rain.data.prepared import PreparedData

    data = PreparedData(data_dir)
    tokenizer = Tokenizer.from_file(data.tokenizer_path)
    stream = data.stream("val", sources=True)
    if stream.doc_sources is None:
        raise RainError(f"{data_dir}: the val split has no document index; re-run `rain prepare`, or pass --text")
    ends = np.append(stream.doc_starts[1:], len(stream))
    out: dict[str, list[str]] = {name: [] for name in data.source_names}
    for start, end, sid in zip(stream.doc_starts, ends, stream.doc_sources):
        docs = out[data.source_names[sid]]
        if len(docs) < per_source:
            text = tokenizer.decode(stream.read(int(start), int(end)).tolist(), skip_special=True).strip()
            if text:
                docs.append(text)
    return {name: docs for name, docs in out.items() if docs}


# --- the report --------------------------------------------------------------------------------------------

def report(tokenizers: list[str], texts: dict[str, list[str]], out_dir: str | Path, origin: str) -> dict:
    """Measure one or two tokenizers (paths or folders) on the same documents; write report.md and report.json."""
    if not 1 <= len(tokenizers) <= 2:
        raise RainError(f"tokenizer report: give one or two tokenizers (got {len(tokenizers)})")
    if not any(texts.values()):
        raise RainError(f"tokenizer report: {origin} holds no text")
    documents = with_languages(texts)
    measured = [measure(load_tokenizer(spec), _name(spec, i), documents) for i, spec in enumerate(tokenizers)]
    result = {"text": origin, "language_id": "langid" if language_id_available() else None,
              "tokenizers": [{**m.tokenizer, "rows": rows(m)} for m in measured]}
    if len(measured) == 2:
        result["comparison"] = compare(*measured)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", result)
    write_atomic(out / "report.md", markdown(result).encode())
    return result


def _name(spec: str, i: int) -> str:
    path = Path(spec)
    shown = path.parent.name if path.name == "tokenizer.json" and path.parent.name else path.name
    return f"{'AB'[i]}: {shown}"


def _shown(rows: list[dict]) -> list[dict]:
    """The rows report.md lists: every source, the LANGUAGES_LISTED languages with the most bytes (rows come
    largest first) and the rest summed in one row, the total. Short or mixed documents (code, lists) draw stray
    language codes from langid."""
    languages = [r for r in rows if r["group"] == "language"]
    if len(languages) <= LANGUAGES_LISTED + 1:
        return rows
    rest = languages[LANGUAGES_LISTED:]
    other = {"group": "language", "name": f"other ({len(rest)} languages)"}
    if "token_ratio" in rest[0]:  # comparison rows
        a, b = sum(r["tokens_a"] for r in rest), sum(r["tokens_b"] for r in rest)
        other.update(tokens_a=a, tokens_b=b, token_ratio=b / a if a else None)
    else:
        other.update({k: sum(r[k] for r in rest) for k in ("documents", "bytes", "tokens")}, unit="word",
                     tokens_per_unit=None, byte_fallback_rate=None, unknown_rate=None)
        other["bytes_per_token"] = other["bytes"] / other["tokens"] if other["tokens"] else None
    return [r for r in rows if r["group"] == "source"] + languages[:LANGUAGES_LISTED] + [other, rows[-1]]


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def markdown(r: dict) -> str:
    lines = [f"# Tokenizer report: {r['text']}", "",
             "Bytes/token: UTF-8 bytes over tokens (higher: more text per token). Tokens/unit: tokens per "
             "whitespace-separated word, or per non-space character for languages written without spaces (zh, ja, "
             "th, ...). Byte fallback: `<0xNN>` tokens; unknown: the tokenizer's unknown token; both as shares of the "
             "tokens. Language: " + ("langid's, per document." if r["language_id"] else
                                     "not detected (langid is not installed: pip install 'rain[lang]')."), ""]
    for t in r["tokenizers"]:
        kind = (t["model"] + (", byte-level" if t["byte_level"] else "") + (", byte fallback" if t["byte_fallback"] else "")
                + (f", {t['normalizer']}" if t["normalizer"] else "")
                + (f", pre-tokenised: {t['pretokenize']}" if t["pretokenize"] not in ("none", None) else ""))
        lines += [f"## {t['name']} ({kind}, {t['vocab_size']:,} tokens)", "",
                  "| by | name | documents | bytes | tokens | bytes/token | tokens/unit | unit | byte fallback | unknown |",
                  "|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
        for row in _shown(t["rows"]):
            lines.append(f"| {row['group']} | {row['name']} | {row['documents']:,} | {row['bytes']:,} | {row['tokens']:,} | "
                         f"{_num(row['bytes_per_token'], '.3f')} | {_num(row['tokens_per_unit'], '.3f')} | {row['unit']} | "
                         f"{_num(row['byte_fallback_rate'], '.2%')} | {_num(row['unknown_rate'], '.2%')} |")
        lines.append("")
    if "comparison" in r:
        a, b = (t["name"] for t in r["tokenizers"])
        lines += ["## Comparison", "", f"B's tokens over A's on the same text (below 1: {b} needs fewer tokens than {a}).",
                  "", "| by | name | tokens A | tokens B | B / A |", "|---|---|---:|---:|---:|"]
        for row in _shown(r["comparison"]):
            lines.append(f"| {row['group']} | {row['name']} | {row['tokens_a']:,} | {row['tokens_b']:,} | "
                         f"{_num(row['token_ratio'], '.3f')} |")
        lines.append("")
    return "\n".join(lines)
