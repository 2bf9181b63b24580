"""Checkpoint and run folders: the one module that writes and reads them.

A run folder (`rain train --out RUN`, `rain sft --out RUN`) holds its config.json and checkpoints/ with
`step_N`, `best` and `last` checkpoint folders. A checkpoint folder is self-contained, written atomically and
loaded without pickle:

    model.safetensors      weights (a tied LM head stored once, as the embedding)
    optimizer.safetensors  optimizer tensors (+ RNG states); their non-tensor parts go in state.json
    state.json             step, tokens seen, data-loader position, best validation loss, optimizer groups,
                           the parent it started from (init_from), the chat template of an SFT model
    config.json            the resolved run config
    tokenizer.json         the tokenizer the model was trained with
    pretokenize.json       only where the tokenizer pre-splits text in Python (Korean morphemes, rain.data.tokenizer)

That is a full checkpoint, which a run resumes from (`last` always; `best` and `step_N` as train.keep_full says).
A weights-only checkpoint has no optimizer.safetensors and a state.json without the records a resume reads
(`"weights_only": true`, and `weights_dtype`: bf16 halves the disk); eval, export, sample and --init-from read
it as any other, its weights cast back into the model's dtype on load. `DiskPlan` projects what a run's
checkpoints will take on disk.

Every stage reads them through here: `find` (a checkpoint, or a run's newest) and `find_all` (every checkpoint of
a run) give `Checkpoint` values read once; `load_model` builds the model of one, or of a Hugging Face Qwen3/Llama
folder (`is_hf_folder`); `lineage` follows init_from back to the first parent.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from rain.config import ModelConfig, RunConfig, config_from_dict
from rain.data.tokenizer import SIDECAR, Tokenizer, read_sidecar, sidecar_path
from rain.errors import RainError
from rain.model.hf_weights import rain_model_config, rain_state_dict
from rain.model.transformer import Transformer

FILES = ("model.safetensors", "optimizer.safetensors", "state.json", "config.json", "tokenizer.json")
WEIGHT_FILES = ("model.safetensors", "config.json", "tokenizer.json")


@dataclass(frozen=True)
class Checkpoint:
    """A rain checkpoint folder as read once: its run config and the records of state.json."""

    folder: Path  # as found: `last`, or `.old-last` when a save was interrupted mid-swap
    name: str  # the folder's own name (`last`, `step_0000100`), never `.old-`
    config: RunConfig
    step: int | None  # None: no state.json
    tokens: int | None  # tokens seen
    data_dir: str | None  # the prepared data it was trained on (SFT records its chat data in state["sft"])
    parent: Path | None  # the folder it started from (`--init-from`, an SFT base), as recorded
    chat_template: str | None  # an SFT model's; None for a base model
    state: dict = field(default_factory=dict, repr=False, compare=False)  # all of state.json


@dataclass(frozen=True)
class HFModel:
    """A Hugging Face folder a run started from (in a lineage)."""

    folder: Path
    architectures: tuple[str, ...]


@dataclass(frozen=True)
class MissingParent:
    """A parent recorded in init_from that is no longer a readable checkpoint (in a lineage)."""

    path: Path


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RainError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise RainError(f"{path}: cannot be read ({exc.strerror or exc})") from None


class DamagedCheckpoint(RainError):
    """A file of a checkpoint that is there but cannot be used (truncated, empty, garbled): `rain eval` skips that
    checkpoint and scores the others; every other command stops with this one line."""


# step_N are weights only unless train.keep_full = "all"; best keeps the optimizer state by default.
RESUME_HINT = ("to resume, copy checkpoints/best (or a step_N saved with train.keep_full=all: one with an "
               "optimizer.safetensors) over checkpoints/last, or start over with --overwrite")


def _damaged(path: Path, what: str, resume: bool = False) -> DamagedCheckpoint:
    """The one-line error for a damaged checkpoint file: what is wrong with it and what to do instead (`last`,
    which --resume reads, gets both pieces of advice)."""
    folder = path.parent
    todo = RESUME_HINT if resume else "pick another checkpoint"
    if not resume and folder.parent.name == "checkpoints" and folder.name.removeprefix(".old-") == "last":
        todo += f" ({RESUME_HINT})"
    return DamagedCheckpoint(f"{path}: {what}; {todo}")


JSON_TYPES = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean",
              type(None): "null"}


def _checkpoint_json(path: Path, expected: type, description: str, resume: bool = False):
    """A JSON file of a checkpoint holding a value of type `expected` (described as `description`)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _damaged(path, f"not valid JSON ({exc})", resume) from None
    except OSError as exc:
        raise _damaged(path, f"cannot be read ({exc.strerror or exc})", resume) from None
    if not isinstance(value, expected):
        raise _damaged(path, f"not {description}: it holds a JSON {JSON_TYPES.get(type(value), 'value')}", resume)
    return value


def load_tensors(path: Path, resume: bool = False, hint: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a truncated, empty or garbled one is a one-line error naming it.
    `hint` replaces the checkpoint advice for files of other folders."""
    return _safetensors(load_file, path, resume, hint)


def _check_header(path: Path) -> None:
    """Read only the header of a safetensors file, which is where truncation shows (it no longer covers the
    tensors it lists): cheap enough for every checkpoint that is listed."""
    def read_header(name: str) -> None:
        with safe_open(name, framework="pt") as f:
            f.keys()

    _safetensors(read_header, path, False, None)


def _safetensors(read: Callable[[str], object], path: Path, resume: bool, hint: str | None):
    """The one place safetensors' own errors are caught: read(path) or a one-line error naming the file."""
    try:
        return read(str(path))
    except (SafetensorError, OSError) as exc:
        what = f"cannot be read ({exc.strerror or exc})" if isinstance(exc, OSError) else f"truncated or damaged ({exc})"
    if hint is not None:
        raise RainError(f"{path}: {what}; {hint}") from None
    raise _damaged(path, what, resume) from None


def _file_mode() -> int:
    """The mode an ordinary new file gets: 0o666 less the umask (which can only be read by setting it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, with the permissions of every other file written (it writes through a private
    temporary file, so the result would be 0600)."""
    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, _file_mode())


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper
    state = model.state_dict()
    if model.cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def load_model_state(model: Transformer, state: dict[str, torch.Tensor], origin: str) -> None:
    model = getattr(model, "_orig_mod", model)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise RainError(f"{origin}: weights do not fit this architecture ({first.strip()})") from None
    missing = [k for k in missing if not (k == "lm_head.weight" and model.cfg.tie_embeddings)]
    if missing or unexpected:
        raise RainError(f"{origin}: weights do not fit this architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, pstate in sd["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(folder: Path, model, optimizer, state: dict, cfg: RunConfig, tokenizer_path: Path,
                    extra_tensors: dict[str, torch.Tensor] | None = None,
                    weights_dtype: torch.dtype | None = None) -> Path:
    """Write everything into a temporary sibling, fsync, then swap it in; a crash at any point leaves
    the previous checkpoint (or, mid-swap, its `.old` copy, which `resolve` picks up) intact. With
    `optimizer=None` the checkpoint holds weights only (see weights_only_state), in `weights_dtype` if given."""
    folder = Path(folder)
    tmp = folder.with_name(f".tmp-{folder.name}")
    try:
        return _save(folder, tmp, model, optimizer, state, cfg, tokenizer_path, extra_tensors, weights_dtype)
    except (OSError, SafetensorError) as exc:  # a full disk, a quota: the earlier checkpoints are intact
        shutil.rmtree(tmp, ignore_errors=True)  # and a half-written one takes no space
        raise RainError(f"could not save {folder}: {getattr(exc, 'strerror', None) or exc}; the previous checkpoints "
                        "are intact: free space (or fix the cause) and continue with --resume") from None


def _save(folder: Path, tmp: Path, model, optimizer, state: dict, cfg: RunConfig, tokenizer_path: Path,
          extra_tensors: dict[str, torch.Tensor] | None, weights_dtype: torch.dtype | None) -> Path:
    old = folder.with_name(f".old-{folder.name}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if optimizer is None:
        weights = cast_weights(model_state(model), weights_dtype)
        save_tensors(weights, tmp / "model.safetensors")
        state = weights_only_state(state, weights)
    else:
        save_tensors(model_state(model), tmp / "model.safetensors")
        opt_tensors, opt_meta = optimizer_state(optimizer)
        save_tensors({**opt_tensors, **{f"rng.{k}": v for k, v in (extra_tensors or {}).items()}},
                     tmp / "optimizer.safetensors")
        state = {**state, "optimizer": opt_meta}
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    cfg.save(tmp / "config.json")
    shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
    if sidecar_path(tokenizer_path).is_file():  # the tokenizer is not whole without it
        shutil.copyfile(sidecar_path(tokenizer_path), tmp / SIDECAR)
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    _fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def cast_weights(weights: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """The floating-point tensors in `dtype` (None: as they are); load_model_state casts them back."""
    if dtype is None:
        return weights
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}


# The state.json records only a resume reads: a weights-only checkpoint leaves them out.
RESUME_ONLY = ("best_val", "loss_window", "loader", "optimizer", "micro_batch")


def weights_only_state(state: dict, weights: dict[str, torch.Tensor]) -> dict:
    """state.json of a weights-only checkpoint: step, tokens, validation, lineage; no loader or optimizer records,
    so newest_complete never takes it for one to resume from."""
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in weights.values() if v.is_floating_point()})
    return {**{k: v for k, v in state.items() if k not in RESUME_ONLY}, "weights_only": True,
            "weights_dtype": ",".join(dtypes)}


def is_weights_only(folder: Path) -> bool:
    """A readable checkpoint saved without its optimizer state (see weights_only_state)."""
    try:
        return bool(read(folder).state.get("weights_only"))
    except RainError:
        return False


def keeps_optimizer(name: str, keep_full: str) -> bool:
    """Whether checkpoint `name` (last, best, step_N) is saved whole, per train.keep_full; `last` always is."""
    return name == "last" or keep_full == "all" or (name == "best" and keep_full == "last,best")


def not_resumable(run_dir: Path, names: list[str]) -> RainError:
    """The one line for a run whose checkpoints (`names`) hold none that --resume can continue from: weights-only
    ones (which are kept, and which a new run can start from) and damaged or incomplete ones."""
    checkpoints = Path(run_dir) / "checkpoints"
    weights = [n for n in names if is_weights_only(checkpoints / n)]
    damaged = [n for n in names if n not in weights]
    kinds = ([f"weights only, without the optimizer state a resume needs: {', '.join(weights)}"] if weights else []) + \
        ([f"damaged or incomplete: {', '.join(damaged)}"] if damaged else [])
    todo = (f"start a new run from its weights with --init-from {checkpoints / weights[-1]} --out NEW, "
            if weights else "mend one, ")
    return RainError(f"{run_dir}: no checkpoint can be resumed from ({'; '.join(kinds)}); {todo}or start over "
                     "with --overwrite")


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under `folder` (0 when it does not exist)."""
    total = 0
    for path in Path(folder).rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except FileNotFoundError:  # removed while listed (an old copy's clean-up)
            pass
    return total


def format_size(n: float) -> str:
    """Bytes for people, in powers of 1000 as disks are sold: 512 B, 268.5 MB, 30.1 GB."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.uint8: "U8"}
Shapes = dict[str, tuple[tuple[int, ...], torch.dtype]]


def safetensors_bytes(tensors: Shapes) -> int:
    """The size of a safetensors file holding tensors of these shapes and dtypes, its JSON header included."""
    header, offset = {}, 0
    for name, (shape, dtype) in tensors.items():
        size = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": SAFETENSORS_DTYPES.get(dtype, "F32"), "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"))
    return 8 + len(text) + -len(text) % 8 + offset


def model_shapes(model: torch.nn.Module, dtype: torch.dtype | None = None) -> Shapes:
    """What model.safetensors holds for `model` (a tied head once), in `dtype` if given; works on the meta device."""
    model = getattr(model, "_orig_mod", model)
    state = model.state_dict()
    if model.cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    return {k: (tuple(v.shape), dtype if dtype is not None and v.is_floating_point() else v.dtype)
            for k, v in state.items()}


# state.json besides the optimizer groups: step, tokens, validation, lineage (a little more with the loader's
# position); measured on small runs, generous by a few hundred bytes.
STATE_JSON_BYTES = {"full": 2_000, "weights_only": 1_000}


@dataclass(frozen=True)
class DiskPlan:
    """What a run's checkpoints take on disk when it ends: `step_checkpoints` step_N, `best` and `last`, each
    full (weights, optimizer state, RNG) or weights only as train.keep_full says (rain train --dry-run, and the
    Trainer's free-space check before a run starts)."""

    parameters: int
    step_checkpoints: int
    keep_full: str
    full_bytes: int  # one checkpoint with the optimizer state
    weights_only_bytes: int  # one without it, its weights in weights_dtype
    weights_dtype: str

    def size(self, name: str) -> int:
        return self.full_bytes if keeps_optimizer(name, self.keep_full) else self.weights_only_bytes

    @property
    def total(self) -> int:
        return self.step_checkpoints * self.size("step_N") + self.size("best") + self.size("last")

    @property
    def peak(self) -> int:
        """The most it takes at once: a new `last` is written beside the old one, then swapped in."""
        return self.total + self.full_bytes

    def describe(self) -> str:
        """E.g. `100 step_N weights only (bf16, 269.6 MB each); best and last with the optimizer state (1.6 GB each)`."""
        kinds: dict[bool, list[str]] = {False: [], True: []}
        for name, label in (("step_N", f"{self.step_checkpoints} step_N"), ("best", "best"), ("last", "last")):
            if name != "step_N" or self.step_checkpoints:
                kinds[keeps_optimizer(name, self.keep_full)].append(label)
        parts = [f"{_listed(kinds[False])} weights only ({self.weights_dtype}, {format_size(self.weights_only_bytes)} "
                 "each)"] if kinds[False] else []
        parts.append(f"{_listed(kinds[True])} with the optimizer state ({format_size(self.full_bytes)} each)")
        return "; ".join(parts)


def _listed(items: list[str]) -> str:
    return " and ".join(items) if len(items) < 3 else f"{', '.join(items[:-1])} and {items[-1]}"


def disk_plan(cfg: RunConfig, model: torch.nn.Module, optimizer: Shapes, step_checkpoints: int,
              weights_dtype: torch.dtype, tokenizer_bytes: int) -> DiskPlan:
    """The DiskPlan of a run of `cfg`: `model` may be on the meta device, `optimizer` is the shapes of the
    optimizer.safetensors it writes (RNG state included)."""
    config_bytes = len(json.dumps(cfg.to_dict(), indent=2)) + 1
    shared = config_bytes + tokenizer_bytes
    weights_only = safetensors_bytes(model_shapes(model, weights_dtype)) + STATE_JSON_BYTES["weights_only"] + shared
    param_groups = 8 * len(optimizer)  # the parameter indices in state.json's optimizer record
    full = (safetensors_bytes(model_shapes(model)) + safetensors_bytes(optimizer) + STATE_JSON_BYTES["full"]
            + param_groups + shared)
    return DiskPlan(parameters=sum(p.numel() for p in model.parameters()), step_checkpoints=step_checkpoints,
                    keep_full=cfg.train.keep_full, full_bytes=full, weights_only_bytes=weights_only,
                    weights_dtype={torch.bfloat16: "bf16", torch.float32: "fp32"}.get(weights_dtype, str(weights_dtype)))


def resolve(folder: Path) -> Path:
    """The checkpoint folder, or its `.old` copy when a save was interrupted mid-swap."""
    folder = Path(folder)
    old = folder.with_name(f".old-{folder.name}")
    if not folder.exists() and old.exists():
        return old
    return folder


def newest_complete(run_dir: Path) -> Path | None:
    """The run's checkpoint with every file a resume needs and the highest step (`last` on a tie): normally
    `last`, but after a crash during the first save of `last`, or with `last` damaged, the newest other one."""
    found = []
    for folder in sorted((Path(run_dir) / "checkpoints").glob("*")):
        if folder.name.startswith(".tmp-") or not all((folder / f).is_file() for f in FILES):
            continue
        try:
            state = json.loads((folder / "state.json").read_text())
            step = int(state["step"])
            if not {"loader", "optimizer", "loss_window"} <= set(state):
                continue  # not a training checkpoint a run can continue from
            read(folder)  # the config and the weights' header
            _check_header(folder / "optimizer.safetensors")
        except (ValueError, KeyError, TypeError, OSError, RainError):
            continue  # damaged: not a checkpoint to resume from
        found.append((step, folder.name.removeprefix(".old-") == "last", folder))
    return max(found, key=lambda f: f[:2])[2] if found else None


def remove_temporaries(run_dir: Path) -> None:
    """Drop what interrupted saves left: `.tmp-*` folders, and `.old-*` copies whose swap finished."""
    for folder in (Path(run_dir) / "checkpoints").glob(".*-*"):
        if folder.name.startswith(".tmp-") or (folder.name.startswith(".old-") and
                                                folder.with_name(folder.name.removeprefix(".old-")).exists()):
            shutil.rmtree(folder, ignore_errors=True)


def check_complete(folder: Path, files=FILES) -> Path:
    folder = resolve(folder)
    if not folder.is_dir():
        raise RainError(f"{folder}: no such checkpoint folder")
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise RainError(f"{folder}: incomplete checkpoint (missing {', '.join(missing)}); pick another checkpoint")
    return folder


def is_hf_folder(folder: str | Path) -> bool:
    """A Hugging Face model folder (its config.json names a model_type or architectures), not a rain checkpoint
    or run folder (whose config.json has model/train/data sections)."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False  # whoever reads it next says what is wrong with it
    return isinstance(config, dict) and bool({"model_type", "architectures"} & set(config))


def _not_hf(folder: Path) -> None:
    if is_hf_folder(folder):
        raise RainError(f"{folder} is a Hugging Face folder, not a rain checkpoint: continue-pretrain it into a rain "
                        f"run first (rain train --init-from {folder}), then use that run")


def load_config(folder: str | Path) -> RunConfig:
    """The run config in a checkpoint or run folder's config.json."""
    folder = resolve(Path(folder))
    path = folder / "config.json"
    if not path.is_file():
        raise RainError(f"{path}: file not found (not a rain checkpoint or run folder)")
    if (folder / "checkpoints").is_dir():  # a run folder's own config.json: there is no other checkpoint to pick
        raw = _read_json(path)
        if not _has_sections(raw):
            raise RainError(f"{path}: not {RUN_CONFIG}")
    else:
        raw = _checkpoint_json(path, dict, RUN_CONFIG)
        if not _has_sections(raw):
            raise _damaged(path, f"not {RUN_CONFIG}")
    return config_from_dict(raw, str(path))


RUN_CONFIG = "a rain run config (expected [model], [train] and [data] sections)"
CHECKPOINT_STATE = "a checkpoint state (expected a JSON object)"


def _has_sections(raw) -> bool:
    return isinstance(raw, dict) and all(isinstance(v, dict) for v in raw.values())


def read(folder: str | Path) -> Checkpoint:
    """The checkpoint in `folder` (or its `.old` copy): config.json and state.json read once, the weight files
    checked to be there. A missing or garbled file is a one-line error naming it."""
    folder = resolve(Path(folder))
    if folder.is_dir():
        _not_hf(folder)
    folder = check_complete(folder, WEIGHT_FILES)
    config = load_config(folder)
    _check_header(folder / "model.safetensors")
    state_path = folder / "state.json"
    state = _checkpoint_json(state_path, dict, CHECKPOINT_STATE) if state_path.is_file() else {}
    parent = state.get("init_from")
    return Checkpoint(folder=folder, name=folder.name.removeprefix(".old-"), config=config, step=state.get("step"),
                      tokens=state.get("tokens"), data_dir=state.get("data_dir"),
                      parent=Path(parent) if parent else None, chat_template=state.get("chat_template"), state=state)


def find(path: str | Path) -> Checkpoint:
    """A checkpoint folder as given, or a run folder's newest checkpoint (`last`)."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        last = resolve(path / "checkpoints" / "last")
        if not last.exists():
            raise RainError(f"{path}: the run has no checkpoints/last yet")
        return read(last)
    if not resolve(path).exists():
        raise RainError(f"{path}: no such checkpoint or run folder")
    return read(path)


def find_all(path: str | Path, on_damaged: Callable[[str, DamagedCheckpoint], None] | None = None) -> list[Checkpoint]:
    """A run folder's checkpoints in token order, one per step (step_N preferred to last/best), or the one
    checkpoint folder given. With `on_damaged`, a run's checkpoint with a damaged file is handed to it (name,
    error) and left out rather than stopping the listing."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        names = sorted({p.name.removeprefix(".old-") for p in (path / "checkpoints").iterdir()
                        if p.is_dir() and (not p.name.startswith(".") or p.name.startswith(".old-"))})
        if not names:
            raise RainError(f"{path}: the run has no checkpoints yet (checkpoints/ is empty)")
        found = []
        for name in names:
            try:
                found.append(read(path / "checkpoints" / name))
            except DamagedCheckpoint as exc:
                if on_damaged is None:
                    raise
                on_damaged(name, exc)
    elif (resolve(path) / "model.safetensors").is_file():
        found = [read(path)]
    elif path.is_dir():
        _not_hf(path)
        raise RainError(f"{path}: no checkpoints here (neither a run folder with checkpoints/ nor a checkpoint folder)")
    else:
        raise RainError(f"{path}: no such checkpoint or run folder")
    preference = sorted(found, key=lambda c: (not c.name.startswith("step_"), c.name != "last", c.name))
    unique: dict = {}
    for c in preference:
        unique.setdefault((c.step, c.tokens) if c.step is not None else c.name, c)
    return sorted(unique.values(), key=lambda c: (c.tokens is None, c.tokens or 0, c.step or 0, c.name))


def tokenizer(checkpoint: Checkpoint) -> Tokenizer:
    """The tokenizer the checkpoint's model was trained with."""
    return Tokenizer.from_file(checkpoint.folder / "tokenizer.json")


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        content = _read_json(index)
        weight_map = content.get("weight_map") if isinstance(content, dict) else None
        if not isinstance(weight_map, dict):
            raise RainError(f"{index}: no weight_map (not a safetensors index)")
        files = sorted(set(weight_map.values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise RainError(f"{folder}: no model.safetensors (or sharded index); only safetensors checkpoints are read")
    tensors = {}
    for name in files:
        tensors.update(load_tensors(folder / name, hint="download or export the model again"))
    return tensors


def load_hf_checkpoint(folder: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A local Hugging Face Qwen3, Qwen3-MoE or Llama folder -> (rain ModelConfig, state dict in rain's names)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise RainError(f"{folder}: no config.json (expected a Hugging Face model folder)")
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise RainError(f"{config_path}: not a model config (expected a JSON object)")
    cfg = rain_model_config(config, str(folder))
    return cfg, rain_state_dict(cfg, _read_safetensors(folder), str(folder))


def load_model(source: Checkpoint | str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, RunConfig]:
    """(the model in eval mode on `device`, its run config) of a Checkpoint, a checkpoint or run folder, or a
    Hugging Face Qwen3/Qwen3-MoE/Llama folder (whose run config is rain's defaults around its [model])."""
    if not isinstance(source, Checkpoint) and is_hf_folder(source):
        model_cfg, state = load_hf_checkpoint(source)
        model, cfg, origin = Transformer(model_cfg), RunConfig(model=model_cfg), str(source)
    else:
        checkpoint = source if isinstance(source, Checkpoint) else find(source)
        model, cfg, origin = Transformer(checkpoint.config.model), checkpoint.config, str(checkpoint.folder)
        state = load_tensors(checkpoint.folder / "model.safetensors")
    load_model_state(model, state, origin)
    return model.to(device).eval(), cfg


def lineage(checkpoint: Checkpoint) -> list[Checkpoint | HFModel | MissingParent]:
    """The checkpoint and its ancestors through init_from, oldest first: a Checkpoint per rain stage, an HFModel
    for a Hugging Face starting point, a MissingParent for a parent that is gone (or unreadable)."""
    stages: list[Checkpoint | HFModel | MissingParent] = [checkpoint]
    seen = {checkpoint.folder.resolve()}
    parent = checkpoint.parent
    while parent is not None:
        if is_hf_folder(parent):
            config = _read_json(parent / "config.json")
            stages.append(HFModel(parent, tuple(config.get("architectures") or [config.get("model_type", "?")])))
            break
        try:
            current = find(parent)
        except RainError:
            stages.append(MissingParent(parent))
            break
        if current.folder.resolve() in seen:  # a loop of init_from records: stop rather than go round
            break
        seen.add(current.folder.resolve())
        stages.append(current)
        parent = current.parent
    return stages[::-1]


def load_training_state(folder: Path, model, optimizer) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore weights and optimizer in place; return state.json and the extra (RNG) tensors."""
    folder = check_complete(folder)
    tensors = load_tensors(folder / "optimizer.safetensors", resume=True)
    state_path = folder / "state.json"
    state = _checkpoint_json(state_path, dict, CHECKPOINT_STATE, resume=True)
    missing = [k for k in RESUME_STATE if k not in state]
    if missing:
        raise _damaged(state_path, f"lacks {', '.join(missing)}", resume=True)
    load_model_state(model, load_tensors(folder / "model.safetensors", resume=True), str(folder))
    opt_tensors = {k: v for k, v in tensors.items() if not k.startswith("rng.")}
    try:
        load_optimizer_state(optimizer, opt_tensors, state["optimizer"])  # torch moves state to the params' device
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # state.json and the tensors disagree
        raise _damaged(folder / "optimizer.safetensors", f"does not fit state.json's optimizer record "
                                                         f"({type(exc).__name__}: {exc})", resume=True) from None
    return state, {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}


# The records of state.json a resume reads (rain.train.trainer.Trainer.load_state_dict, and the optimizer's).
RESUME_STATE = ("step", "best_val", "loss_window", "loader", "optimizer")


# What the weights' meaning depends on (context and init_std may differ from the parent's).
SHAPE_FIELDS = ("vocab_size", "n_layer", "d_model", "n_head", "n_kv_head", "dim_head", "d_ff", "rope_theta",
                "qk_norm", "tie_embeddings", "norm_eps")


def parent_weights(folder: Path, model_cfg, tokenizer_path: Path | None) -> tuple[Path, dict[str, torch.Tensor]]:
    """(the folder read, its weights) for continued pretraining or fine-tuning from `folder`: a rain checkpoint
    or run folder, or a Hugging Face Qwen3/Llama folder. Its shape must be model_cfg's and its tokenizer.json
    the one at tokenizer_path; a one-line error says what differs and how to match it."""
    folder = Path(folder)
    if is_hf_folder(folder):
        parent_model, state = load_hf_checkpoint(folder)
    else:
        checkpoint = find(folder)
        folder, parent_model = checkpoint.folder, checkpoint.config.model
        state = load_tensors(folder / "model.safetensors")
    diff = [(k, getattr(parent_model, k), getattr(model_cfg, k)) for k in SHAPE_FIELDS
            if getattr(parent_model, k) != getattr(model_cfg, k)]
    if diff:
        sets = " ".join(f"--set model.{'head_dim' if k == 'dim_head' else k}={str(a).lower() if isinstance(a, bool) else a}"
                        for k, a, _ in diff)
        raise RainError(f"{folder}: its model shape differs from this run's [model] "
                        f"({', '.join(f'{k} {a} vs {b}' for k, a, b in diff)}); use the same shape: {sets}")
    if tokenizer_path is not None:
        check_same_tokenizer(folder / "tokenizer.json", Path(tokenizer_path))
    return folder, state


def same_tokenizer(a: Path, b: Path) -> bool:
    """Two tokenizer.json files that encode alike: the same bytes, or the same JSON written differently, and the
    same pre-tokenisation in their sidecars (none, or Korean morphemes)."""
    if read_sidecar(Path(a)) != read_sidecar(Path(b)):
        return False
    x, y = Path(a).read_bytes(), Path(b).read_bytes()
    if x == y:
        return True
    try:
        if json.loads(x) == json.loads(y):
            return True
        from tokenizers import Tokenizer as HFTokenizer  # written by another library: compare as loaded

        return HFTokenizer.from_str(x.decode()).to_str() == HFTokenizer.from_str(y.decode()).to_str()
    except Exception:  # noqa: BLE001 - unreadable as a tokenizer: not the same one
        return False


def check_same_tokenizer(parent_tok: Path, tokenizer_path: Path) -> None:
    if not parent_tok.is_file():
        raise RainError(f"{parent_tok.parent}: no tokenizer.json, so its tokenizer cannot be checked against {tokenizer_path}")
    if not same_tokenizer(parent_tok, tokenizer_path):
        raise RainError(f"{tokenizer_path} differs from {parent_tok}: the new data must be tokenised with the parent's "
                        f"tokenizer (rain prepare --set data.tokenizer={parent_tok})")
