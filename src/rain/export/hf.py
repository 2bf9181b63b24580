"""Export a rain model + tokenizer as a Hugging Face Qwen3 (QK-norm), Qwen3-MoE or Llama folder that transformers
loads with no custom code. The weight names and config it writes come from rain.model.hf_weights; reading such a
folder back (`--init-from`, rain.checkpoint.load_model) goes through the same module."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from rain.checkpoint import save_tensors
from rain.config import ModelConfig
from rain.data.tokenizer import EOT, IM_END, IM_START, PAD, SIDECAR, UNK, Tokenizer
from rain.errors import RainError
from rain.model.hf_weights import DTYPE_NAMES, hf_config, hf_state_dict


# What an export folder holds; a folder holding only these, with this mark in model.safetensors' header metadata
# (invisible to transformers, travelling with the weights), is an earlier export that --overwrite may replace.
EXPORT_NAMES = {"config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
                "model.safetensors", "tokenizer.json", "README.md", SIDECAR}
EXPORT_MARK = {"exported_by": "rain"}


def is_rain_export(folder: Path) -> bool:
    """A folder `rain export` wrote and nothing else was added to."""
    names = {p.name for p in folder.iterdir()}
    if not names <= EXPORT_NAMES or "model.safetensors" not in names:
        return False
    try:
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError):
        return False
    return all(metadata.get(k) == v for k, v in EXPORT_MARK.items())


def _contents(folder: Path) -> str:
    """What a folder holds, for an error message: a rain run, a rain checkpoint, or its first few entries."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if "checkpoints/" in names:
        return "a rain run (checkpoints/)"
    if {"state.json", "optimizer.safetensors"} & set(names):
        return "a rain checkpoint (state.json, optimizer.safetensors)"
    return "files rain export did not write (" + ", ".join(names[:3]) + (", ..." if len(names) > 3 else "") + ")"


def check_target(out_dir: Path, overwrite: bool) -> None:
    """The export may go to out_dir: a new or empty folder, or with overwrite an earlier export (is_rain_export).
    Anything else (a run, a checkpoint, a folder with other files) is never replaced."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise RainError(f"export target {out_dir} is a file, not a folder: choose another folder")
    if not any(out_dir.iterdir()):
        return
    if not is_rain_export(out_dir):
        if {p.name for p in out_dir.iterdir()} <= EXPORT_NAMES:
            raise RainError(f"export target {out_dir} holds a model folder without rain export's mark (written by "
                            "another tool, or by an older rain): choose another folder, or delete it yourself first")
        raise RainError(f"export target {out_dir} holds {_contents(out_dir)}: rain export only writes into a new "
                        "or empty folder or replaces an earlier export (--overwrite); choose another folder")
    if not overwrite:
        raise RainError(f"export target {out_dir} already exists (an earlier export): choose another folder or "
                        "pass --overwrite to replace it")


def _tokenizer_files(tokenizer: Tokenizer, cfg: ModelConfig, chat_template: str | None) -> dict[str, dict]:
    pad = PAD if tokenizer.token_id(PAD) is not None else EOT
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,  # nothing is prepended: rain trains without a BOS token
        "eos_token": EOT,
        "pad_token": pad,
        "unk_token": UNK if tokenizer.unk_id is not None else None,  # Unigram's; byte fallback never produces it
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": cfg.context,
    }
    if chat_template is not None:
        tokenizer_config["chat_template"] = chat_template
    special_map = {"eos_token": EOT, "pad_token": pad}
    chat_tokens = [t for t in (IM_START, IM_END) if tokenizer.token_id(t) is not None]
    if chat_tokens:
        special_map["additional_special_tokens"] = chat_tokens
    return {"tokenizer_config.json": tokenizer_config, "special_tokens_map.json": special_map}


def export_hf(
    model_cfg: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    tokenizer: Tokenizer,
    out_dir: Path,
    *,
    chat_template: str | None = None,
    card: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a transformers-loadable folder (Qwen3MoeForCausalLM for an MoE model, else Qwen3ForCausalLM when
    qk_norm, else LlamaForCausalLM) at out_dir, built in a temporary sibling folder and renamed into place at the
    end. Returns out_dir."""
    out_dir = Path(out_dir)
    check_target(out_dir, overwrite)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise RainError(
            f"the tokenizer has {tokenizer.vocab_size} tokens, more than the model's vocab_size {model_cfg.vocab_size}"
        )
    weights = hf_state_dict(model_cfg, state_dict)
    dtype = weights["model.embed_tokens.weight"].dtype
    if dtype not in DTYPE_NAMES:
        raise RainError(f"cannot export weights of dtype {dtype}: use float32, bfloat16 or float16")
    eot = tokenizer.eot_id
    pad_id = tokenizer.token_id(PAD) if tokenizer.token_id(PAD) is not None else eot
    im_end = tokenizer.token_id(IM_END)
    eos = [eot, im_end] if chat_template and im_end is not None else eot  # a chat model's turn ends at <|im_end|>
    json_files = {
        "config.json": hf_config(model_cfg, eot, pad_id, dtype),
        "generation_config.json": {"bos_token_id": eot, "eos_token_id": eos, "pad_token_id": pad_id},
        **_tokenizer_files(tokenizer, model_cfg, chat_template),
    }

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_tensors(weights, tmp / "model.safetensors", metadata={"format": "pt", **EXPORT_MARK})
        tokenizer.save(tmp / "tokenizer.json")
        for name, content in json_files.items():
            (tmp / name).write_text(json.dumps(content, indent=2) + "\n")
        if card is not None:
            (tmp / "README.md").write_text(card)
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out_dir.exists():
            old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out_dir
