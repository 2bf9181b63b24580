"""The long run (rain.train.long_run): a step with a non-finite loss never reaches the weights; too many of them, or
a loss spike, roll the run back to its last checkpoint past the bad data (or stop it); a rolled-back run still
resumes bit-exactly; train.epochs sets the length and validates at each epoch's end; early stopping; --time-limit."""

import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file

from rain.cli import main as rain_main
from rain.errors import RainError
from rain.model.transformer import Transformer
from rain.train import long_run
from rain.train.batches import PretrainData
from rain.train.metrics import read_metrics
from rain.train.optim import lr_at
from rain.train.trainer import train
from tests.conftest import assert_same_run, small_toml, tiny_run_config, train_losses


def quiet(*_):
    pass


class Killed(BaseException):
    """A simulated kill -9 (no `except Exception` in rain can tidy up after it)."""


class BadData:
    """Training data with bad windows: a micro-batch holding one of the loader positions in `bad` makes the model's
    training loss `factor` times what it was (nan: not a number, as an overflow in bf16 gives). It notes where each
    micro-batch started, and can simulate a kill -9 as it reads its `kill_at`-th micro-batch."""

    def __init__(self, cfg, bad, factor=math.nan, kill_at=None):
        self.data, self.bad, self.factor, self.kill_at = PretrainData(cfg), set(bad), factor, kill_at
        self.calls, self.starts, self.pending = 0, [], False

    def next_batch(self):
        self.calls += 1
        if self.calls == self.kill_at:
            raise Killed
        start = self.data.state_dict()["consumed"]
        self.starts.append(start)
        self.pending = any(i in self.bad for i in range(start, start + self.data.micro_batch))
        return self.data.next_batch()

    def __getattr__(self, name):
        return getattr(self.data, name)


@pytest.fixture
def bad_data(monkeypatch):
    """BadData(cfg, bad, ...) whose bad windows the model's forward (patched here) turns into a bad loss."""
    made = []
    real = Transformer.forward

    def forward(self, idx, targets=None, *args, **kwargs):
        loss = real(self, idx, targets, *args, **kwargs)
        data = made[-1] if made else None
        if data is not None and data.pending and self.training and targets is not None:
            data.pending = False
            return loss * data.factor
        return loss

    monkeypatch.setattr(Transformer, "forward", forward)

    def make(*args, **kwargs):
        made.append(BadData(*args, **kwargs))
        return made[-1]

    return make


def guard_records(run, event=None):
    return [r for r in read_metrics(run) if r["kind"] == "guard" and event in (None, r["event"])]


def finite_weights(folder) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(str(folder / "model.safetensors")).values())


# 4 sequences a step in micro-batches of 2: step k trains loader positions 4(k-1) .. 4k-1.
def rollback_config(data, **train):
    return tiny_run_config(data, max_steps=12, eval_every=4, checkpoints=0, log_every=1, max_bad_steps=2,
                           rollback_lr_factor=0.5, rollback_lr_steps=3, **train)


def test_a_step_with_a_nan_loss_is_skipped_and_counted_and_the_weights_stay_finite(tiny_data, tmp_path, bad_data):
    cfg = tiny_run_config(tiny_data, max_steps=6, eval_every=6, checkpoints=0, log_every=1)
    summary = train(cfg, tmp_path / "run", data=bad_data(cfg, bad={8}), log=quiet)  # step 3
    assert summary["steps"] == 6 and summary["skipped_steps"] == 1
    [skip] = guard_records(tmp_path / "run")
    assert skip["event"] == "skip" and skip["step"] == 3 and "loss" in skip["non_finite"]
    losses = train_losses(tmp_path / "run")
    assert [s for s, _ in losses] == [1, 2, 4, 5, 6] and all(math.isfinite(v) for _, v in losses)
    assert finite_weights(tmp_path / "run/checkpoints/last")
    assert math.isfinite(summary["final_val_loss"])


def test_bad_steps_in_a_row_roll_back_past_their_data_at_a_lower_learning_rate(tiny_data, tmp_path, bad_data):
    cfg = rollback_config(tiny_data)
    data = bad_data(cfg, bad={20, 24})  # steps 6 and 7: two in a row, after `last` was saved at step 4
    lines = []
    summary = train(cfg, tmp_path / "run", data=data, log=lines.append)
    [rollback] = guard_records(tmp_path / "run")  # the abandoned steps' records went with them
    assert rollback["event"] == "rollback" and rollback["step"] == 4 and rollback["from_step"] == 7
    assert rollback["checkpoint"] == "last" and "2 steps in a row" in rollback["reason"]
    assert rollback["skipped_windows"] == {"from": 16, "to": 28}
    assert data.starts[14] == 28  # the first micro-batch after the rollback: past the windows it diverged on
    records = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert [r["step"] for r in records] == list(range(1, 13))  # one timeline, no step twice
    for r in records[4:]:
        factor = 0.5 if r["step"] <= 7 else 1.0  # rollback_lr_steps = 3 steps at half the learning rate
        assert r["lr"] == pytest.approx(factor * lr_at(r["step"] - 1, 12, cfg.train))
    assert summary["steps"] == 12 and summary["rollbacks"] == [rollback] and summary["stop_reason"] is None
    assert any("rolled back to step 4" in line for line in lines)
    assert finite_weights(tmp_path / "run/checkpoints/last")


def test_on_divergence_stop_ends_in_one_line_and_saves_nothing_new(tiny_data, tmp_path, bad_data):
    cfg = rollback_config(tiny_data, on_divergence="stop")
    with pytest.raises(RainError) as stopped:
        train(cfg, tmp_path / "run", data=bad_data(cfg, bad={20, 24}), log=quiet)
    message = str(stopped.value)
    assert "\n" not in message and "training diverged at step 7" in message and "checkpoints/last" in message
    state = json.loads((tmp_path / "run/checkpoints/last/state.json").read_text())
    assert state["step"] == 4  # nothing was saved after the divergence
    assert [r["event"] for r in guard_records(tmp_path / "run")] == ["skip", "skip", "stop"]
    summary = json.loads((tmp_path / "run/run_summary.json").read_text())
    assert summary["stop_reason"].startswith("diverged at step 7") and summary["skipped_steps"] == 2


def test_a_loss_spike_calls_for_the_divergence_action(tiny_data, tmp_path, bad_data):
    cfg = rollback_config(tiny_data, on_divergence="stop", spike_window=3, spike_factor=3.0)
    with pytest.raises(RainError, match="training diverged at step 6: a loss spike"):
        train(cfg, tmp_path / "run", data=bad_data(cfg, bad={20}, factor=100.0), log=quiet)  # a finite, huge loss
    [stop] = guard_records(tmp_path / "run")
    assert stop["event"] == "stop" and stop["step"] == 6


def kill_at_first_rollback_record(real_log):
    """A MetricsLog.log that simulates a kill -9 as the first rollback record is appended (`last` is saved)."""
    done = []

    def log(metrics, record):
        if record.get("event") == "rollback" and not done:
            done.append(record)
            raise Killed
        return real_log(metrics, record)

    return log


@pytest.mark.parametrize("kill", ["before the rollback", "after the rollback", "at the rollback record"])
def test_a_rolled_back_run_killed_and_resumed_is_bit_identical(tiny_data, tmp_path, bad_data, monkeypatch, kill):
    cfg = rollback_config(tiny_data)
    train(cfg, tmp_path / "straight", data=bad_data(cfg, bad={20, 24}), log=quiet)
    # Micro-batch 13 is step 7's first (it diverges there); 17 is step 6's first after the rollback to step 4.
    kill_at = {"before the rollback": 13, "after the rollback": 17}.get(kill)
    if kill == "at the rollback record":
        from rain.train.metrics import MetricsLog

        monkeypatch.setattr(MetricsLog, "log", kill_at_first_rollback_record(MetricsLog.log))
    with pytest.raises(Killed):
        train(cfg, tmp_path / "killed", data=bad_data(cfg, bad={20, 24}, kill_at=kill_at), log=quiet)
    train(cfg, tmp_path / "killed", resume=True, data=bad_data(cfg, bad={20, 24}), log=quiet)
    assert_same_run(tmp_path / "straight", tmp_path / "killed")
    assert guard_records(tmp_path / "killed") == guard_records(tmp_path / "straight")
    summary = json.loads((tmp_path / "killed/run_summary.json").read_text())
    assert len(summary["rollbacks"]) == 1


def test_epochs_set_the_steps_and_validate_at_each_epochs_end(tiny_data, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    cfg = tiny_run_config(tiny_data, max_steps=0, epochs=2.0, batch_size=32, micro_batch=16, eval_every=100)
    windows = PretrainData(cfg).loader.windows_per_epoch()
    assert long_run.run_steps(cfg, PretrainData(cfg)) == math.ceil(2 * windows / 32)
    half = tiny_run_config(tiny_data, max_steps=0, epochs=0.5, batch_size=32, micro_batch=16)
    assert long_run.run_steps(half, PretrainData(half)) == math.ceil(0.5 * windows / 32)
    lines_at = []
    real_axvline = Axes.axvline
    monkeypatch.setattr(Axes, "axvline", lambda ax, x, *a, **k: lines_at.append(x) or real_axvline(ax, x, *a, **k))
    summary = train(cfg, tmp_path / "run", log=quiet)
    per_epoch = windows // 32  # 224 windows: 7 steps an epoch
    assert summary["steps"] == 2 * per_epoch and summary["epochs"] == 2.0
    records = read_metrics(tmp_path / "run")
    vals = [(r["step"], r["epoch"]) for r in records if r["kind"] == "val"]
    assert vals == [(0, 0.0), (per_epoch, pytest.approx(per_epoch * 32 / windows)), (2 * per_epoch, summary["epochs"])]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [(r["step"], r["epoch"]) for r in epochs] == [(per_epoch, 1), (2 * per_epoch, 2)]
    assert lines_at == [r["tokens"] for r in epochs]  # loss.png marks where each epoch ended


def test_early_stopping_ends_a_run_whose_validation_loss_stopped_improving(tiny_data, tmp_path):
    # A learning rate too small to move the loss by early_stop_min_delta: a plateau from the start.
    cfg = tiny_run_config(tiny_data, max_steps=40, eval_every=2, checkpoints=0, lr=1e-7, early_stop_patience=2,
                          early_stop_min_delta=1e-3)
    lines = []
    summary = train(cfg, tmp_path / "run", log=lines.append)
    assert summary["steps"] == 6  # validations at 2 (the best), 4 and 6 (two without improvement)
    assert summary["stop_reason"].startswith("early stopping") and "best" in summary["stop_reason"]
    saved = json.loads((tmp_path / "run/run_summary.json").read_text())
    assert saved["stop_reason"] == summary["stop_reason"]
    assert json.loads((tmp_path / "run/checkpoints/last/state.json").read_text())["step"] == 6
    assert (tmp_path / "run/checkpoints/best/model.safetensors").is_file()
    assert any(line.startswith("stopped after step 6, early stopping") for line in lines)
    assert any("stopped before the end of the schedule: early stopping" in line for line in lines)


def test_time_limit_stops_in_time_to_save_and_the_run_resumes(tiny_data, tmp_path, monkeypatch, capsys):
    (tmp_path / "small.toml").write_text(small_toml(log_every=1))
    args = ["train", "--config", str(tmp_path / "small.toml"), "--data", str(tiny_data)]
    assert rain_main([*args, "--out", str(tmp_path / "straight")]) == 0
    clock = [0.0]  # a fake clock: each micro-batch takes 5 minutes, so a step 10, and validations and saves none
    monkeypatch.setattr(long_run, "now", lambda: clock[0])
    real_next = PretrainData.next_batch

    def slow_next(self):
        clock[0] += 300
        return real_next(self)

    monkeypatch.setattr(PretrainData, "next_batch", slow_next)
    assert rain_main([*args, "--out", str(tmp_path / "run"), "--time-limit", "0.5"]) == 0
    # After step 2 (20 minutes) another step, step 3's validation and a save would end at 30 minutes, with no margin
    # for a slower step: it stops after step 2.
    assert clock[0] <= 0.5 * 3600
    summary = json.loads((tmp_path / "run/run_summary.json").read_text())
    assert summary["steps"] == 2 and "time limit" in summary["stop_reason"]
    assert json.loads((tmp_path / "run/checkpoints/last/state.json").read_text())["step"] == 2
    assert "stopped for the time limit (0.5 h) after step 2" in capsys.readouterr().out
    assert rain_main([*args, "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert_same_run(tmp_path / "straight", tmp_path / "run")


def test_bad_long_run_settings_are_refused_in_one_line(capsys):
    from rain.config import load_config

    for override, words in (("train.on_divergence=ignore", "must be rollback or stop"),
                            ("train.spike_factor=0.5", "must be 0 (off) or above 1"),
                            ("train.rollback_lr_factor=2", "rollback_lr_factor = 2.0 must be in (0, 1]"),
                            ("train.epochs=-1", "train.epochs = -1.0 must be in [0, inf)")):
        with pytest.raises(RainError, match=re.escape(words)):
            load_config("tiny", [override])
    with pytest.raises(SystemExit):
        rain_main(["train", "--out", "x", "--time-limit", "0"])
    assert "--time-limit: 0 is outside (0, inf)" in capsys.readouterr().err
