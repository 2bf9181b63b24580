"""Export to / import from Hugging Face folders: transformers loads the export with no custom code and
computes the same logits, greedy tokens and token ids as rain."""

import dataclasses
import json
import os
import random
import tomllib
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from rain.checkpoint import load_hf_checkpoint  # noqa: E402
from rain.config import ModelConfig  # noqa: E402
from rain.data.tokenizer import IM_END, train_bpe  # noqa: E402
from rain.errors import RainError  # noqa: E402
from rain.export.hf import export_hf  # noqa: E402
from rain.model import Transformer  # noqa: E402
from rain.model.generate import generate  # noqa: E402
from rain.posttrain.chat import CHAT_TEMPLATE  # noqa: E402
from tests.conftest import random_hf_folder  # noqa: E402

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
FALLBACK_PRESETS = {
    "tiny": dict(vocab_size=8192, d_model=256, n_head=4, n_kv_head=2, d_ff=768, context=256, qk_norm=True),
    "rain-v2": dict(
        vocab_size=16384, d_model=512, n_head=8, n_kv_head=4, head_dim=64, d_ff=2048, context=1024, qk_norm=True
    ),
    "gpt2-124m": dict(vocab_size=50304, d_model=768, n_head=12, n_kv_head=12, d_ff=2048, context=1024, qk_norm=False),
}


def preset_shapes() -> dict[str, ModelConfig]:
    """The presets' [model] sections (configs/*.toml when present, else the documented shapes), 2 layers."""
    found = {p.stem: tomllib.loads(p.read_text()).get("model", {}) for p in sorted(CONFIG_DIR.glob("*.toml"))}
    shapes = found or FALLBACK_PRESETS
    return {name: dataclasses.replace(ModelConfig(), **{**model, "n_layer": 2}) for name, model in shapes.items()}


SMALL = ModelConfig(
    vocab_size=640, n_layer=2, d_model=64, n_head=4, n_kv_head=2, d_ff=160, context=96, rope_theta=500.0
)
CASES = {"small": SMALL, "small-llama-untied": dataclasses.replace(SMALL, qk_norm=False, tie_embeddings=False),
         "small-moe": dataclasses.replace(SMALL, n_experts=4, experts_per_token=2, expert_d_ff=48)}
ARCHITECTURE = {"qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM", "llama": "LlamaForCausalLM"}
CASES.update({f"preset-{name}": cfg for name, cfg in preset_shapes().items()})

WORDS = "the a model token rain cloud river stone light data learns fast slow small large over under why how".split()


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(30)) + f". {rng.randint(0, 9999)}!\n" for _ in range(300)]
    texts += ["def f(x):\n    return x * 2\n", "Héllo wörld, 你好 🎉 — naïve café"]
    return train_bpe(texts, vocab_size=600)


def random_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # norm weights off 1 so a swapped q_norm/k_norm or norm would show
                p.uniform_(0.5, 1.5)
    return model


def hf_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("name", list(CASES))
def test_transformers_matches_rain(name, tokenizer, tmp_path):
    cfg = CASES[name]
    model = random_model(cfg)
    out = export_hf(cfg, model.state_dict(), tokenizer, tmp_path / "hf", chat_template=CHAT_TEMPLATE)
    config = json.loads((out / "config.json").read_text())
    kind = "qwen3_moe" if cfg.n_experts else "qwen3" if cfg.qk_norm else "llama"
    assert (config["model_type"], config["architectures"]) == (kind, [ARCHITECTURE[kind]])

    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.config.tie_word_embeddings == cfg.tie_embeddings
    assert sum(p.numel() for p in hf.parameters()) == model.num_params()
    ids = torch.randint(0, cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max().item() < 1e-4

    prompt = tokenizer.encode("the model learns")
    stops = (tokenizer.eot_id, tokenizer.token_id(IM_END))
    ours = generate(model, prompt, max_new_tokens=12, temperature=0, stop_ids=stops)
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
    assert ours == [t for t in theirs if t not in stops]

    cfg_back, state_back = load_hf_checkpoint(out)
    assert cfg_back == dataclasses.replace(cfg, head_dim=cfg.dim_head, expert_d_ff=cfg.d_expert if cfg.n_experts else 0)
    back = Transformer(cfg_back).eval()
    back.load_state_dict(state_back)
    with torch.no_grad():
        assert torch.equal(back(ids), model(ids))


def test_exported_tokenizer_gives_identical_ids(tokenizer, tmp_path):
    out = export_hf(SMALL, random_model(SMALL).state_dict(), tokenizer, tmp_path / "hf", chat_template=CHAT_TEMPLATE)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    texts = [
        "the model learns fast.",
        "  leading spaces\n\n\ttabs and\r\nnewlines   ",
        "Héllo wörld, 你好 🎉 — naïve café 1234567",
        "<|im_start|>user\nhi<|im_end|>\n<|endoftext|><|pad|>",
        "",
    ]
    for text in texts:
        ids = tokenizer.encode(text)
        assert hf_tok(text)["input_ids"] == ids
        assert hf_tok.encode(text, add_special_tokens=False) == ids
        assert hf_tok.decode(ids) == tokenizer.decode(ids) == text
    assert hf_tok.eos_token_id == tokenizer.eot_id
    assert hf_tok.pad_token == "<|pad|>"
    assert hf_tok.chat_template == CHAT_TEMPLATE
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [tokenizer.eot_id, tokenizer.token_id(IM_END)]


def test_export_refuses_existing_folder_and_leaves_no_temp(tokenizer, tmp_path):
    state = random_model(SMALL).state_dict()
    target = tmp_path / "hf"
    export_hf(SMALL, state, tokenizer, target, card="# a card\n")
    assert (target / "README.md").read_text() == "# a card\n"
    with pytest.raises(RainError, match="already exists"):
        export_hf(SMALL, state, tokenizer, target)
    export_hf(SMALL, state, tokenizer, target, overwrite=True)
    assert not (target / "README.md").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    with pytest.raises(RainError, match="do not match"):
        export_hf(SMALL, {k: v for k, v in state.items() if k != "norm.weight"}, tokenizer, tmp_path / "bad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_moe", "llama"])
def test_import_transformers_checkpoint(arch, tmp_path):
    """A folder written by transformers itself (not by export_hf) loads into rain with the same logits."""
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5)
    if arch == "qwen3":
        config = transformers.Qwen3Config(**common, head_dim=32, tie_word_embeddings=True)
    elif arch == "qwen3_moe":
        config = transformers.Qwen3MoeConfig(**common, head_dim=32, tie_word_embeddings=True, num_experts=4,
                                             num_experts_per_tok=2, moe_intermediate_size=40, norm_topk_prob=True)
    else:
        config = transformers.LlamaConfig(**common, tie_word_embeddings=False)
    hf = random_hf_folder(tmp_path, config)
    cfg, state = load_hf_checkpoint(tmp_path)
    qwen = arch != "llama"
    assert (cfg.qk_norm, cfg.tie_embeddings, cfg.dim_head) == (qwen, qwen, 32 if qwen else 16)
    assert (cfg.n_experts, cfg.d_expert) == ((4, 40) if arch == "qwen3_moe" else (0, 96))
    model = Transformer(cfg).eval()
    model.load_state_dict(state)
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max().item() < 1e-4


def _write_config(folder: Path, **config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_import_refuses_other_architectures_and_features(tokenizer, tmp_path):
    with pytest.raises(RainError, match="gpt2.*not supported"):
        load_hf_checkpoint(_write_config(tmp_path / "gpt2", model_type="gpt2", architectures=["GPT2LMHeadModel"]))
    with pytest.raises(RainError, match="qwen2.*not supported"):
        load_hf_checkpoint(_write_config(tmp_path / "qwen2", model_type="qwen2"))
    with pytest.raises(RainError, match="no config.json"):
        load_hf_checkpoint(tmp_path / "missing")
    out = export_hf(SMALL, random_model(SMALL).state_dict(), tokenizer, tmp_path / "ok")
    config = json.loads((out / "config.json").read_text())
    for change, message in [
        ({"attention_bias": True}, "biases"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}, "rope_parameters": None}, "rope scaling llama3"),
        ({"use_sliding_window": True}, "sliding-window"),
        ({"hidden_act": "gelu"}, "hidden_act gelu"),
    ]:
        _write_config(out, **{**config, **change})
        with pytest.raises(RainError, match=message):
            load_hf_checkpoint(out)
    _write_config(out, **{**config, "num_hidden_layers": 3})
    with pytest.raises(RainError, match="missing"):
        load_hf_checkpoint(out)
