"""The correspondence between rain's model and transformers' Qwen3 (QK-norm), Qwen3-MoE and Llama: weight names
both ways (`hf_state_dict`, `rain_state_dict`) and configs both ways (`hf_config`, `rain_model_config`).

Only dicts and tensors here, no files: rain.checkpoint reads Hugging Face folders (for `--init-from` and
loading) and rain.export.hf writes them, both through these functions."""

from __future__ import annotations

import re

import torch

from rain.config import ModelConfig
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


# ---- rain -> transformers ---------------------------------------------------------------------------------

def hf_model_type(cfg: ModelConfig) -> str:
    if cfg.n_experts and (cfg.n_shared_experts or cfg.router_score != "softmax" or cfg.router_bias_rate):
        # DeepseekV3 has MLA attention and Qwen2-MoE a sigmoid-gated shared expert: neither computes this model.
        # (transformers' Dots1 may match exactly; not yet checked for logits parity, so not offered.)
        raise RainError("a DeepSeek-style MoE (model.n_shared_experts, router_score = 'sigmoid' or router_bias_rate) "
                        "has no matching transformers architecture that rain can export to yet")
    if cfg.n_experts:
        if not cfg.qk_norm:
            raise RainError("an MoE model exports as Qwen3-MoE, which has QK-norm; this one has model.qk_norm = false")
        return "qwen3_moe"
    return "qwen3" if cfg.qk_norm else "llama"


def hf_config(cfg: ModelConfig, eot_id: int, pad_id: int, dtype: torch.dtype) -> dict:
    """The transformers config.json of a rain model (the inverse of rain_model_config)."""
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


def hf_state_dict(cfg: ModelConfig, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """rain's weights (checked against cfg) in transformers' names, on the CPU; a tied head is stored once."""
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


# ---- transformers -> rain ---------------------------------------------------------------------------------

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
    if config.get("model_type") == "qwen3_moe":
        if not config.get("norm_topk_prob"):
            problems.append("norm_topk_prob false (rain renormalises the top-k router weights)")
        if config.get("mlp_only_layers") or config.get("decoder_sparse_step", 1) != 1:
            problems.append("dense layers between MoE layers (mlp_only_layers / decoder_sparse_step)")
    return problems


def rain_model_config(config: dict, origin: str) -> ModelConfig:
    """A transformers config.json (Qwen3, Qwen3-MoE or Llama) as rain's ModelConfig (the inverse of hf_config);
    a one-line error, starting with `origin`, for other architectures or features rain lacks."""
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise RainError(
            f"{origin}: model_type {model_type!r} ({', '.join(config.get('architectures') or [])}) is not supported; "
            f"rain reads {' and '.join(ARCHITECTURES.values())} checkpoints"
        )
    problems = _unsupported(config)
    if problems:
        raise RainError(f"{origin}: unsupported features for rain: {', '.join(problems)}")
    try:
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
    except KeyError as exc:
        raise RainError(f"{origin}: the {model_type} config has no {exc.args[0]}") from None
    return cfg


def rain_state_dict(cfg: ModelConfig, tensors: dict[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """transformers' weights in rain's names (experts stacked, a tied head filled in), checked against cfg."""
    state_dict, experts = {}, {}
    for name, tensor in tensors.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from rope_theta
        expert = HF_EXPERT.match(name) if cfg.n_experts else None
        if expert:
            layer, e, proj = expert.groups()
            experts.setdefault(f"layers.{layer}.mlp.{proj}", {})[int(e)] = tensor
            continue
        rain_name = _rename(name, TO_RAIN)
        if rain_name is None:
            raise RainError(f"{origin}: unexpected weight {name} (biases and extra modules are not supported)")
        state_dict[rain_name] = tensor
    for name, by_index in experts.items():
        if sorted(by_index) != list(range(cfg.n_experts)):
            raise RainError(f"{origin}: found {len(by_index)} experts for {name}, config.json says {cfg.n_experts}")
        state_dict[name] = torch.stack([by_index[e] for e in range(cfg.n_experts)])
    if cfg.tie_embeddings:
        state_dict["lm_head.weight"] = state_dict.get("embed.weight")
    expected = expected_shapes(cfg)
    missing = sorted(k for k in expected if state_dict.get(k) is None)
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [k for k in expected if k not in missing and state_dict[k].shape != expected[k]]
    if missing or unexpected or wrong:
        raise RainError(
            f"{origin}: weights do not match config.json "
            f"(missing: {missing[:5]}, unexpected: {unexpected[:5]}, wrong shape: {wrong[:5]})"
        )
    return state_dict
