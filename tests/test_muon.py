import json

import pytest
import torch

from rain.config import TrainConfig
from rain.model import Transformer
from rain import checkpoint as ckpt
from rain.train.muon import Muon, orthogonalize
from rain.train.optim import build_optimizer, lr_at, set_lr
from rain.train.trainer import train
from tests.conftest import assert_same_run, small_model_config, tiny_run_config


@pytest.mark.parametrize("shape", [(3, 16, 48), (2, 48, 16), (1, 32, 32)])
def test_newton_schulz_pushes_singular_values_towards_one(shape):
    u, _, v = torch.linalg.svd(torch.randn(shape), full_matrices=False)
    g = u @ torch.diag_embed(torch.logspace(-1.3, 0, u.shape[-1]).expand(shape[0], -1)) @ v  # condition number 20
    x = orthogonalize(g)
    s = torch.linalg.svdvals(x)
    assert x.shape == g.shape
    assert s.min() > 0.6 and s.max() < 1.25
    # each matrix of the batch is treated on its own
    assert torch.allclose(x[0], orthogonalize(g[:1])[0], atol=1e-5)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
def test_muon_step_matches_torch_muon():
    torch.manual_seed(0)
    p_ref = torch.nn.Parameter(torch.randn(64, 32))
    p = torch.nn.Parameter(p_ref.detach().clone())
    ref = torch.optim.Muon([p_ref], lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True)
    ours = Muon([{"params": [p], "muon": True}], lr=0.02, weight_decay=0.1, momentum=0.95, ns_dtype=torch.bfloat16)
    for _ in range(3):
        g = torch.randn(64, 32)
        p_ref.grad, p.grad = g.clone(), g.clone()
        ref.step()
        ours.step()
    assert torch.allclose(p, p_ref, atol=2e-3)
    assert torch.allclose(ours.state[p]["momentum_buffer"], ref.state[p_ref]["momentum_buffer"])


def test_a_stack_of_expert_matrices_steps_like_each_matrix_alone():
    torch.manual_seed(0)
    stacked = torch.nn.Parameter(torch.randn(3, 16, 8))
    alone = [torch.nn.Parameter(m.detach().clone()) for m in stacked]
    start = stacked.detach().clone()
    opt_stacked = Muon([{"params": [stacked], "muon": True}], lr=0.02, weight_decay=0.1)
    opt_alone = Muon([{"params": alone, "muon": True}], lr=0.02, weight_decay=0.1)
    for _ in range(3):
        g = torch.randn(3, 16, 8)
        stacked.grad = g.clone()
        for p, gi in zip(alone, g):
            p.grad = gi.clone()
        opt_stacked.step()
        opt_alone.step()
    assert torch.allclose(stacked, torch.stack(alone), atol=1e-6)
    assert (stacked - start).abs().max() > 0.01


def test_non_muon_groups_take_exactly_torch_adamw_steps():
    torch.manual_seed(0)
    w, b = torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(4))
    b_ref = torch.nn.Parameter(b.detach().clone())
    opt = Muon([{"params": [w], "muon": True}, {"params": [b], "weight_decay": 0.1}], lr=0.01, betas=(0.9, 0.95))
    ref = torch.optim.AdamW([b_ref], lr=0.01, betas=(0.9, 0.95), weight_decay=0.1)
    for _ in range(3):
        g = torch.randn(4)
        w.grad, b.grad, b_ref.grad = torch.randn(8, 4), g.clone(), g.clone()
        opt.step()
        ref.step()
    assert torch.equal(b, b_ref)
    assert set(opt.state[b]) == {"step", "exp_avg", "exp_avg_sq"} and set(opt.state[w]) == {"momentum_buffer"}


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = Transformer(small_model_config())
    t = TrainConfig(max_steps=1, optimizer="muon", muon_lr=0.05)
    opt = build_optimizer(model, t, "cpu")
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opt.param_groups if g["muon"] for p in g["params"]}
    adam = {names[id(p)] for g in opt.param_groups if not g["muon"] for p in g["params"]}
    assert muon and all(n.startswith("layers.") and n.endswith(".weight") and "norm" not in n for n in muon)
    assert "embed.weight" in adam and all("norm" in n or n == "embed.weight" for n in adam)
    assert len(muon) + len(adam) == len(list(model.parameters()))
    untied = Transformer(small_model_config(tie_embeddings=False))
    opt = build_optimizer(untied, t, "cpu")
    head = untied.lm_head.weight
    assert any(p is head for g in opt.param_groups if not g["muon"] for p in g["params"])


def test_muon_has_its_own_schedule():
    model = Transformer(small_model_config())
    t = TrainConfig(max_steps=100, optimizer="muon", lr=1e-3, min_lr=1e-4, warmup=10, schedule="cosine",
                    muon_lr=0.02, muon_warmup=0, muon_schedule="wsd", decay_frac=0.2)
    opt = build_optimizer(model, t, "cpu")
    for step, adam_lr, muon_lr in [(0, 1e-4, 0.02), (50, lr_at(50, 100, t), 0.02), (99, 1e-4, 0.002)]:
        assert set_lr(opt, step, 100, t) == pytest.approx(adam_lr)
        lrs = {g["muon"]: g["lr"] for g in opt.param_groups}
        assert lrs[True] == pytest.approx(muon_lr) and lrs[False] == pytest.approx(adam_lr)


def test_muon_lowers_the_loss_of_a_fixed_batch():
    torch.manual_seed(0)
    model = Transformer(small_model_config())
    opt = build_optimizer(model, TrainConfig(max_steps=1, optimizer="muon", lr=3e-3), "cpu")
    x = torch.randint(0, 512, (2, 33))
    losses = []
    for _ in range(8):
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 1.0


def test_muon_state_survives_a_checkpoint_round_trip():
    torch.manual_seed(0)
    model = Transformer(small_model_config())
    t = TrainConfig(max_steps=1, optimizer="muon")
    opt = build_optimizer(model, t, "cpu")
    x = torch.randint(0, 512, (2, 33))
    model(x[:, :-1], x[:, 1:]).backward()
    opt.step()
    tensors, meta = ckpt.optimizer_state(opt)
    meta = json.loads(json.dumps(meta))  # it travels through state.json
    fresh = build_optimizer(model, t, "cpu")
    ckpt.load_optimizer_state(fresh, tensors, meta)
    assert [g["muon"] for g in fresh.param_groups] == [g["muon"] for g in opt.param_groups]
    for p in model.parameters():
        for key, value in opt.state[p].items():
            assert torch.equal(fresh.state[p][key], value)
    assert fresh._adam.state is fresh.state  # the inner AdamW sees the reloaded state


def test_training_with_muon_resumes_bit_identically(tiny_data, tmp_path):
    cfg = tiny_run_config(tiny_data, max_steps=4, log_every=1, eval_every=2, checkpoints=0, optimizer="muon")
    train(cfg, tmp_path / "straight", log=lambda *_: None)
    train(cfg, tmp_path / "broken", stop_after=2, log=lambda *_: None)
    train(cfg, tmp_path / "broken", resume=True, log=lambda *_: None)
    assert_same_run(tmp_path / "broken", tmp_path / "straight")
