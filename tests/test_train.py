import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rain.config import load_config
from rain.data import builtin
from rain.data.prepare import prepare
from rain.errors import RainError
from rain.model import Transformer
from rain import checkpoint as ckpt
from rain.train.metrics import read_metrics
from rain.train.trainer import train
from tests.conftest import assert_same_run, tiny_run_config, train_losses


def quiet(*_):
    pass


def test_run_writes_records_and_checkpoints(tiny_data, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_run_config(tiny_data)
    cfg.train.gpu_price_per_hour = 2.5
    summary = train(cfg, run, log=quiet)
    assert summary["steps"] == 12 and summary["tokens_seen"] == 12 * 4 * 64
    assert summary["final_val_loss"] < summary["first_val_loss"]
    for name in ("config.json", "metrics.jsonl", "run_summary.json", "loss.png"):
        assert (run / name).is_file(), name
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["best", "last", "step_0000004", "step_0000008", "step_0000012"]
    last = run / "checkpoints" / "last"
    assert set(ckpt.FILES) <= {p.name for p in last.iterdir()}
    assert json.loads((last / "state.json").read_text())["step"] == 12
    records = read_metrics(run)
    train_records = [r for r in records if r["kind"] == "train"]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "flops_per_s"} <= set(train_records[0])
    assert [r["step"] for r in records if r["kind"] == "val"] == [0, 4, 8, 12]
    # the compute bill: FLOPs of the tokens seen, GPU-hours of the wall time, their cost; no MFU on a CPU
    bill = json.loads((run / "run_summary.json").read_text())["bill"]
    assert bill["training_flops"] == summary["flops_per_token"] * summary["tokens_seen"]
    assert bill["gpu_hours"] == pytest.approx(summary["wall_seconds"] / 3600, abs=1e-4)
    assert bill["cost"] == round(bill["gpu_hours"] * 2.5, 2) and "mean_mfu" not in bill and bill["gpu"] is None


def test_resume_is_bit_identical_to_an_uninterrupted_run(tiny_data, tmp_path):
    cfg = tiny_run_config(tiny_data, max_steps=10, log_every=1, eval_every=5, checkpoints=0)
    train(cfg, tmp_path / "straight", log=quiet)
    train(cfg, tmp_path / "broken", stop_after=3, log=quiet)
    assert max(s for s, _ in train_losses(tmp_path / "broken")) == 3
    train(cfg, tmp_path / "broken", resume=True, log=quiet)
    assert_same_run(tmp_path / "broken", tmp_path / "straight")


def test_resume_mid_log_window_logs_the_same_means(tiny_data, tmp_path):
    cfg = tiny_run_config(tiny_data, max_steps=8, log_every=4, eval_every=8, checkpoints=0)
    train(cfg, tmp_path / "straight", log=quiet)
    train(cfg, tmp_path / "broken", stop_after=2, log=quiet)
    train(cfg, tmp_path / "broken", resume=True, log=quiet)
    assert train_losses(tmp_path / "broken") == train_losses(tmp_path / "straight")


def test_crash_during_save_keeps_the_previous_checkpoint(tiny_data, tmp_path, monkeypatch):
    cfg = tiny_run_config(tiny_data, max_steps=4, eval_every=2, checkpoints=0)
    run = tmp_path / "run"
    train(cfg, run, stop_after=2, log=quiet)
    before = (run / "checkpoints/last/model.safetensors").read_bytes()

    real_replace = ckpt.os.replace

    def crash_on_swap(src, dst):
        if Path(src).name == ".tmp-last":  # after moving the old folder aside, before the new one is in place
            raise OSError("simulated power loss")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crash_on_swap)
    with pytest.raises(RainError, match="could not save .*power loss"):
        train(cfg, run, resume=True, log=quiet)
    monkeypatch.undo()
    survivor = ckpt.check_complete(run / "checkpoints" / "last")
    assert (survivor / "model.safetensors").read_bytes() == before
    assert json.loads((survivor / "state.json").read_text())["step"] == 2
    train(cfg, run, resume=True, log=quiet)  # and the run still resumes from it
    assert json.loads((run / "checkpoints/last/state.json").read_text())["step"] == 4


def test_crash_while_writing_files_leaves_no_partial_checkpoint(tiny_data, tmp_path, monkeypatch):
    cfg = tiny_run_config(tiny_data, max_steps=4, eval_every=2, checkpoints=0)
    run = tmp_path / "run"
    train(cfg, run, stop_after=2, log=quiet)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(RainError, match="could not save .*disk full.*continue with --resume"):  # one line
        train(cfg, run, resume=True, log=quiet)
    monkeypatch.undo()
    assert json.loads((run / "checkpoints/last/state.json").read_text())["step"] == 2
    assert not list((run / "checkpoints").glob(".tmp-*"))  # the failed save took no space


def test_new_run_into_existing_folder_refuses_and_keeps_checkpoints(tiny_data, tmp_path):
    cfg = tiny_run_config(tiny_data, max_steps=2, eval_every=2, checkpoints=0)
    run = tmp_path / "run"
    train(cfg, run, log=quiet)
    weights = (run / "checkpoints/last/model.safetensors").read_bytes()
    with pytest.raises(RainError, match="--resume .* or --overwrite"):
        train(cfg, run, log=quiet)
    assert (run / "checkpoints/last/model.safetensors").read_bytes() == weights
    with pytest.raises(RainError, match="nothing to resume"):
        train(cfg, tmp_path / "empty", resume=True, log=quiet)
    train(cfg, run, overwrite=True, log=quiet)


def test_resume_with_another_architecture_is_refused(tiny_data, tmp_path):
    cfg = tiny_run_config(tiny_data, max_steps=4, eval_every=2, checkpoints=0)
    train(cfg, tmp_path / "run", stop_after=2, log=quiet)
    other = tiny_run_config(tiny_data, max_steps=4, eval_every=2, checkpoints=0)
    other.model.d_model = 32
    with pytest.raises(RainError, match="model shape differs"):
        train(other, tmp_path / "run", resume=True, log=quiet)
    model = Transformer(other.model)
    with pytest.raises(RainError, match="do not fit this architecture"):
        ckpt.load_model_state(model, load_file(str(tmp_path / "run/checkpoints/last/model.safetensors")), "x")


def test_loss_falls_on_the_builtin_corpus(tmp_path):
    cfg = load_config("tiny", ["model.vocab_size=1024", "model.n_layer=2", "model.d_model=128", "model.d_ff=384",
                               "model.context=128", "train.max_steps=60", "train.eval_every=60", "train.warmup=6",
                               "train.checkpoints=0", "train.device='cpu'", "data.val_fraction=0.05"])
    prepare(cfg, tmp_path / "data", documents=lambda: builtin.documents(300_000, 100_000, 200))
    cfg.data.dir = str(tmp_path / "data")
    summary = train(cfg, tmp_path / "run", log=quiet)
    assert summary["final_val_loss"] < summary["first_val_loss"] - 1.0


@pytest.mark.parametrize("tracker", ["tensorboard", "trackio"])
def test_live_trackers_receive_the_metrics(tracker, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    cfg = tiny_run_config(tiny_data, max_steps=4, eval_every=2, checkpoints=0, tracker=tracker)
    train(cfg, tmp_path / "run", log=quiet)
    assert (tmp_path / "run" / "metrics.jsonl").is_file()  # always written, tracker or not
    where = tmp_path / "run" / "tensorboard" if tracker == "tensorboard" else tmp_path / "trackio"
    written = [p for p in where.rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert written, f"{tracker} wrote nothing under {where}"
