"""The mixture-of-experts MLP: routing, the two dispatches, the load-balancing loss, and MoE models through
the trainer, compile and the export to transformers (KV-cache generation: tests/test_model.py)."""

import pytest
import torch

from rain.cli import main
from rain.config import load_config
from rain.model import Transformer
from rain.model.moe import MoE, router_stats
from rain import checkpoint as ckpt
from rain.train.metrics import flops_per_token, read_metrics
from rain.train.trainer import train
from tests.conftest import assert_same_run, small_model_config, tiny_run_config

MOE = dict(n_experts=4, experts_per_token=2, expert_d_ff=48)


def moe_config(**kw):
    return small_model_config(**{**MOE, **kw})


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def loss_and_grads(model, x, y, training: bool):
    model.train(training)
    model.zero_grad()
    loss = model(x, y)
    loss.backward()
    return loss.detach(), grads(model)


def test_capacity_dispatch_equals_dropless_when_nothing_overflows():
    # capacity_factor = n_experts / k gives every expert room for every token: the two dispatches must agree.
    model = Transformer(moe_config(capacity_factor=2.0, router_aux_coef=0.0))
    x, y = torch.randint(0, 512, (2, 40)), torch.randint(0, 512, (2, 40))
    capacity_loss, capacity_grads = loss_and_grads(model, x, y, training=True)
    dropless_loss, dropless_grads = loss_and_grads(model, x, y, training=False)
    assert torch.allclose(capacity_loss, dropless_loss, atol=1e-6)
    for name, g in capacity_grads.items():
        assert torch.allclose(g, dropless_grads[name], atol=1e-6), name
    assert router_stats(model)["moe_dropped"] == 0.0


def test_overflow_drops_second_choices_before_first_choices_and_counts_them():
    torch.manual_seed(0)
    moe = MoE(moe_config(capacity_factor=1.0))
    # Tokens 0-7 ("A") live in dims 0-31 and pick experts (0, 1); tokens 8-15 ("B") in dims 32-63 pick (1, 2).
    with torch.no_grad():
        for w in (moe.gate, moe.up, moe.down):
            w.normal_()  # outputs of order 1, so a dropped expert shows
        moe.router.weight.zero_()
        moe.router.weight[0, :32], moe.router.weight[1, :32] = 0.1, 0.05
        moe.router.weight[1, 32:], moe.router.weight[2, 32:] = 0.1, 0.05
    x = torch.zeros(1, 16, 64)
    x[0, :8, :32] = torch.rand(8, 32) + 0.1
    x[0, 8:, 32:] = torch.rand(8, 32) + 0.1
    assert moe.capacity(16) == 8  # 1.0 x 16 tokens x 2 choices / 4 experts
    moe.eval()
    full, _ = moe(x)
    moe.train()
    capped, _ = moe(x)
    # Expert 1 is asked for 16 slots: B's first choices win them over A's second choices, whichever token came first.
    assert torch.allclose(capped[0, 8:], full[0, 8:], atol=1e-6)
    assert (capped[0, :8] - full[0, :8]).abs().amax(dim=-1).min() > 0.1  # every A token lost its second expert
    stats = router_stats(moe)
    assert stats["moe_dropped"] == 0.25 and stats["moe_balance"] > 1.2  # 8 of 32 assignments; expert 1 overloaded
    moe.capacity_factor = 0  # dropless training: the same output as evaluation, nothing dropped, balance still logged
    dropless, _ = moe(x)
    assert torch.allclose(dropless, full, atol=1e-6)
    assert router_stats(moe) == {"moe_balance": stats["moe_balance"], "moe_dropped": 0.0}


def test_balance_loss_is_one_when_uniform_and_n_experts_when_collapsed():
    moe = MoE(moe_config())
    uniform = torch.full((8, 4), 0.25)
    spread = torch.tensor([[0, 1], [2, 3]] * 4)
    assert moe.balance_loss(uniform, spread).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 8)
    assert moe.balance_loss(collapsed, torch.zeros(8, 2, dtype=torch.long)).item() == pytest.approx(4.0)


def test_balancing_loss_adds_a_gradient_but_not_to_the_logged_loss():
    x, y = torch.randint(0, 512, (2, 32)), torch.randint(0, 512, (2, 32))
    results = {}
    for coef in (0.0, 1.0):
        torch.manual_seed(0)
        results[coef] = loss_and_grads(Transformer(moe_config(router_aux_coef=coef)), x, y, training=True)
    (plain_loss, plain), (aux_loss, aux) = results[0.0], results[1.0]
    assert torch.equal(plain_loss, aux_loss)
    router = "layers.0.mlp.router.weight"
    assert not torch.allclose(plain[router], aux[router])


def test_training_with_the_balancing_loss_keeps_experts_in_use():
    """On one batch at a high LR the router concentrates tokens on few experts; the balancing loss prevents it."""
    x = torch.randint(0, 512, (4, 64), generator=torch.Generator().manual_seed(3))
    stats = {}
    for coef in (0.0, 0.5):
        torch.manual_seed(0)
        model = Transformer(moe_config(n_experts=8, router_aux_coef=coef)).train()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
        for _ in range(40):
            opt.zero_grad()
            model(x[:, :-1], x[:, 1:]).backward()
            opt.step()
        stats[coef] = router_stats(model)
    # Measured: balance 1.51 and 14% of assignments dropped without, 1.05 and 1% with.
    assert stats[0.0]["moe_balance"] > 1.3 and stats[0.5]["moe_balance"] < 1.1
    assert stats[0.5]["moe_dropped"] < stats[0.0]["moe_dropped"] / 4


def test_compiled_moe_step_has_no_graph_break_and_matches_eager():
    torch.manual_seed(0)
    model = Transformer(moe_config()).train()
    x, y = torch.randint(0, 512, (2, 32)), torch.randint(0, 512, (2, 32))
    eager_loss, eager_grads = loss_and_grads(model, x, y, training=True)
    eager_stats = router_stats(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MoE):
                m.balance.zero_()
    compiled = torch.compile(model, fullgraph=True)  # a graph break (a host sync in dispatch) raises here
    model.zero_grad()
    loss = compiled(x, y)
    loss.backward()
    assert torch.allclose(loss, eager_loss, atol=1e-5)
    for name, g in grads(model).items():
        assert torch.allclose(g, eager_grads[name], atol=1e-5), name
    assert router_stats(model) == pytest.approx(eager_stats)  # the compiled step writes the router statistics too


def test_flops_count_only_the_experts_a_token_uses():
    cfg = load_config("moe-150m").model
    total = 146_885_120  # all parameters (tests/test_config.py derives the count)
    active = total - 16 * 6 * 3 * 512 * 640  # each token skips 6 of the 8 experts in each of the 16 layers
    assert active == 52_513_280
    assert flops_per_token(cfg, total) == 6 * active + 12 * 16 * 512 * 1024


def test_moe_model_trains_resumes_exactly_and_exports_to_transformers(tiny_data, tmp_path):
    def cfg():
        c = tiny_run_config(tiny_data, max_steps=8, eval_every=4, log_every=2)
        c.model = moe_config(vocab_size=c.model.vocab_size)
        return c

    full = train(cfg(), tmp_path / "full", log=lambda *a: None)
    records = [r for r in read_metrics(tmp_path / "full") if r["kind"] == "train"]
    assert all(0 <= r["moe_dropped"] < 1 and 0 < r["moe_balance"] < 4 for r in records)
    assert records[-1]["loss"] < records[0]["loss"]
    assert full["final_val_loss"] < full["first_val_loss"]
    assert full["parameters"] - full["active_parameters"] == 2 * 2 * 3 * 64 * 48  # 2 layers x 2 unused experts

    train(cfg(), tmp_path / "split", stop_after=4, log=lambda *a: None)
    train(cfg(), tmp_path / "split", resume=True, log=lambda *a: None)
    assert_same_run(tmp_path / "full", tmp_path / "split")

    transformers = pytest.importorskip("transformers")
    assert main(["export", str(tmp_path / "full"), str(tmp_path / "hf")]) == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "Qwen3MoeForCausalLM" in card and "4 SwiGLU experts of size 48, each token routed to 2" in card
    model, _ = ckpt.load_model(tmp_path / "full", "cpu")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(ids).logits - model.eval()(ids)).abs().max().item() < 1e-4


def test_an_moe_model_without_qk_norm_is_refused_by_export(tmp_path):
    from rain.data.tokenizer import train_bpe
    from rain.errors import RainError
    from rain.export.hf import export_hf

    cfg = moe_config(qk_norm=False)
    tokenizer = train_bpe(["a small text to train on"] * 20, vocab_size=300)
    with pytest.raises(RainError, match="Qwen3-MoE.*qk_norm"):
        export_hf(cfg, Transformer(cfg).state_dict(), tokenizer, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
