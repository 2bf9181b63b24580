"""Hugging Face folders: export a rain model + tokenizer as a Qwen3 (QK-norm), Qwen3-MoE or Llama checkpoint
that transformers loads with no custom code, and import a local checkpoint of those into rain's names."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rain.config import ModelConfig
from rain.data.tokenizer import EOT, IM_END, IM_START, PAD, Tokenizer
from rain.errors import RainError
from rain.model.transformer import Transformer

# rain name pattern -> HF name pattern ({i}: layer index)
RAIN_TO_HF = {
    "embed.weight": "model.embed_tokens.weight",
    "layers.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "layers.{i}.attn.q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "layers.{i}.attn.k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "layers.{i}.attn.v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "layers.{i}.attn.o.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "layers.{i}.attn.q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "layers.{i}.attn.k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "layers.{i}.mlp_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "layers.{i}.mlp.gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "layers.{i}.mlp.up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "layers.{i}.mlp.down.weight": "model.layers.{i}.mlp.down_proj.weight",
    "layers.{i}.mlp.router.weight": "model.layers.{i}.mlp.gate.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
ARCHITECTURES = {"qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM", "llama": "LlamaForCausalLM"}
# An MoE layer's experts: one (n_experts, out, in) tensor each in rain, one Linear per expert in HF's files.
RAIN_EXPERTS = re.compile(r"layers\.(\d+)\.mlp\.(gate|up|down)$")
HF_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _compile(table: dict[str, str]) -> list[tuple[re.Pattern, str]]:
    return [(re.compile(re.escape(src).replace(re.escape("{i}"), r"(\d+)") + "$"), dst) for src, dst in table.items()]


def _rename(name: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, dst in rules:
        match = pattern.match(name)
        if match:
            return dst.format(i=match.group(1)) if match.groups() else dst
    return None


TO_HF, TO_RAIN = _compile(RAIN_TO_HF), _compile({hf: rain for rain, hf in RAIN_TO_HF.items()})


def expected_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in Transformer(cfg).state_dict().items()}


def hf_model_type(cfg: ModelConfig) -> str:
    if cfg.n_experts:
        if not cfg.qk_norm:
            raise RainError("an MoE model exports as Qwen3-MoE, which has QK-norm; this one has model.qk_norm = false")
        return "qwen3_moe"
    return "qwen3" if cfg.qk_norm else "llama"


def hf_config(cfg: ModelConfig, eot_id: int, pad_id: int, dtype: torch.dtype) -> dict:
    kind = hf_model_type(cfg)
    config = {
        "architectures": [ARCHITECTURES[kind]],
        "model_type": kind,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.dim_head,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.context,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,  # transformers < 5
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},  # transformers >= 5
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "pad_token_id": pad_id,
        "torch_dtype": DTYPE_NAMES[dtype],
        "use_cache": True,
    }
    if kind == "llama":
        config.update(mlp_bias=False, pretraining_tp=1)
    else:
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layer)
    if kind == "qwen3_moe":
        # HF's balancing loss is experts_per_token x rain's (it counts assignments per token, not per assignment).
        config.update(num_experts=cfg.n_experts, num_experts_per_tok=cfg.experts_per_token,
                      moe_intermediate_size=cfg.d_expert, decoder_sparse_step=1, mlp_only_layers=[],
                      norm_topk_prob=True, output_router_logits=False,
                      router_aux_loss_coef=cfg.router_aux_coef / cfg.experts_per_token)
    return config


def _hf_state_dict(cfg: ModelConfig, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state_dict = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}  # torch.compile'd models
    expected = expected_shapes(cfg)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(shape)}"
        for k, shape in expected.items()
        if k in state_dict and state_dict[k].shape != shape
    ]
    problems = {"missing": missing, "unexpected": unexpected, "wrong shape": wrong}
    if any(problems.values()):
        detail = "; ".join(f"{label}: {', '.join(items[:5])}" for label, items in problems.items() if items)
        raise RainError(f"the weights do not match the model config ({detail})")
    out = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu")
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue  # HF re-ties lm_head to embed_tokens; a tied weight is stored once
        experts = RAIN_EXPERTS.match(name) if cfg.n_experts else None
        if experts:
            layer, proj = experts.groups()
            for e, matrix in enumerate(tensor):
                out[f"model.layers.{layer}.mlp.experts.{e}.{proj}_proj.weight"] = matrix.contiguous()
        else:
            out[_rename(name, TO_HF)] = tensor.contiguous()
    return out


def _tokenizer_files(tokenizer: Tokenizer, cfg: ModelConfig, chat_template: str | None) -> dict[str, dict]:
    pad = PAD if tokenizer.token_id(PAD) is not None else EOT
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,  # nothing is prepended: rain trains without a BOS token
        "eos_token": EOT,
        "pad_token": pad,
        "unk_token": None,
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
    if out_dir.exists() and not out_dir.is_dir():
        raise RainError(f"export target {out_dir} is a file, not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise RainError(f"export target {out_dir} already exists: choose another folder or pass overwrite")
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise RainError(
            f"the tokenizer has {tokenizer.vocab_size} tokens, more than the model's vocab_size {model_cfg.vocab_size}"
        )
    weights = _hf_state_dict(model_cfg, state_dict)
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
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
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


# ---- import -------------------------------------------------------------------------------------------

def _unsupported(config: dict) -> list[str]:
    problems = []
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {config['hidden_act']}")
    if config.get("attention_bias") or config.get("mlp_bias"):
        problems.append("biases")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        problems.append(f"rope scaling {rope.get('rope_type', rope.get('type'))}")
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        problems.append("partial rotary embeddings")
    if config.get("use_sliding_window") or any(t != "full_attention" for t in config.get("layer_types") or []):
        problems.append("sliding-window attention")
    if config.get("pretraining_tp", 1) != 1:
        problems.append("pretraining_tp != 1")
    return problems


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise RainError(f"{folder}: no model.safetensors (or sharded index); only safetensors checkpoints are read")
    tensors = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            tensors.update({key: f.get_tensor(key) for key in f.keys()})
    return tensors


def load_hf_checkpoint(folder: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A local Hugging Face Qwen3, Qwen3-MoE or Llama folder -> (rain ModelConfig, state dict in rain's names)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise RainError(f"{folder}: no config.json (expected a Hugging Face model folder)")
    config = json.loads(config_path.read_text())
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise RainError(
            f"{folder}: model_type {model_type!r} ({', '.join(config.get('architectures') or [])}) is not supported; "
            f"rain reads {' and '.join(ARCHITECTURES.values())} checkpoints"
        )
    problems = _unsupported(config)
    if model_type == "qwen3_moe":
        if not config.get("norm_topk_prob"):
            problems.append("norm_topk_prob false (rain renormalises the top-k router weights)")
        if config.get("mlp_only_layers") or config.get("decoder_sparse_step", 1) != 1:
            problems.append("dense layers between MoE layers (mlp_only_layers / decoder_sparse_step)")
    if problems:
        raise RainError(f"{folder}: unsupported features for rain: {', '.join(problems)}")
    n_head = config["num_attention_heads"]
    rope = config.get("rope_parameters") or {}
    cfg = ModelConfig(
        vocab_size=config["vocab_size"],
        n_layer=config["num_hidden_layers"],
        d_model=config["hidden_size"],
        n_head=n_head,
        n_kv_head=config.get("num_key_value_heads") or n_head,
        head_dim=config.get("head_dim") or config["hidden_size"] // n_head,
        d_ff=config["intermediate_size"],
        context=config.get("max_position_embeddings", 2048),
        rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        qk_norm=model_type != "llama",
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        init_std=float(config.get("initializer_range", 0.02)),
    )
    if model_type == "qwen3_moe":
        # transformers >= 5 writes num_local_experts where earlier versions wrote num_experts
        cfg.n_experts = config.get("num_experts") or config["num_local_experts"]
        cfg.experts_per_token = config["num_experts_per_tok"]
        cfg.expert_d_ff = config["moe_intermediate_size"]
        cfg.router_aux_coef = float(config.get("router_aux_loss_coef", 0.001)) * cfg.experts_per_token
    state_dict, experts = {}, {}
    for name, tensor in _read_safetensors(folder).items():
        if name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from rope_theta
        expert = HF_EXPERT.match(name) if cfg.n_experts else None
        if expert:
            layer, e, proj = expert.groups()
            experts.setdefault(f"layers.{layer}.mlp.{proj}", {})[int(e)] = tensor
            continue
        rain_name = _rename(name, TO_RAIN)
        if rain_name is None:
            raise RainError(f"{folder}: unexpected weight {name} (biases and extra modules are not supported)")
        state_dict[rain_name] = tensor
    for name, by_index in experts.items():
        if sorted(by_index) != list(range(cfg.n_experts)):
            raise RainError(f"{folder}: found {len(by_index)} experts for {name}, config.json says {cfg.n_experts}")
        state_dict[name] = torch.stack([by_index[e] for e in range(cfg.n_experts)])
    if cfg.tie_embeddings:
        state_dict["lm_head.weight"] = state_dict.get("embed.weight")
    expected = expected_shapes(cfg)
    missing = sorted(k for k in expected if state_dict.get(k) is None)
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [k for k in expected if k not in missing and state_dict[k].shape != expected[k]]
    if missing or unexpected or wrong:
        raise RainError(
            f"{folder}: weights do not match config.json "
            f"(missing: {missing[:5]}, unexpected: {unexpected[:5]}, wrong shape: {wrong[:5]})"
        )
    return cfg, state_dict
