import json

import pytest
import torch
import torch.nn.functional as F

from rain.config import RunConfig, load_config
from rain.errors import RainError
from rain.model import Transformer
from rain.model.transformer import linear_cross_entropy
from rain.train import micro_batch
from rain.train.trainer import train
from tests.conftest import small_model_config, tiny_run_config


def loss_and_grads(model, x, y, doc=None):
    model.zero_grad(set_to_none=True)
    loss = model(x, y, doc_ids=doc)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("layers, experts", [(1, 0), (2, 0), (2, 4)])
def test_activation_checkpointing_gives_identical_loss_and_grads(layers, experts):
    torch.manual_seed(0)
    model = Transformer(small_model_config(n_experts=experts))
    x, y = torch.randint(0, 512, (2, 32)), torch.randint(0, 512, (2, 32))
    doc = torch.tensor([[0] * 12 + [1] * 20, [0] * 32])
    for d in (None, doc):
        plain_loss, plain = loss_and_grads(model, x, y, d)
        model.checkpoint_layers = layers
        ckpt_loss, ckpt = loss_and_grads(model, x, y, d)
        model.checkpoint_layers = 0
        assert torch.equal(plain_loss, ckpt_loss)
        assert all(torch.equal(plain[n], ckpt[n]) for n in plain)


def test_checkpoint_layers_is_validated():
    with pytest.raises(RainError, match="checkpoint_layers"):
        load_config("tiny", ["train.checkpoint_layers=5"])  # tiny has 4 blocks
    assert load_config("tiny", ["train.checkpoint_layers=4"]).train.checkpoint_layers == 4


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_chunked_linear_cross_entropy_equals_the_full_logits_loss(chunk):
    torch.manual_seed(0)
    x = torch.randn(50, 16, requires_grad=True)
    w = torch.randn(40, 16, requires_grad=True)
    t = torch.randint(0, 40, (50,))
    t[[3, 10, 11]] = -100
    ref = F.cross_entropy((x @ w.T).float(), t, ignore_index=-100)
    gx_ref, gw_ref = torch.autograd.grad(ref, (x, w))
    loss = linear_cross_entropy(x, w, t, chunk)
    gx, gw = torch.autograd.grad(loss * 3.0, (x, w))  # a scaled loss (gradient accumulation) scales the grads
    assert torch.allclose(loss, ref, atol=1e-6)
    assert torch.allclose(gx, 3 * gx_ref, atol=1e-6) and torch.allclose(gw, 3 * gw_ref, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(x, w, t, chunk), ref, atol=1e-6)


def test_model_loss_equals_cross_entropy_of_its_logits_under_bf16_autocast():
    torch.manual_seed(0)
    model = Transformer(small_model_config())
    model.loss_chunk = 24  # several chunks
    x, y = torch.randint(0, 512, (2, 64)), torch.randint(0, 512, (2, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, y)
        logits = model(x)
    assert logits.dtype == torch.bfloat16
    ref = F.cross_entropy(logits.float().view(-1, 512), y.view(-1))
    assert torch.allclose(loss, ref, atol=2e-3)


def test_largest_fitting_takes_the_biggest_micro_batch_within_the_budget():
    gb = 1e9
    fake_peak = lambda b: None if b >= 32 else (2 + 1.5 * b) * gb  # 32 and up: out of memory
    choice, tried = micro_batch.largest_fitting([64, 32, 16, 8, 4, 2, 1], fake_peak, budget=24 * gb, log=lambda *_: None)
    assert choice == 8 and list(tried) == [64, 32, 16, 8]
    choice, _ = micro_batch.largest_fitting([64, 32, 16, 8, 4, 2, 1], fake_peak, budget=80 * gb, log=lambda *_: None)
    assert choice == 16
    with pytest.raises(RainError, match="not even a micro-batch of 1"):
        micro_batch.largest_fitting([4, 2, 1], fake_peak, budget=1 * gb, log=lambda *_: None)


def test_auto_micro_batch_divides_the_batch_per_process():
    cfg = RunConfig(model=small_model_config())
    cfg.train.batch_size, cfg.train.micro_batch = 24, 24
    peak = lambda b: b * 1e9
    device = torch.device("cpu")
    assert micro_batch.fit_micro_batch(cfg, device, peak_bytes=peak, budget=10e9, log=lambda *_: None) == 8
    assert micro_batch.fit_micro_batch(cfg, device, world=2, peak_bytes=peak, budget=10e9, log=lambda *_: None) == 6
    cfg.train.micro_batch = 4  # never above the configured micro-batch
    assert micro_batch.fit_micro_batch(cfg, device, peak_bytes=peak, budget=10e9, log=lambda *_: None) == 4
    # nothing to measure on a CPU: the configured micro-batch stays
    assert micro_batch.fit_micro_batch(cfg, device, log=lambda *_: None) == 4


def test_trainer_uses_the_micro_batch_that_fits(tiny_data, tmp_path, monkeypatch):
    picked = {}

    def fake_fit(cfg, device, world, log):
        picked["max"] = cfg.train.micro_batch
        return 1

    monkeypatch.setattr(micro_batch, "fit_micro_batch", fake_fit)
    cfg = tiny_run_config(tiny_data, max_steps=2, eval_every=2, checkpoints=0, auto_micro_batch=True, checkpoint_layers=1)
    summary = train(cfg, tmp_path / "run", log=lambda *_: None)
    assert picked == {"max": 2} and summary["steps"] == 2
    assert summary["micro_batch"] == 1  # 4 accumulation steps of the fitted micro-batch
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert saved["micro_batch"] == 2 and saved["batch_size"] == 4  # the config keeps what was asked
