"""`rain prepare`: sources -> filters -> held-out split -> BPE tokenizer -> mixture -> token shards,
manifest.json and report.md. The shard pass itself is rain.data.sharding; an interrupted prepare is resumed
from its last finished training shard and writes exactly the same shards."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from rain.config import RunConfig
from rain.data import builtin
from rain.data.encode import DocStream, Job, Pool
from rain.data.mixture import Mixture, load_mixture, mixture_from_documents, mixture_from_paths
from rain.data.sharding import STATE, ShardRun
from rain.data.shards import MANIFEST, file_sha256
from rain.data.sources import resolve_files
from rain.data.tokenizer import SIDECAR, Tokenizer, load_tokenizer, train_tokenizer
from rain.errors import RainError

# Only files prepare writes are ever deleted (an --out folder may hold other things).
OUTPUT_FILE = re.compile(r"^\.?(train|val)_\d{6}\.(bin|idx\.npy)(\.partial)?$|^\.dedup_(hashes|minhash)\.bin$"
                         r"|^(manifest\.json|tokenizer\.json|pretokenize\.json|report\.md|report\.json|doc_lengths\.png|decontamination\.json)$"
                         r"|^\.prepare_state\.npz$")


def resolve_mixture(cfg: RunConfig, documents: Callable[[], Iterable[tuple[str, str]]] | None) -> Mixture:
    d = cfg.data
    if documents is not None:
        return mixture_from_documents(documents)
    if d.mixture:
        return load_mixture(d.mixture)
    tomls = [p for p in d.paths if p.endswith(".toml")]
    if tomls:
        if len(d.paths) > 1:
            raise RainError(f"--data {' '.join(d.paths)}: give one mixture .toml, or files and folders (not both)")
        return load_mixture(tomls[0])
    if d.paths:
        return mixture_from_paths(d.paths)
    return mixture_from_documents(builtin.documents)


def fingerprint(cfg: RunConfig, mixture: Mixture) -> str:
    """What the shards depend on; a saved state with another fingerprint cannot be resumed."""
    d = cfg.data
    files = {}
    for source in mixture.sources:
        for loc in source.locations:
            if not loc.path.startswith("hf://"):
                files[f"{source.name}:{loc.path}"] = [[str(p), p.stat().st_size] for p in resolve_files(source, loc, d.seed)]
    key = {"mixture": mixture.to_dict(), "files": files, "vocab_size": cfg.model.vocab_size,
           "data": {k: getattr(d, k) for k in ("tokenizer", "val_fraction", "shard_tokens", "max_docs", "seed", "tokenizer_sample_bytes",
                                                 "max_doc_chars", "tokenizer_kind", "normalization", "pretokenize")}}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


# `rain score` / `rain data filter` files: they describe the shards a fresh prepare replaces.
SCORES_FILE = re.compile(r"^[^/]+\.(npy|json|filter\.md|filter\.json)$")


def clean_out_dir(out: Path, temporaries_only: bool = False) -> None:
    scores = out / "scores"
    if not temporaries_only and scores.is_dir():
        for path in scores.iterdir():
            if path.is_file() and SCORES_FILE.match(path.name):
                path.unlink()
        if not any(scores.iterdir()):
            scores.rmdir()
    for path in out.iterdir():
        temporary = ".tmp-" in path.name  # left by a write_atomic that was killed
        name = path.name.split(".tmp-")[0][1:] if temporary else path.name
        if path.is_file() and OUTPUT_FILE.match(name) and (temporary or not temporaries_only):
            path.unlink()


def sample_texts(mixture: Mixture, cfg: RunConfig, pool: Pool) -> Iterator[str]:
    """The tokenizer's training text: the mixture's first documents, in its shares of bytes, filtered,
    without held-out documents."""
    d = cfg.data
    shares = [s.weight for s in mixture.sources] if mixture.weighted else [1 / len(mixture.sources)] * len(mixture.sources)
    for source, share in zip(mixture.sources, shares):
        f = mixture.source_filters(source)
        job = Job(f, source.kind == "prose", d.seed, d.val_fraction, tokenizer=None)
        stream, used = DocStream(source, d.seed, pool, job, keep_text=True, max_chars=d.max_doc_chars), 0
        while used < share * d.tokenizer_sample_bytes and (doc := stream.next()) is not None:
            if doc.record.text is not None and doc.reason is None and not doc.val:
                used += doc.nbytes
                yield doc.record.text


def obtain_tokenizer(cfg: RunConfig, mixture: Mixture, out: Path, pool: Pool, state: dict | None, log) -> Tokenizer:
    path = out / "tokenizer.json"
    if state is not None:
        if not path.is_file() or file_sha256(path) != state["tokenizer_sha256"]:
            raise RainError(f"{path}: differs from the interrupted run's; re-run with --overwrite")
        return Tokenizer.from_file(path)
    d = cfg.data
    if d.tokenizer == "train":
        t0 = time.time()
        tokenizer = train_tokenizer(sample_texts(mixture, cfg, pool), cfg.model.vocab_size, d.tokenizer_kind,
                                    d.normalization, d.pretokenize)
        log(f"trained a {tokenizer.vocab_size:,}-token {d.tokenizer_kind} tokenizer in {time.time() - t0:.1f} s")
    else:
        tokenizer = load_tokenizer(d.tokenizer)
        check_given_tokenizer(tokenizer, cfg)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise RainError(f"tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size is {cfg.model.vocab_size}")
    tokenizer.save(path)  # with its sidecar (SIDECAR) when it pre-splits text
    return tokenizer


def check_given_tokenizer(tokenizer: Tokenizer, cfg: RunConfig) -> None:
    """An existing tokenizer (data.tokenizer = a file) brings its own kind and pre-tokenisation: settings for a
    trained one that contradict it are refused rather than ignored."""
    d = cfg.data
    if d.tokenizer_kind != "bytelevel-bpe" and d.tokenizer_kind != tokenizer.kind:
        raise RainError(f"data.tokenizer_kind = {d.tokenizer_kind!r} but {d.tokenizer} is {tokenizer.kind!r}: the "
                        "kind applies to a trained tokenizer (data.tokenizer = \"train\"); drop the setting")
    if d.pretokenize != "none" and d.pretokenize != tokenizer.pretokenize:
        raise RainError(f"data.pretokenize = {d.pretokenize!r} but {d.tokenizer} was trained with pretokenize "
                        f"{tokenizer.pretokenize!r} ({SIDECAR} beside it says which): drop the setting, or train one "
                        "with data.tokenizer = \"train\"")


def load_state(out: Path, key: str) -> tuple[dict, dict] | None:
    """(state, arrays) of an interrupted run in out, or None."""
    path = out / STATE
    if not path.is_file():
        return None
    try:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        state = json.loads(str(arrays.pop("state")))
    except (OSError, ValueError, KeyError):
        raise RainError(f"{path}: unreadable; re-run with --overwrite to start over") from None
    if state.get("fingerprint") != key:
        raise RainError(f"{out}: holds an unfinished prepare with a different configuration or input; "
                        f"pass --overwrite to start over, or run it with its original settings")
    return state, arrays


def prepare(cfg: RunConfig, out_dir: str | Path, overwrite: bool = False,
            documents: Callable[[], Iterable[tuple[str, str]]] | None = None, log: Callable[[str], None] = print) -> dict:
    """Build the corpus of cfg.data (a mixture .toml, files, or the built-in corpus) into out_dir and return
    its manifest. An interrupted run in out_dir is resumed; a finished one needs overwrite=True. A run that
    fails before its first checkpoint removes the folders it created."""
    t0 = time.time()
    out = Path(out_dir)
    mixture = resolve_mixture(cfg, documents)
    if (out / MANIFEST).exists() and not overwrite:
        raise RainError(f"{out}: already holds prepared data; pass --overwrite to replace it or choose another --out")
    created = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    try:
        manifest = _prepare(cfg, mixture, out, overwrite, log, t0)
    except BaseException:
        if created and not (out / STATE).exists():  # nothing to resume: leave no half-written folder behind
            _remove_created(out, created)
        raise
    _log_skipped(manifest, log)
    from rain.data.report import report

    report(out)
    return manifest


def _prepare(cfg: RunConfig, mixture: Mixture, out: Path, overwrite: bool, log, t0: float) -> dict:
    if overwrite and out.is_dir():
        clean_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    key = fingerprint(cfg, mixture)
    saved = load_state(out, key)
    clean_out_dir(out, temporaries_only=saved is not None)  # a fresh run also drops a run killed before its first checkpoint
    with Pool(cfg.data.workers) as pool:
        tokenizer = obtain_tokenizer(cfg, mixture, out, pool, saved[0] if saved else None, log)
        t1 = time.time()
        shard_run = ShardRun(cfg, mixture, out, pool, tokenizer, key, log)
        if saved is not None:
            shard_run.restore(*saved)
        shard_run.run()
        manifest = shard_run.finish(tokenizer, {"tokenizer": t1 - t0, "shards": time.time() - t1})
    if manifest["mixture"]["ended"].get("short"):
        log("warning: " + manifest["mixture"]["ended"]["message"])
    return manifest


def _remove_created(out: Path, created: list[Path]) -> None:
    """Remove prepare's own files from out, then each folder this run created while it is empty (a folder
    someone else put files into meanwhile stays)."""
    if out.is_dir():
        clean_out_dir(out)
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            return


def _log_skipped(manifest: dict, log) -> None:
    for name, inp in manifest["input"].items():
        if inp.get("binary"):
            files = inp.get("skipped_files", [])
            more = f", ... (manifest.json lists {len(files)})" if len(files) > 3 else ""
            log(f"{name}: skipped {inp['binary']} binary file(s)/record(s), not text: {', '.join(files[:3])}{more}")
        if inp.get("too_long"):
            long = inp.get("skipped_too_long", [])
            more = f", ... (manifest.json lists {len(long)})" if len(long) > 3 else ""
            log(f"{name}: skipped {inp['too_long']} record(s) too long to read in bounded memory: {', '.join(long[:3])}{more}")
