"""Self-contained checkpoint folders, written atomically and loaded without pickle:

    model.safetensors      weights (a tied LM head stored once, as the embedding)
    optimizer.safetensors  optimizer tensors (+ RNG states); their non-tensor parts go in state.json
    state.json             step, tokens seen, data-loader position, best validation loss, optimizer groups
    config.json            the resolved run config
    tokenizer.json         the tokenizer the model was trained with
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rain.config import RunConfig, config_from_dict
from rain.errors import RainError
from rain.model.transformer import Transformer

FILES = ("model.safetensors", "optimizer.safetensors", "state.json", "config.json", "tokenizer.json")
WEIGHT_FILES = ("model.safetensors", "config.json", "tokenizer.json")


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
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write everything into a temporary sibling, fsync, then swap it in; a crash at any point leaves
    the previous checkpoint (or, mid-swap, its `.old` copy, which `resolve` picks up) intact."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".tmp-{folder.name}")
    old = folder.with_name(f".old-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(model_state(model), str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = optimizer_state(optimizer) if optimizer is not None else ({}, {"param_groups": [], "scalars": {}})
    save_file({**opt_tensors, **{f"rng.{k}": v for k, v in (extra_tensors or {}).items()}}, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "optimizer": opt_meta}, indent=2))
    cfg.save(tmp / "config.json")
    shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
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


def resolve(folder: Path) -> Path:
    """The checkpoint folder, or its `.old` copy when a save was interrupted mid-swap."""
    folder = Path(folder)
    old = folder.with_name(f".old-{folder.name}")
    if not folder.exists() and old.exists():
        return old
    return folder


def check_complete(folder: Path, files=FILES) -> Path:
    folder = resolve(folder)
    if not folder.is_dir():
        raise RainError(f"{folder}: no such checkpoint folder")
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise RainError(f"{folder}: incomplete checkpoint (missing {', '.join(missing)}); pick another checkpoint")
    return folder


def load_config(folder: Path) -> RunConfig:
    folder = resolve(folder)
    try:
        return config_from_dict(json.loads((folder / "config.json").read_text()), str(folder / "config.json"))
    except json.JSONDecodeError as exc:
        raise RainError(f"{folder}/config.json: not valid JSON ({exc})") from None


def load_weights(folder: Path, device: str | torch.device = "cpu") -> tuple[Transformer, RunConfig]:
    """A model ready for inference from a checkpoint folder (only weights, config and tokenizer needed)."""
    folder = check_complete(folder, WEIGHT_FILES)
    cfg = load_config(folder)
    model = Transformer(cfg.model)
    load_model_state(model, load_file(str(folder / "model.safetensors")), str(folder))
    return model.to(device).eval(), cfg


def load_training_state(folder: Path, model, optimizer) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore weights and optimizer in place; return state.json and the extra (RNG) tensors."""
    folder = check_complete(folder)
    tensors = load_file(str(folder / "optimizer.safetensors"))
    state = json.loads((folder / "state.json").read_text())
    load_model_state(model, load_file(str(folder / "model.safetensors")), str(folder))
    opt_tensors = {k: v for k, v in tensors.items() if not k.startswith("rng.")}
    load_optimizer_state(optimizer, opt_tensors, state["optimizer"])  # torch moves state to the params' device
    return state, {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}


def find_checkpoint(path: Path) -> Path:
    """A checkpoint folder as given, or a run folder's newest (`last`) checkpoint."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        last = resolve(path / "checkpoints" / "last")
        if not last.exists():
            raise RainError(f"{path}: the run has no checkpoints/last yet")
        return last
    if not resolve(path).exists():
        raise RainError(f"{path}: no such checkpoint or run folder")
    return resolve(path)


# What the weights' meaning depends on (context and init_std may differ from the parent's).
SHAPE_FIELDS = ("vocab_size", "n_layer", "d_model", "n_head", "n_kv_head", "dim_head", "d_ff", "rope_theta",
                "qk_norm", "tie_embeddings", "norm_eps")


def parent_weights(folder: Path, model_cfg, tokenizer_path: Path | None) -> tuple[Path, dict[str, torch.Tensor]]:
    """(the folder read, its weights) for continued pretraining or fine-tuning from `folder`: a rain checkpoint
    or run folder, or a Hugging Face Qwen3/Llama folder. Its shape must be model_cfg's and its tokenizer.json
    the one at tokenizer_path; a one-line error says what differs and how to match it."""
    from rain.export.hf import load_hf_checkpoint

    try:
        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    except json.JSONDecodeError as exc:
        raise RainError(f"{folder}/config.json: not valid JSON ({exc})") from None
    if isinstance(config, dict) and {"model_type", "architectures"} & set(config):  # a Hugging Face folder
        parent_model, state = load_hf_checkpoint(folder)
    else:
        folder = check_complete(find_checkpoint(folder), WEIGHT_FILES)
        parent_model, state = load_config(folder).model, load_file(str(folder / "model.safetensors"))
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
    """Two tokenizer.json files that encode alike: the same bytes, or the same JSON written differently."""
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
