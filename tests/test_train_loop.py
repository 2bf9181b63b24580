"""The training loop as a user meets it: a line per log interval in a log file, a warning for a schedule that
cannot do what it says, and Ctrl-C / SIGTERM that stop at a step boundary and resume bit-exactly."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rain.train.batches import PretrainData
from rain.train.trainer import Trainer, train
from tests.conftest import assert_same_run, small_toml, tiny_run_config


def test_train_into_a_log_file_writes_a_line_per_log_interval(tiny_data, tmp_path):
    (tmp_path / "small.toml").write_text(small_toml())
    log = tmp_path / "log.txt"
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "rain.cli", "train", "--config", str(tmp_path / "small.toml"),
                               "--data", str(tiny_data), "--out", str(tmp_path / "run")],
                              stdout=out, stderr=subprocess.PIPE, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert done.returncode == 0, done.stderr
    lines = log.read_text().splitlines()
    steps = [line for line in lines if line.startswith("step ") and "| loss" in line]
    assert [s.split()[1] for s in steps] == ["2", "4", "6"], lines
    assert all(all(f in s for f in ("| lr ", "| grad norm ", "tok/s", "| eta ")) for s in steps)
    validations = [line for line in lines if line.startswith("step ") and "validation loss" in line]
    assert [v.split()[1] for v in validations] == ["0:", "3:", "6:"], lines


def test_a_warm_up_as_long_as_the_run_is_warned_about_in_one_line(tiny_data, tmp_path):
    lines = []
    Trainer(tiny_run_config(tiny_data, max_steps=8, warmup=30), tmp_path / "run", log=lines.append)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "train.warmup is 30 steps but the run has 8" in warnings[0]
    assert "--set train.warmup=" in warnings[0]
    quiet = []
    Trainer(tiny_run_config(tiny_data, max_steps=8, warmup=2), tmp_path / "ok", log=quiet.append)
    assert not [line for line in quiet if line.startswith("warning:")]


class SignalAt:
    """Training data that sends this process `sig` while the trainer reads its `call`-th micro-batch."""

    def __init__(self, data, call: int, sig: int):
        self.data, self.call, self.sig, self.calls = data, call, sig, 0

    def next_batch(self):
        self.calls += 1
        if self.calls == self.call:
            os.kill(os.getpid(), self.sig)
        return self.data.next_batch()

    def __getattr__(self, name):
        return getattr(self.data, name)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_step_stops_after_the_step_and_resumes_exactly(tiny_data, tmp_path, sig):
    cfg = tiny_run_config(tiny_data, max_steps=8, eval_every=4)  # 2 micro-batches a step
    train(cfg, tmp_path / "straight", log=lambda *_: None)
    lines = []
    with pytest.raises(KeyboardInterrupt):  # the CLI turns it into exit code 130
        train(cfg, tmp_path / "stopped", data=SignalAt(PretrainData(cfg), call=5, sig=sig), log=lines.append)
    assert any("stopped by" in line and "after step 3" in line for line in lines), lines
    train(tiny_run_config(tiny_data, max_steps=8, eval_every=4), tmp_path / "stopped", resume=True,
          log=lambda *_: None)
    assert_same_run(tmp_path / "straight", tmp_path / "stopped")


def test_the_demo_and_its_quick_size_have_sound_schedules():
    from rain.train.commands import demo_config
    from rain.train.trainer import schedule_warnings

    full, quick = demo_config(False, []), demo_config(True, [])
    assert full.total_steps() == 300 and quick.total_steps() == 100
    assert not schedule_warnings(full, 300) and not schedule_warnings(quick, 100)
    assert demo_config(True, ["train.max_steps=50"]).total_steps() == 50  # the user's --set still wins


def test_with_a_progress_bar_the_time_left_is_said_once(monkeypatch):
    from rain.train.trainer import LineLog

    class Bar:
        disable = False

        def write(self, text):
            said.append(text)

    said = []
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    lines = LineLog(said.append, Bar())
    entry = {"step": 10, "loss": 5.0, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 3500.0}
    lines.train(entry, eta=170.0)
    lines.train({**entry, "step": 20}, eta=160.0)
    assert said == ["step 10: 3,500 tokens/s, about 2m50s left at this pace"]


def test_a_second_trainer_on_the_same_folder_is_refused_until_the_first_ends(tiny_data, tmp_path):
    from rain.errors import RainError

    cfg = tiny_run_config(tiny_data, max_steps=2, eval_every=2)
    first = Trainer(cfg, tmp_path / "run", log=lambda *_: None)
    with pytest.raises(RainError, match=rf"in use by rain train \(pid {os.getpid()} on"):
        Trainer(cfg, tmp_path / "run", overwrite=True, log=lambda *_: None)
    assert (tmp_path / "run/config.json").exists() is False  # the refused one touched nothing
    first.fit()
    train(cfg, tmp_path / "run", overwrite=True, log=lambda *_: None)  # released when the first finished


def test_init_from_a_folder_that_the_output_would_replace_is_refused(tiny_data, tmp_path):
    from rain.errors import RainError

    cfg = tiny_run_config(tiny_data, max_steps=2, eval_every=2)
    train(cfg, tmp_path / "base", log=lambda *_: None)
    for out in (tmp_path / "base", tmp_path / "base" / "child", tmp_path):
        with pytest.raises(RainError, match="overlaps --init-from"):
            train(cfg, out, overwrite=True, init_from=tmp_path / "base", log=lambda *_: None)
    assert (tmp_path / "base/checkpoints/last/model.safetensors").is_file()
