import pytest

from rain.config import TrainConfig
from rain.model import Transformer
from rain.train.optim import build_optimizer, lr_at, param_groups
from tests.conftest import small_model_config


def test_weight_decay_only_on_matrices_never_embeddings_or_norms():
    model = Transformer(small_model_config())
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "embed.weight" in no_decay_names  # the tied LM head is the same tensor
    assert all(n.endswith(("q.weight", "k.weight", "v.weight", "o.weight", "gate.weight", "up.weight", "down.weight")) for n in decay_names)
    assert all("norm" in n or n == "embed.weight" for n in no_decay_names)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_optimizer_sees_every_parameter_once():
    model = Transformer(small_model_config())
    opt = build_optimizer(model, TrainConfig(max_steps=1), "cpu")
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len(list(model.parameters()))


def test_cosine_schedule_values():
    t = TrainConfig(lr=1.0, min_lr=0.1, warmup=10, schedule="cosine")
    total = 110
    assert lr_at(0, total, t) == pytest.approx(0.1)
    assert lr_at(9, total, t) == pytest.approx(1.0)  # end of warm-up: the peak
    assert lr_at(59, total, t) == pytest.approx(0.55)  # half-way through the decay: the midpoint
    assert lr_at(109, total, t) == pytest.approx(0.1)  # the last step reaches min_lr


def test_warmup_as_a_fraction_and_cosine_to_zero():
    t = TrainConfig(lr=2.0, min_lr=0.0, warmup=0.01, schedule="cosine")
    total = 1000
    assert lr_at(9, total, t) == pytest.approx(2.0)
    assert lr_at(999, total, t) == pytest.approx(0.0, abs=1e-12)
    values = [lr_at(s, total, t) for s in range(10, 1000)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_warmup_stable_decay_schedule():
    t = TrainConfig(lr=1.0, min_lr=0.0, warmup=10, schedule="wsd", decay_frac=0.2)
    total = 100
    assert lr_at(9, total, t) == pytest.approx(1.0)
    assert lr_at(50, total, t) == pytest.approx(1.0)
    assert lr_at(79, total, t) == pytest.approx(1.0)
    assert lr_at(89, total, t) == pytest.approx(0.5)
    assert lr_at(99, total, t) == pytest.approx(0.0)
