"""train.precision (issue 13 item 2): bf16-master trains bf16 weights from fp32 masters and fp32 optimizer state,
close to bf16 autocast; its checkpoints hold the fp32 masters, so a run stopped and resumed is bit-identical to one
run straight (with clipping, accumulation, the LR schedule, Muon and the divergence guard); the old train.dtype key
still reads, with a notice; a bad value is one line."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rain.config import RunConfig, config_from_dict, load_config
from rain.errors import RainError
from rain.model import Transformer
from rain.train.precision import MasterWeights
from rain.train.trainer import Trainer, train
from tests.conftest import (
    assert_same_run,
    small_model_config,
    small_toml,
    tiny_run_config,
    train_losses,
)
from tests.test_bad_input import one_line_error
from tests.test_guards import bad_data, guard_records, rollback_config  # noqa: F401 (bad_data: a fixture)


def quiet(*_):
    pass


def run_config(data, precision="bf16-master", **train):
    return tiny_run_config(data, max_steps=8, log_every=1, eval_every=4, precision=precision, **train)


def test_bf16_master_losses_track_bf16_autocast(tiny_data, tmp_path):
    losses = {}
    for precision in ("bf16", "bf16-master"):  # with Muon too (measured: within 2e-3 as well)
        train(run_config(tiny_data, precision, checkpoints=0), tmp_path / precision, log=quiet)
        losses[precision] = [loss for _, loss in train_losses(tmp_path / precision)]
    assert len(losses["bf16"]) == 8 and losses["bf16"][-1] < losses["bf16"][0] - 0.5  # it learns
    assert losses["bf16-master"] == pytest.approx(losses["bf16"], abs=0.02)  # measured: within 2e-3
    assert losses["bf16-master"] != losses["bf16"]  # and it is another computation: bf16 weights, no autocast


def test_master_weights_keep_fp32_copies_and_write_bf16_back():
    torch.manual_seed(0)
    model = Transformer(small_model_config())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mw = MasterWeights(model, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.rope_cos.dtype == torch.float32
    x = torch.randint(0, 512, (2, 33))
    model(x[:, :-1], x[:, 1:]).backward()
    mw.step()
    for (name, p), m in zip(model.named_parameters(), mw.master.parameters()):
        assert m.dtype == torch.float32 and torch.equal(p, m.to(torch.bfloat16)) and p.grad is None
        assert not torch.equal(m, before[name])


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_the_model_is_bf16_and_the_masters_and_optimizer_state_fp32(tiny_data, tmp_path, optimizer):
    trainer = Trainer(run_config(tiny_data, optimizer=optimizer), tmp_path / "run", log=quiet)
    for _ in range(2):
        trainer.step()
    opt = trainer.optimizer
    assert isinstance(opt, MasterWeights)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in opt.master.parameters()} == {torch.float32}
    pairs = zip(trainer.model.parameters(), opt.master.parameters())
    assert all(torch.equal(p, m.to(torch.bfloat16)) for p, m in pairs)
    state = [v for s in opt.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    assert state and {v.dtype for v in state} == {torch.float32}
    assert all(p.grad is None for p in trainer.model.parameters())  # the bf16 grads were handed on and freed


def test_checkpoints_hold_the_fp32_masters_and_weights_only_ones_bf16(tiny_data, tmp_path):
    cfg = run_config(tiny_data, checkpoints=2)
    trainer = Trainer(cfg, tmp_path / "run", log=quiet)
    trainer.fit()
    last = load_file(str(tmp_path / "run/checkpoints/last/model.safetensors"))
    masters = dict(trainer.optimizer.master.state_dict())
    assert {v.dtype for v in last.values()} == {torch.float32}
    assert all(torch.equal(v, masters[k]) for k, v in last.items())  # the masters, not the rounded model
    step = load_file(str(tmp_path / "run/checkpoints/step_0000008/model.safetensors"))  # auto: bf16 like the compute
    model = dict(trainer.model.state_dict())
    assert {v.dtype for v in step.values()} == {torch.bfloat16}
    assert all(torch.equal(v, model[k]) for k, v in step.items())  # exactly the weights training computed with


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_stopped_and_resumed_bf16_master_run_is_bit_identical(tiny_data, tmp_path, optimizer):
    cfg = run_config(tiny_data, optimizer=optimizer)  # 2 micro-batches a step, clipped, warm-up then cosine
    train(cfg, tmp_path / "straight", log=quiet)
    train(cfg, tmp_path / "stopped", stop_after=3, log=quiet)
    train(cfg, tmp_path / "stopped", resume=True, log=quiet)
    assert_same_run(tmp_path / "straight", tmp_path / "stopped")


def test_a_bf16_master_run_skips_rolls_back_and_still_resumes_exactly(tiny_data, tmp_path, bad_data):  # noqa: F811
    cfg = rollback_config(tiny_data, precision="bf16-master")
    train(cfg, tmp_path / "straight", data=bad_data(cfg, bad={20, 24}), log=quiet)
    [rollback] = guard_records(tmp_path / "straight")
    assert rollback["event"] == "rollback" and rollback["step"] == 4
    train(cfg, tmp_path / "resumed", data=bad_data(cfg, bad={20, 24}), stop_after=9, log=quiet)
    train(cfg, tmp_path / "resumed", resume=True, data=bad_data(cfg, bad={20, 24}), log=quiet)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def test_the_old_train_dtype_key_still_reads_with_a_one_line_notice(tmp_path, capsys):
    cfg = load_config(RunConfig(), ["train.max_steps=1", "train.dtype=bf16-master"])
    assert cfg.train.precision == "bf16-master"
    [line] = capsys.readouterr().err.splitlines()
    assert "train.dtype" in line and "train.precision" in line
    toml = tmp_path / "old.toml"
    toml.write_text(small_toml(dtype="bf16"))
    assert load_config(toml).train.precision == "bf16"
    [line] = capsys.readouterr().err.splitlines()
    assert str(toml) in line and "train.precision" in line
    saved = RunConfig().to_dict()  # an older run's config.json: read as it was written, without a notice
    saved["train"]["dtype"] = saved["train"].pop("precision")
    saved["train"]["max_steps"] = 1
    assert config_from_dict(json.loads(json.dumps(saved))).train.precision == "auto"
    assert capsys.readouterr().err == ""


def test_a_bad_precision_is_one_line(tiny_data, tmp_path, capsys):
    one_line_error(capsys, ["train", "--data", tiny_data, "--out", tmp_path / "run", "--set", "train.precision=fp16"],
                   "train.precision 'fp16' must be auto, fp32, bf16 or bf16-master")
    with pytest.raises(RainError, match="train.precision 'fp16' must be auto, fp32, bf16 or bf16-master"):
        load_config(RunConfig(), ["train.max_steps=1", "train.dtype=fp16"])  # the old key: the same check
    assert not (tmp_path / "run").exists()
