"""Mixture configs (which sources, in what share of *tokens*, how many tokens, which filters) and the rule
that draws from them.

A mixture TOML (see data/rain-v2.toml):

    [mixture]
    budget = 10_000_000_000   # training tokens; 0: as many as the shares allow before a source runs out
    on_exhausted = "stop"     # a source runs out: "stop" the corpus there, or "upsample" (re-read it)
    max_epochs = 1            # with "upsample": read a source at most this many times
    hf_mirror = ""            # a folder with org/name/ hub snapshots, used instead of the network

    [filters]                 # for every source; a [[source]] may override min_chars, max_chars,
    min_chars = 200           # quality, languages, exact_dedup and near_dedup
    quality = true            # Gopher rules: prose documents detected as English only
    languages = ["en"]        # keep-list (ISO 639-1); others dropped as language:<code>. Here it applies to
                              # prose; a code or math source gets one only from its own [[source]] languages
    exact_dedup = true
    near_dedup = true
    near_dedup_threshold = 0.8

    [[source]]
    name = "fineweb_edu"
    weight = 0.6              # share of training tokens; weights sum to 1 (leave all out: take everything)
    kind = "prose"            # prose | code | math (quality filters, and [filters] languages, apply to prose)
    location = "hf://HuggingFaceFW/fineweb-edu?name=sample-10BT"   # or a path, folder, glob, or a list
    text = "text"             # field name, or a template like "{question}\\n\\n{answer}"
    encoding = ""             # text files in a legacy encoding ("euc-kr", "gb18030", "shift_jis"): recoded to
                              # UTF-8 as read; "": UTF-8 (UTF-16/32 with a byte-order mark are recognised)

Relative paths in a mixture file are relative to the file's folder."""

from __future__ import annotations

import codecs
import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from rain.config import find_preset
from rain.data.filters import FilterConfig, detects_language, language_id_version
from rain.data.sources import Location, Source, validate_source
from rain.errors import RainError

PRESET_DIR = Path(__file__).resolve().parents[3] / "data"
EXHAUSTED = ("stop", "upsample")
SOURCE_KEYS = {"name", "weight", "kind", "location", "text", "glob", "exclude", "split", "note", "encoding"}
SOURCE_FILTER_KEYS = {"min_chars", "max_chars", "quality", "languages", "exact_dedup", "near_dedup"}


@dataclass
class Mixture:
    sources: list[Source]
    budget: int = 0
    on_exhausted: str = "stop"
    max_epochs: int = 1
    filters: FilterConfig = field(default_factory=FilterConfig)
    origin: str = ""

    @property
    def weighted(self) -> bool:
        return all(s.weight is not None for s in self.sources)

    def source_filters(self, source: Source) -> FilterConfig:
        # Language ID means nothing for code unless asked: [filters] languages is for prose sources only.
        inherited = {} if source.kind == "prose" or "languages" in source.filters else {"languages": ()}
        return self.filters.replace({**inherited, **source.filters}, f"{self.origin} source {source.name}")

    def to_dict(self) -> dict:
        sources = [{"name": s.name, "weight": s.weight, "kind": s.kind, "split": s.split, "glob": s.glob,
                    "exclude": s.exclude, "filters": s.filters, "locations": [asdict(loc) for loc in s.locations],
                    **({"encoding": s.encoding} if s.encoding else {}),
                    **({"documents": "in-memory"} if s.documents is not None else {})} for s in self.sources]
        # Whether (and by which langid) documents get a language changes what the filters keep, so a resumed
        # prepare must not switch it: this dict is part of the resume fingerprint.
        detected = any(detects_language(self.source_filters(s), s.kind == "prose") for s in self.sources)
        return {"origin": self.origin, "budget": self.budget, "on_exhausted": self.on_exhausted,
                "max_epochs": self.max_epochs, "filters": asdict(self.filters), "sources": sources,
                "language_id": language_id_version() if detected else None}


def resolve_mixture_path(name_or_path: str) -> Path:
    """A mixture TOML path, or the name of a preset in data/ ('rain-v2', 'cpt-mix')."""
    return find_preset(name_or_path, PRESET_DIR, "mixture")


def load_mixture(name_or_path: str | Path) -> Mixture:
    path = resolve_mixture_path(str(name_or_path))
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise RainError(f"mixture {path}: not valid TOML ({exc})") from None
    return mixture_from_dict(raw, str(path), base=path.parent.resolve())


def mixture_from_dict(raw: dict, origin: str, base: Path = Path(".")) -> Mixture:
    unknown = set(raw) - {"mixture", "filters", "source"}
    if unknown:
        raise RainError(f"mixture {origin}: unknown table {sorted(unknown)[0]!r} (known: [mixture], [filters], [[source]])")
    top = dict(raw.get("mixture", {}))
    known_top = {"budget", "on_exhausted", "max_epochs", "hf_mirror"}
    if set(top) - known_top:
        raise RainError(f"mixture {origin}: unknown key {sorted(set(top) - known_top)[0]!r} in [mixture] (known: {', '.join(sorted(known_top))})")
    filters = FilterConfig.from_dict(raw.get("filters", {}), f"mixture {origin} [filters]")
    hf_mirror = str(_resolve(base, top.get("hf_mirror", ""))) if top.get("hf_mirror") else ""
    sources = [_source(entry, origin, base, hf_mirror) for entry in raw.get("source", [])]
    mix = Mixture(sources=sources, budget=int(top.get("budget", 0)), on_exhausted=top.get("on_exhausted", "stop"),
                  max_epochs=int(top.get("max_epochs", 1)), filters=filters, origin=origin)
    validate_mixture(mix)
    return mix


def _resolve(base: Path, path: str) -> str:
    if path.startswith("hf://") or "://" in path or Path(path).expanduser().is_absolute():
        return path
    return str(base / path)


def _source(entry: dict, origin: str, base: Path, hf_mirror: str) -> Source:
    name = entry.get("name")
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise RainError(f"mixture {origin}: every [[source]] needs a name of letters, digits, - and _ (got {name!r})")
    unknown = set(entry) - SOURCE_KEYS - SOURCE_FILTER_KEYS
    if unknown:
        raise RainError(f"mixture {origin}: source {name}: unknown key {sorted(unknown)[0]!r} "
                        f"(known: {', '.join(sorted(SOURCE_KEYS | SOURCE_FILTER_KEYS))})")
    raw_locs = entry.get("location")
    if raw_locs is None:
        raise RainError(f"mixture {origin}: source {name}: no location")
    default_text = entry.get("text", "text")
    locations = []
    for loc in raw_locs if isinstance(raw_locs, list) else [raw_locs]:
        if isinstance(loc, str):
            locations.append(Location(_resolve(base, loc), default_text))
        elif isinstance(loc, dict) and set(loc) <= {"path", "text"} and "path" in loc:
            locations.append(Location(_resolve(base, loc["path"]), loc.get("text", default_text)))
        else:
            raise RainError(f"mixture {origin}: source {name}: a location is a string or {{ path = ..., text = ... }}")
    weight = entry.get("weight")
    if weight is not None and (not isinstance(weight, (int, float)) or isinstance(weight, bool)):
        raise RainError(f"mixture {origin}: source {name}: weight must be a number")
    encoding = entry.get("encoding", "")
    try:
        encoding = codecs.lookup(encoding).name if encoding else ""
    except (LookupError, TypeError):
        raise RainError(f"mixture {origin}: source {name}: encoding {encoding!r} is not a codec Python knows "
                        "(e.g. \"euc-kr\", \"gb18030\", \"shift_jis\", \"big5\")") from None
    return Source(name=name, locations=locations, kind=entry.get("kind", "prose"), encoding=encoding,
                  weight=None if weight is None else float(weight), glob=entry.get("glob", ""),
                  exclude=list(entry.get("exclude", [])), split=entry.get("split", "file"), note=entry.get("note", ""),
                  filters={k: entry[k] for k in SOURCE_FILTER_KEYS if k in entry}, hf_mirror=hf_mirror)


def validate_mixture(mix: Mixture) -> None:
    where = f"mixture {mix.origin}"
    if not mix.sources:
        raise RainError(f"{where}: no [[source]]")
    names = [s.name for s in mix.sources]
    if len(set(names)) != len(names):
        raise RainError(f"{where}: source names must be unique ({', '.join(names)})")
    weights = [s.weight for s in mix.sources]
    if any(w is not None for w in weights):
        if any(w is None for w in weights):
            raise RainError(f"{where}: give every source a weight, or none (to take all of each)")
        if any(w <= 0 for w in weights):
            raise RainError(f"{where}: weights must be positive")
        if not math.isclose(sum(weights), 1.0, abs_tol=1e-6):
            raise RainError(f"{where}: weights sum to {sum(weights):.6g}, not 1 ({', '.join(f'{s.name} {s.weight}' for s in mix.sources)})")
    if mix.on_exhausted not in EXHAUSTED:
        raise RainError(f"{where}: on_exhausted {mix.on_exhausted!r} must be one of {', '.join(EXHAUSTED)}")
    if mix.max_epochs < 1 or mix.budget < 0:
        raise RainError(f"{where}: max_epochs must be >= 1 and budget >= 0")
    for source in mix.sources:
        validate_source(source)
        mix.source_filters(source)


def mixture_from_paths(paths: list[str]) -> Mixture:
    """The user's own files or folders, one source each, taken whole (no weights, no filters)."""
    sources = []
    for raw in paths:
        path = Path(raw).expanduser()
        name = (path.stem.split(".")[0] if path.is_file() else path.name) or "data"
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        while name in {s.name for s in sources}:
            name += "_"
        sources.append(Source(name=name, locations=[Location(str(raw))]))
    mix = Mixture(sources=sources, origin="--data " + " ".join(paths))
    validate_mixture(mix)
    return mix


def mixture_from_documents(documents: Callable[[], Iterable[tuple[str, str]]]) -> Mixture:
    """In-memory (source, text) records, taken whole; each record's source name is its own stats line."""
    return Mixture(sources=[Source(name="documents", locations=[], documents=documents)], origin="in-memory documents")


def pick_source(taken: list[int], weights: list[float], next_tokens: list[int]) -> int:
    """Weighted fair queueing: serve the source whose next document would finish earliest in its own
    token-share clock. Every source then stays within one document of its share at all times."""
    return min(range(len(weights)), key=lambda i: ((taken[i] + next_tokens[i]) / weights[i], i))
