"""Hugging Face datasets as sources: `hf://org/name?name=subset&split=train`, streamed with `datasets`.

Offline, point `hf_mirror` (or $RAIN_HF_MIRROR) at a folder holding `org/name/` in the hub's layout (README.md
configs + parquet/jsonl files, as `huggingface-cli download --repo-type dataset` leaves them): the same
`load_dataset` call then reads it locally."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlparse

from rain.data.text import Location, Probe, Record, Source, TextField, text_record
from rain.errors import RainError


def parse_hf(location: str) -> tuple[str, dict]:
    url = urlparse(location)
    repo = f"{url.netloc}{url.path}".strip("/")
    if repo.count("/") != 1:
        raise RainError(f"{location}: expected hf://org/name?name=subset&split=train")
    params = {k: v[-1] for k, v in parse_qs(url.query).items()}
    unknown = set(params) - {"name", "split", "data_dir", "data_files", "revision"}
    if unknown:
        raise RainError(f"{location}: unknown parameter {sorted(unknown)[0]!r} (known: name, split, data_dir, data_files, revision)")
    return repo, params


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants  # installed with datasets (checked by open_hf)

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.setdefaulttimeout(timeout)
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(None)


def open_hf(source: Source, loc: Location):
    """A streaming `datasets.IterableDataset` for an hf:// location (a local mirror when there is one)."""
    repo, params = parse_hf(loc.path)
    try:
        import datasets
    except ImportError:
        raise RainError(f"source {source.name}: hf:// locations need the datasets library: pip install 'rain[hf]'") from None
    mirror = source.hf_mirror or os.environ.get("RAIN_HF_MIRROR", "")
    local = Path(os.path.expanduser(mirror)) / repo if mirror else None
    path = str(local) if local is not None and local.is_dir() else repo
    if path == repo and not _hub_reachable():
        hint = f"no {local} either; " if local is not None else ""
        raise RainError(f"source {source.name}: {loc.path}: the Hugging Face hub is not reachable (offline?); {hint}"
                        f"download the dataset and set hf_mirror (or RAIN_HF_MIRROR), or point location at local files")
    datasets.logging.set_verbosity_error()
    try:
        ds = datasets.load_dataset(path, name=params.get("name"), split=params.get("split", "train"), streaming=True,
                                   data_dir=params.get("data_dir"), data_files=params.get("data_files"),
                                   revision=params.get("revision"))
    except Exception as exc:  # datasets raises many types (ConnectionError, ValueError, FileNotFoundError...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RainError(f"source {source.name}: cannot open {loc.path} from {path} ({first})") from None
    return ds


def read_hf(source: Source, key: tuple[int, int], loc: Location, field: TextField, skip: int) -> Iterator[Record]:
    ds = open_hf(source, loc)
    if ds.features is not None:
        missing = [f for f in field.fields if f not in ds.features]
        if missing:
            note = f" ({source.note})" if source.note else ""
            raise RainError(f"source {source.name}: {loc.path}: no field {missing[0]!r} (fields: {', '.join(ds.features)}); "
                            f"set `text`{note}")
        ds = ds.select_columns(field.fields)
    if skip:
        ds = ds.skip(skip)
    row, probe = skip, Probe(source, loc.path, field)
    try:
        for example in ds:
            text = field.extract(example)
            probe.note(text is not None, row + 1, example.keys())
            where = f"{loc.path}: row {row}"
            yield (text_record((*key, row), text, 0, where) if text is not None
                   else Record((*key, row), None, "missing_field", 0, where))
            row += 1
    except RainError:
        raise
    except Exception as exc:
        raise RainError(f"source {source.name}: {loc.path}: reading stopped at row {row} ({type(exc).__name__}: {exc})") from None
    probe.finish(row)
