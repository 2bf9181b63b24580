"""Document filters: length, language (langid, optional), Gopher quality heuristics (English prose only), exact and
near (MinHash LSH) dedup.

Per-document checks (length, quality, hashes, MinHash signatures) run in the tokenising workers; the dedup
*decisions* need the whole corpus seen so far, so they run in one place (`Deduper`), in stream order."""

from __future__ import annotations

import array
import base64
import bz2
import hashlib
import importlib.metadata
import importlib.util
import io
import os
import pickle
import re
import zipfile
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from datasketch import MinHash, MinHashLSH

from rain.errors import RainError
from rain.files import write_atomic


@dataclass
class FilterConfig:
    min_chars: int = 0  # documents shorter than this are dropped (0: no minimum)
    max_chars: int = 0  # documents longer than this are dropped (0: no maximum)
    quality: bool = False  # Gopher heuristics; they apply to kind = "prose" sources, English documents only
    languages: tuple[str, ...] = field(default_factory=tuple)  # ISO 639-1 keep-list; empty: keep every language
    exact_dedup: bool = False  # drop a document whose normalised text was seen before
    near_dedup: bool = False  # drop a document whose MinHash matches an earlier one's in the LSH index
    near_dedup_threshold: float = 0.8  # estimated Jaccard similarity of word shingles
    num_perm: int = 128
    shingle_words: int = 5

    @classmethod
    def from_dict(cls, raw: dict, origin: str) -> "FilterConfig":
        known = {f.name for f in fields(cls)}
        for key in raw:
            if key not in known:
                raise RainError(f"{origin}: unknown filter {key!r} (known: {', '.join(sorted(known))})")
        cfg = cls(**{**raw, **({"languages": _language_list(raw["languages"], origin)} if "languages" in raw else {})})
        if not 0 < cfg.near_dedup_threshold < 1:
            raise RainError(f"{origin}: near_dedup_threshold must be between 0 and 1")
        if cfg.num_perm < 16 or cfg.shingle_words < 1 or cfg.min_chars < 0 or cfg.max_chars < 0:
            raise RainError(f"{origin}: num_perm must be >= 16, shingle_words >= 1, min/max_chars >= 0")
        return cfg

    def replace(self, overrides: dict, origin: str) -> "FilterConfig":
        return FilterConfig.from_dict({**asdict(self), **overrides}, origin)


def _language_list(raw, origin: str) -> tuple[str, ...]:
    if not isinstance(raw, (list, tuple)) or not all(isinstance(code, str) for code in raw):
        raise RainError(f"{origin}: languages must be a list of ISO 639-1 codes, like [\"en\", \"de\"] (got {raw!r})")
    for code in raw:
        if code not in DETECTABLE:
            raise RainError(f"{origin}: languages: {code!r} is not an ISO 639-1 code the language identifier (langid) "
                            f"knows; it knows {', '.join(sorted(DETECTABLE))}")
    if raw and not language_id_available():
        raise RainError(f"{origin}: languages needs the language identifier: pip install 'rain[lang]' (langid)")
    return tuple(raw)


def length_reason(text: str, cfg: FilterConfig) -> str | None:
    if cfg.min_chars and len(text) < cfg.min_chars:
        return "too_short"
    if cfg.max_chars and len(text) > cfg.max_chars:
        return "too_long"
    return None


# --- language (langid: Lui & Baldwin 2012; byte n-gram naive Bayes, 97 languages, model in the package) ------

# The codes langid can answer (its model's classes), so a keep-list is checked without loading the model.
DETECTABLE = frozenset({
    "af", "am", "an", "ar", "as", "az", "be", "bg", "bn", "br", "bs", "ca", "cs", "cy", "da", "de", "dz", "el", "en",
    "eo", "es", "et", "eu", "fa", "fi", "fo", "fr", "ga", "gl", "gu", "he", "hi", "hr", "ht", "hu", "hy", "id", "is",
    "it", "ja", "jv", "ka", "kk", "km", "kn", "ko", "ku", "ky", "la", "lb", "lo", "lt", "lv", "mg", "mk", "ml", "mn",
    "mr", "ms", "mt", "nb", "ne", "nl", "nn", "no", "oc", "or", "pa", "pl", "ps", "pt", "qu", "ro", "ru", "rw", "se",
    "si", "sk", "sl", "sq", "sr", "sv", "sw", "ta", "te", "th", "tl", "tr", "ug", "uk", "ur", "vi", "vo", "wa", "xh",
    "zh", "zu",
})
# Detection reads the start of a document only: past a few hundred characters the answer rarely changes, and
# langid's cost grows with the bytes it reads (docs/performance.md, "Language identification").
LANGUAGE_PREFIX_CHARS = 2000
_language: dict | None = None


def language_id_available() -> bool:
    return importlib.util.find_spec("langid") is not None


def language_id_version() -> str | None:
    """"langid <version>", or None where it is not installed."""
    return f"langid {importlib.metadata.version('langid')}" if language_id_available() else None


def detects_language(cfg: FilterConfig, prose: bool) -> bool:
    """Whether a source's documents get a language: it has a keep-list, or it is prose under the Gopher rules
    (which are for English and so need to know which documents are). Without langid installed, such a prose
    source has the Gopher rules applied to every document, as before (prepare says so once)."""
    return bool(cfg.languages) or (prose and cfg.quality and language_id_available())


def language_model() -> dict:
    """langid's model as arrays, once per process. Unpacking the copy inside langid (base64, bz2, a pickle) takes
    4-8 s on this busy machine, in every worker that detects; the arrays are kept as .npz in the user's cache
    folder after the first time ($XDG_CACHE_HOME/rain, else ~/.cache/rain), which loads in milliseconds."""
    global _language
    if _language is None:
        from langid import langid

        key = hashlib.blake2b(langid.model, digest_size=8).hexdigest()
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rain" / f"langid-{key}.npz"
        try:
            with np.load(cache) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            arrays = _unpack_langid(langid.model)
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                buf = io.BytesIO()
                np.savez(buf, **arrays)
                write_atomic(cache, buf.getvalue())
            except (OSError, RainError):  # no cache: the next process unpacks it again
                pass
        nextmove = array.array("H")
        nextmove.frombytes(arrays["nextmove"].astype(np.uint16).tobytes())  # fast per-byte indexing in Python
        _language = {**arrays, "nextmove": nextmove, "classes": [str(c) for c in arrays["classes"]],
                     "ptc": arrays["ptc"].astype(np.float64)}
    return _language


def _unpack_langid(model: bytes) -> dict:
    """langid's model: a byte automaton (next state per state and byte; the features each state completes) and
    naive-Bayes log-probabilities (features x languages, and the prior per language)."""
    ptc, pc, classes, nextmove, output = pickle.loads(bz2.decompress(base64.b64decode(model)))
    states = max(max(output), max(nextmove)) + 1
    ptr = np.zeros(states + 1, dtype=np.int64)
    for state, features in output.items():
        ptr[state + 1] = len(features)
    ptr = np.cumsum(ptr)
    features = np.zeros(ptr[-1], dtype=np.int32)
    for state, completed in output.items():
        features[ptr[state] : ptr[state + 1]] = completed
    return {"ptc": np.asarray(ptc, dtype=np.float32).reshape(-1, len(pc)), "pc": np.asarray(pc, dtype=np.float64),
            "classes": np.array(classes), "nextmove": np.frombuffer(nextmove, dtype=np.uint16),
            "ptr": ptr, "features": features}


def detect_language(text: str) -> str:
    """The ISO 639-1 code of the document's language by langid's model, read from its first LANGUAGE_PREFIX_CHARS
    characters, lower-cased (langid's byte n-grams take all-capital English for Kurdish). The same scores as
    langid's classify(), which multiplies the whole 7,480-feature count vector into the model, cast to float64 on
    every call (~16 ms a document here); a prefix has a few hundred features, and their rows suffice (~1 ms)."""
    m = language_model()
    nextmove, visits, state = m["nextmove"], defaultdict(int), 0
    for byte in text[:LANGUAGE_PREFIX_CHARS].lower().encode("utf-8", "replace"):
        state = nextmove[(state << 8) + byte]
        visits[state] += 1
    states = np.fromiter(visits, dtype=np.int64, count=len(visits))
    starts, ends = m["ptr"][states], m["ptr"][states + 1]
    completed = [m["features"][a:b] for a, b in zip(starts, ends) if b > a]
    counts = np.bincount(np.concatenate(completed) if completed else np.zeros(0, np.int64),
                         np.repeat(np.fromiter(visits.values(), dtype=np.float64, count=len(visits)), ends - starts),
                         minlength=len(m["ptc"]))
    present = np.flatnonzero(counts)
    return m["classes"][int(np.argmax(counts[present] @ m["ptc"][present] + m["pc"]))]


# --- Gopher quality (Rae et al. 2021, appendix A.1.1) ------------------------------------------------------

STOP_WORDS = {"the", "be", "to", "of", "and", "that", "have", "with"}
_STOP_FORMS = {form: w for w in STOP_WORDS for form in (w, w.capitalize(), w.upper())}  # no lower() per word
BULLETS = ("*", "-", "•", "‣", "◦", "⁃", "·")
NO_LETTER_WORD = re.compile(r"(?<!\S)[0-9!-/:-@\[-`{-~]+(?!\S)")  # whitespace-separated, only digits/ASCII symbols
TOP_NGRAM_MAX = {2: 0.20, 3: 0.18, 4: 0.16}  # share of characters in the most frequent n-gram
DUP_NGRAM_MAX = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}  # share of characters in repeated n-grams
_MULT = np.random.default_rng(0x5EED).integers(1, 2**63, size=16, dtype=np.uint64) | np.uint64(1)


def word_hashes(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Stable 32-bit hashes of the whitespace-separated words and their lengths in bytes."""
    words = text.encode("utf-8").split()
    ids = np.fromiter(map(zlib.crc32, words), dtype=np.uint64, count=len(words))
    lens = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    return ids, lens


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit hash per word n-gram (wrapping multiply-add; the multipliers are fixed random odd numbers)."""
    count = len(ids) - n + 1
    h = np.zeros(count, dtype=np.uint64)
    for j in range(n):
        h += ids[j : j + count] * _MULT[j]
    return h


def _repeated_fraction(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of characters in those repeats)."""
    seen, dup, dup_chars = set(), 0, 0
    for item in items:
        if item in seen:
            dup += 1
            dup_chars += len(item)
        seen.add(item)
    total_chars = sum(map(len, items)) or 1
    return dup / max(1, len(items)), dup_chars / total_chars


def gopher_reason(text: str, ids: np.ndarray, lens: np.ndarray) -> str | None:
    """The first Gopher rule the document breaks ("quality:<rule>"), or None."""
    words = text.split()
    n = len(words)
    if not 50 <= n <= 100_000:
        return "quality:word_count"
    mean_len = sum(map(len, words)) / n
    if not 3 <= mean_len <= 10:
        return "quality:mean_word_length"
    if (text.count("#") + text.count("...") + text.count("…")) / n > 0.1:
        return "quality:symbol_ratio"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if sum(line.startswith(BULLETS) for line in lines) > 0.9 * len(lines):
        return "quality:bullet_lines"
    if sum(line.endswith(("...", "…")) for line in lines) > 0.3 * len(lines):
        return "quality:ellipsis_lines"
    if n - len(NO_LETTER_WORD.findall(text)) < 0.8 * n:
        return "quality:alphabetic_words"
    if len({_STOP_FORMS[w] for w in _STOP_FORMS.keys() & set(words)}) < 2:
        return "quality:stop_words"
    dup_lines, dup_line_chars = _repeated_fraction(lines)
    if dup_lines > 0.3 or dup_line_chars > 0.2:
        return "quality:repeated_lines"
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    dup_paras, dup_para_chars = _repeated_fraction(paragraphs)
    if dup_paras > 0.3 or dup_para_chars > 0.2:
        return "quality:repeated_paragraphs"
    total = lens.sum() or 1
    for size, limit in TOP_NGRAM_MAX.items():
        if len(ids) < size:
            break
        h = ngram_hashes(ids, size)
        uniq, counts = np.unique(h, return_counts=True)
        top = int(np.argmax(counts))
        first = int(np.argmax(h == uniq[top]))
        if counts[top] > 1 and counts[top] * lens[first : first + size].sum() / total > limit:
            return "quality:top_ngram"
    # Words inside a repeated n-gram are also inside a repeated shorter one, so the share only falls as n
    # grows: the smallest n decides whether any larger n needs checking.
    for size, limit in DUP_NGRAM_MAX.items():
        share = _repeated_share(ids, lens, size, total)
        if share > limit:
            return "quality:repeated_ngrams"
        if share <= min(DUP_NGRAM_MAX.values()):
            break
    return None


def _repeated_share(ids: np.ndarray, lens: np.ndarray, size: int, total: int) -> float:
    """Share of characters in words covered by a second (or later) occurrence of some word n-gram."""
    if len(ids) < size:
        return 0.0
    h = ngram_hashes(ids, size)
    s = np.sort(h)
    repeated_values = s[1:][s[1:] == s[:-1]]
    if not len(repeated_values):
        return 0.0
    pos = np.nonzero(np.isin(h, repeated_values))[0]
    _, first = np.unique(h[pos], return_index=True)
    repeats = np.delete(pos, first)
    edges = np.bincount(repeats, minlength=len(ids) + size + 1) - np.bincount(repeats + size, minlength=len(ids) + size + 1)
    covered = np.cumsum(edges)[: len(ids)] > 0
    return float(lens[covered].sum() / total)


# --- dedup --------------------------------------------------------------------------------------------


def normalized_hash(text: str) -> int:
    """64-bit hash of the text lowercased with whitespace runs collapsed (exact-dedup key)."""
    norm = " ".join(text.lower().split()).encode("utf-8", "replace")
    return int.from_bytes(hashlib.blake2b(norm, digest_size=8).digest(), "little")


def _identity(x: int) -> int:
    return x


class Signer:
    """MinHash signatures of word shingles, with datasketch's permutations computed once."""

    def __init__(self, num_perm: int, shingle_words: int):
        self.shingle_words = shingle_words
        self.template = MinHash(num_perm=num_perm, seed=1, hashfunc=_identity)

    def minhash(self, hashvalues: np.ndarray | None = None) -> MinHash:
        return MinHash(seed=1, hashfunc=_identity, scheme=self.template.scheme,
                       hashvalues=self.template.hashvalues if hashvalues is None else hashvalues,
                       permutations=self.template.permutations)

    def signature(self, ids: np.ndarray) -> np.ndarray:
        n = max(1, min(self.shingle_words, len(ids)))
        shingles = (ngram_hashes(ids, n) >> np.uint64(32)) if len(ids) else np.zeros(1, np.uint64)
        m = self.minhash()
        m.update_batch(np.unique(shingles).tolist())
        return m.hashvalues


class Deduper:
    """The dedup index over every document kept so far (train and validation), persisted append-only
    (hashes and signatures in files next to the shards) so a resumed run rebuilds exactly the same index."""

    def __init__(self, cfg: FilterConfig, out_dir: Path | None = None):
        self.cfg = cfg
        self.exact: set[int] = set()
        self.signer = Signer(cfg.num_perm, cfg.shingle_words) if cfg.near_dedup else None
        self.lsh = MinHashLSH(threshold=cfg.near_dedup_threshold, num_perm=cfg.num_perm) if cfg.near_dedup else None
        self.n_sigs = 0
        self.dir = out_dir
        self._hash_file = self._sig_file = None
        self._sig_dtype = self.signer.template.hashvalues.dtype if self.signer else np.dtype(np.uint64)

    def _paths(self) -> tuple[Path, Path]:
        return self.dir / ".dedup_hashes.bin", self.dir / ".dedup_minhash.bin"

    def check(self, h: int, sig: np.ndarray | None, exact: bool, near: bool) -> str | None:
        if exact and self.cfg.exact_dedup and h in self.exact:
            return "exact_dup"
        if near and self.lsh is not None and sig is not None and self.lsh.query(self.signer.minhash(sig)):
            return "near_dup"
        return None

    def add(self, h: int, sig: np.ndarray | None) -> None:
        if self.cfg.exact_dedup and h not in self.exact:
            self.exact.add(h)
            if self.dir is not None:
                self._open()[0].write(np.uint64(h).tobytes())
        if self.lsh is not None and sig is not None:
            self.lsh.insert(self.n_sigs, self.signer.minhash(sig), check_duplication=False)
            self.n_sigs += 1
            if self.dir is not None:
                self._open()[1].write(np.asarray(sig, dtype=self._sig_dtype).tobytes())

    def _open(self):
        if self._hash_file is None:
            hashes, sigs = self._paths()
            self._hash_file, self._sig_file = open(hashes, "ab"), open(sigs, "ab")
        return self._hash_file, self._sig_file

    def checkpoint(self) -> dict:
        """Make everything added so far durable; returns what `restore` needs."""
        if self.dir is not None:
            for f in self._open():
                f.flush()
                os.fsync(f.fileno())
        return {"exact": len(self.exact), "near": self.n_sigs}

    def restore(self, counts: dict) -> None:
        hashes_path, sigs_path = self._paths()
        item = self._sig_dtype.itemsize * self.cfg.num_perm
        for path, size in ((hashes_path, 8 * counts["exact"]), (sigs_path, item * counts["near"])):
            if size and (not path.is_file() or path.stat().st_size < size):
                raise RainError(f"{path}: shorter than the saved state says; re-run with --overwrite")
            with open(path, "ab") as f:
                f.truncate(size)
        self.exact = set(np.fromfile(hashes_path, dtype=np.uint64).tolist()) if self.cfg.exact_dedup else set()
        if self.lsh is not None:
            sigs = np.fromfile(sigs_path, dtype=self._sig_dtype).reshape(-1, self.cfg.num_perm)
            for i, sig in enumerate(sigs):
                self.lsh.insert(i, self.signer.minhash(sig), check_duplication=False)
            self.n_sigs = len(sigs)

    def close(self) -> None:
        for f in (self._hash_file, self._sig_file):
            if f is not None:
                f.close()
        self._hash_file = self._sig_file = None
