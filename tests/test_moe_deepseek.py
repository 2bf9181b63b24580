"""The DeepSeek-style MoE options (shared experts, sigmoid routing, auxiliary-loss-free bias balancing, the router
z-loss) and the grouped-matmul dropless dispatch, on CPU."""

import math

import pytest
import torch
import torch.nn.functional as F

from rain.config import load_config
from rain.errors import RainError
from rain.model import Transformer
from rain.model.hf_weights import hf_model_type
from rain.model.moe import MoE, update_router_bias
from rain.train.trainer import train
from tests.conftest import assert_same_run, small_model_config, tiny_run_config

DEEPSEEK = {"n_experts": 8, "experts_per_token": 3, "expert_d_ff": 16, "n_shared_experts": 1, "router_score": "sigmoid",
            "router_bias_rate": 0.01, "router_aux_coef": 0.0}


def deepseek_config(**kw):
    return small_model_config(**{**DEEPSEEK, **kw})


def dense_reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, each token's output the routed weights times its chosen experts' outputs."""
    _, weights, experts = moe.route(x)
    every = torch.stack([(F.silu(x @ moe.gate[e].T) * (x @ moe.up[e].T)) @ moe.down[e].T
                         for e in range(moe.n_experts)], dim=1)  # (N, E, d)
    chosen = every.gather(1, experts[..., None].expand(-1, -1, x.shape[-1]))
    return (chosen * weights[..., None]).sum(dim=1)


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_dropless_dispatches_equal_the_dense_computation(score):
    torch.manual_seed(0)
    moe = MoE(deepseek_config(router_score=score, n_shared_experts=0, router_bias_rate=0.0)).train()
    x = torch.randn(50, 64, requires_grad=True)
    _, weights, experts = moe.route(x)
    reference = dense_reference(moe, x)
    loop = moe._dropless_dispatch(x, weights, experts)
    grouped = moe._grouped_dispatch(x, weights, experts)  # torch._grouped_mm's CPU implementation
    moe.capacity_factor = moe.n_experts / moe.top_k  # room for every token: nothing dropped
    capacity, dropped = moe._capacity_dispatch(x, weights, experts)
    assert dropped.item() == 0
    for out in (loop, grouped, capacity):
        assert torch.allclose(out, reference, atol=1e-6)
    (g_loop,) = torch.autograd.grad(loop.square().sum(), moe.gate)
    (g_grouped,) = torch.autograd.grad(grouped.square().sum(), moe.gate)
    assert torch.allclose(g_loop, g_grouped, atol=1e-6)


def test_shared_experts_are_used_by_every_token():
    torch.manual_seed(0)
    moe = MoE(deepseek_config()).eval()
    with torch.no_grad():
        moe.down.zero_()  # silence the routed experts: what is left is the shared experts' output
    x = torch.randn(2, 20, 64)
    out, _ = moe(x)
    assert moe.shared.down.weight.shape == (64, 16)  # one shared expert of width expert_d_ff
    assert torch.allclose(out, moe.shared(x), atol=1e-6)
    assert out.abs().amax(dim=-1).min() > 0  # every token got it


def test_z_loss_matches_a_hand_computation_and_only_adds_a_gradient():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, -1.0]])
    by_hand = (math.log(math.e + math.e**2 + math.e**3) ** 2 + math.log(2 + math.exp(-1)) ** 2) / 2
    assert MoE.z_loss(logits).item() == pytest.approx(by_hand, rel=1e-6)

    x, y = torch.randint(0, 512, (2, 32)), torch.randint(0, 512, (2, 32))
    results = {}
    for coef in (0.0, 1.0):
        torch.manual_seed(0)
        model = Transformer(deepseek_config(router_z_coef=coef)).train()
        loss = model(x, y)
        loss.backward()
        results[coef] = loss.detach(), model.layers[0].mlp.router.weight.grad.clone()
    assert torch.equal(results[0.0][0], results[1.0][0])  # the logged loss stays the cross-entropy
    assert not torch.allclose(results[0.0][1], results[1.0][1])


def test_bias_balancing_moves_a_skewed_router_toward_uniform_load():
    torch.manual_seed(0)
    moe = MoE(deepseek_config(capacity_factor=0.0, router_bias_rate=0.003)).train()
    with torch.no_grad():
        moe.router.weight[:2, 0] = 0.3  # dim 0 is large on every token: experts 0 and 1 are favoured
    x = torch.randn(128, 64)
    x[:, 0] = 1.5
    loads = []
    for _ in range(50):
        with torch.no_grad():
            moe(x[None])
        loads.append(moe.load.clone() / moe.load.sum())
        update_router_bias(moe)
    assert loads[0][:2].sum() > 0.35  # skewed: 2 of 8 experts take 40% of the assignments (uniform: 25%)
    distance = [(load - 1 / 8).abs().max() for load in loads]
    assert max(distance[-10:]) < 0.25 * distance[0]  # and then close to uniform, measured 0.078 -> 0.003
    assert moe.load.sum() == 0  # the count restarts after each update
    # The bias is a buffer: no gradient, not among the parameters an optimizer gets.
    assert not moe.expert_bias.requires_grad
    assert all(p is not moe.expert_bias for p in moe.parameters())
    assert moe.expert_bias[:2].max() < 0 < moe.expert_bias[2:].max()


def test_deepseek_style_model_trains_and_resumes_with_its_bias_exactly(tiny_data, tmp_path):
    def cfg():
        c = tiny_run_config(tiny_data, max_steps=4, eval_every=4, log_every=2)
        c.model = deepseek_config(vocab_size=c.model.vocab_size, router_z_coef=1e-3)
        return c

    train(cfg(), tmp_path / "full", log=lambda *a: None)
    train(cfg(), tmp_path / "split", stop_after=2, log=lambda *a: None)
    train(cfg(), tmp_path / "split", resume=True, log=lambda *a: None)
    assert_same_run(tmp_path / "full", tmp_path / "split")  # the checkpoint's weights include each expert_bias
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "full/checkpoints/last/model.safetensors"))
    assert weights["layers.0.mlp.expert_bias"].abs().sum() > 0  # the updates were saved


def test_defaults_keep_the_qwen3_layout_and_deepseek_style_export_is_refused():
    plain = Transformer(small_model_config(n_experts=4, expert_d_ff=48)).state_dict()
    assert not any("shared" in k or "expert_bias" in k for k in plain)
    with pytest.raises(RainError, match="DeepSeek-style MoE.*no matching transformers architecture"):
        hf_model_type(deepseek_config())
    with pytest.raises(RainError, match="model.router_score"):
        load_config("tiny", ["model.n_experts=4", "model.router_score='softmax2'"])
