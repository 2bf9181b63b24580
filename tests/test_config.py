import pytest
import torch

from rain.config import load_config, parse_override
from rain.errors import RainError
from rain.model import Transformer


def count_params(vocab, layers, d, heads, kv, head_dim, ff, qk_norm, experts=0):
    """The arithmetic, independent of the model code: tied embedding + per-layer attention/MLP/norms + final norm
    (an MoE MLP: `experts` SwiGLUs of width ff and a router)."""
    attn = d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d + (2 * head_dim if qk_norm else 0)
    mlp = experts * (3 * d * ff + d) if experts else 3 * d * ff
    return vocab * d + layers * (attn + mlp + 2 * d) + d


@pytest.mark.parametrize("preset, expected", [
    ("tiny", count_params(8192, 4, 256, 4, 2, 64, 768, True)),
    ("rain-v2", count_params(16384, 32, 512, 8, 4, 64, 2048, True)),
    ("gpt2-124m", count_params(50304, 12, 768, 12, 12, 64, 2048, False)),
    ("moe-150m", count_params(16384, 16, 512, 8, 4, 64, 640, True, experts=8)),
])
def test_preset_parameter_counts(preset, expected):
    cfg = load_config(preset)
    with torch.device("meta"):
        model = Transformer(cfg.model)
    assert model.num_params() == expected


def test_rain_v2_is_134m_not_100m():
    with torch.device("meta"):
        assert Transformer(load_config("rain-v2").model).num_params() == 134_255_104


def test_rain_v2_recipe_shape():
    cfg = load_config("rain-v2")
    assert cfg.tokens_per_step() == 65_536
    assert cfg.total_steps() == 10_000_000_000 // 65_536
    assert (cfg.model.n_head, cfg.model.n_kv_head, cfg.model.dim_head) == (8, 4, 64)
    assert (cfg.train.beta1, cfg.train.beta2) == (0.9, 0.999)


def test_overrides_are_typed():
    cfg = load_config("tiny", ["train.lr=1e-3", "model.n_layer=2", "train.schedule=wsd", "train.compile=true"])
    assert cfg.train.lr == 1e-3 and cfg.model.n_layer == 2 and cfg.train.schedule == "wsd" and cfg.train.compile is True
    assert parse_override("data.paths=['a', 'b']") == ("data", "paths", ["a", "b"])


@pytest.mark.parametrize("override, message", [
    ("model.n_kv_head=3", "multiple of model.n_kv_head"),
    ("train.micro_batch=3", "multiple of train.micro_batch"),
    ("model.n_layer='four'", "expected int"),
    ("train.bogus=1", "unknown key train.bogus"),
    ("nosection.x=1", "unknown config section"),
    ("train.schedule=linear", "cosine, wsd or constant"),
    ("lr=1", "section.key=value"),
])
def test_bad_overrides_are_named(override, message):
    with pytest.raises(RainError, match=message):
        load_config("tiny", [override])


def test_bad_toml_files(tmp_path):
    unknown = tmp_path / "u.toml"
    unknown.write_text("[model]\nwidth = 3\n")
    with pytest.raises(RainError, match="unknown key model.width"):
        load_config(unknown)
    wrong = tmp_path / "w.toml"
    wrong.write_text("[train]\nlr = 'fast'\n")
    with pytest.raises(RainError, match="expected float"):
        load_config(wrong)
    broken = tmp_path / "b.toml"
    broken.write_text("[train\n")
    with pytest.raises(RainError, match="not valid TOML"):
        load_config(broken)
    with pytest.raises(RainError, match="no such file or preset"):
        load_config(tmp_path / "missing.toml")
