"""Checkpoint storage policy (issue "The long run", item 1): step_N checkpoints hold weights only (bf16 on request,
or when training computes in bf16), `last` keeps everything a resume needs, `best` too by default; every command
that reads weights reads them; the run's checkpoint disk is projected up front (rain train --dry-run, a free-space
check before training) and reported at the end."""

import json
import re
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rain import checkpoint
from rain.cli import main
from rain.config import TrainConfig
from rain.train.trainer import build_model, checkpoint_disk_plan, format_summary, train, weights_only_dtype
from tests.conftest import tiny_run_config

STEP = "step_0000002"
RESUME_RECORDS = {"loader", "optimizer", "loss_window", "best_val"}


def quiet(*_):
    pass


def policy_config(data, **train):
    return tiny_run_config(data, **{"max_steps": 4, "eval_every": 2, "checkpoints": 2, "intermediate_dtype": "bf16",
                                    **train})


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory) -> tuple[Path, dict]:
    """step_0000002, step_0000004 (weights only, bf16), best and last (full); and the run's summary."""
    folder = tmp_path_factory.mktemp("policy") / "run"
    summary = train(policy_config(tiny_data), folder, log=quiet)
    return folder, summary


@pytest.fixture
def run_copy(run, tmp_path) -> Path:
    return Path(shutil.copytree(run[0], tmp_path / "run"))


def cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def one_line_error(argv, capsys) -> str:
    code, _, err = cli(argv, capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("rain: error:") and "Traceback" not in err, err
    return err


def state(folder: Path) -> dict:
    return json.loads((folder / "state.json").read_text())


def test_step_checkpoints_hold_bf16_weights_only_while_last_and_best_are_full(run):
    checkpoints = run[0] / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best", "last", "step_0000002", "step_0000004"]
    for name in ("step_0000002", "step_0000004"):
        folder = checkpoints / name
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "state.json",
                                                            "tokenizer.json"]
        assert {t.dtype for t in load_file(str(folder / "model.safetensors")).values()} == {torch.bfloat16}
        records = state(folder)
        assert records["weights_only"] is True and records["weights_dtype"] == "bfloat16"
        assert {"step", "tokens", "val_loss", "data_dir"} <= set(records) and not RESUME_RECORDS & set(records)
    for name in ("last", "best"):
        folder = checkpoints / name
        assert (folder / "optimizer.safetensors").is_file() and RESUME_RECORDS <= set(state(folder))
        assert {t.dtype for t in load_file(str(folder / "model.safetensors")).values()} == {torch.float32}
    # step_0000004 is last's weights (the same step), rounded to bf16
    last = load_file(str(checkpoints / "last/model.safetensors"))
    step4 = load_file(str(checkpoints / "step_0000004/model.safetensors"))
    assert all(torch.equal(last[k].to(torch.bfloat16), step4[k]) for k in last)
    assert checkpoint.newest_complete(run[0]).name == "last"


def test_weights_only_dtype_follows_the_training_precision_unless_set():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert weights_only_dtype(TrainConfig(), cpu) == torch.float32  # an fp32 run: eval matches its validation
    assert weights_only_dtype(TrainConfig(), cuda) == torch.bfloat16  # precision auto on a GPU trains in bf16
    assert weights_only_dtype(TrainConfig(precision="bf16"), cpu) == torch.bfloat16
    assert weights_only_dtype(TrainConfig(precision="bf16-master"), cpu) == torch.bfloat16
    assert weights_only_dtype(TrainConfig(precision="bf16", intermediate_dtype="fp32"), cpu) == torch.float32
    assert weights_only_dtype(TrainConfig(intermediate_dtype="bf16"), cpu) == torch.bfloat16


def bf16_weights_as_fp32(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}


def weights_only_step(run_dir: Path) -> Path:
    step = run_dir / "checkpoints" / STEP
    assert not (step / "optimizer.safetensors").exists() and state(step)["weights_only"], "not a weights-only step_N"
    return step


def test_eval_export_and_sample_read_a_weights_only_step(run, tmp_path, capsys):
    step = weights_only_step(run[0])
    code, _, err = cli(["eval", step, "--out", tmp_path / "eval"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "eval/results.jsonl").read_text().splitlines()]
    loss = next(r["value"] for r in rows if r["metric"] == "loss" and r["source"] == "all")
    assert loss == pytest.approx(state(step)["val_loss"], abs=0.02)  # the fp32 weights' loss, within bf16 rounding

    code, _, err = cli(["export", step, tmp_path / "hf"], capsys)
    assert code == 0, err
    exported = load_file(str(tmp_path / "hf/model.safetensors"))
    assert exported["model.embed_tokens.weight"].dtype == torch.float32  # read back into the model's dtype
    assert torch.equal(exported["model.embed_tokens.weight"], bf16_weights_as_fp32(step)["embed.weight"])

    code, out, err = cli(["sample", step, "--max-tokens", "2", "--prompt", "x"], capsys)
    assert code == 0 and out.startswith("--- 'x'"), err


def test_init_from_a_weights_only_step_starts_from_its_weights(run, tiny_data, tmp_path, capsys):
    step = weights_only_step(run[0])
    cfg = tiny_run_config(tiny_data, max_steps=2)
    model = build_model(cfg, torch.device("cpu"), step, tiny_data / "tokenizer.json")
    expected = bf16_weights_as_fp32(step)
    assert all(torch.equal(model.state_dict()[k], expected[k]) for k in expected)
    cfg.save(tmp_path / "config.json")
    code, _, err = cli(["train", "--config", tmp_path / "config.json", "--init-from", step, "--out", tmp_path / "child"],
                       capsys)
    assert code == 0, err
    assert state(tmp_path / "child/checkpoints/last")["init_from"] == str(step.resolve())


def test_resume_with_only_weights_only_checkpoints_left_is_one_line_and_deletes_nothing(run_copy, capsys):
    for name in ("last", "best"):
        shutil.rmtree(run_copy / "checkpoints" / name)
    before = sorted(p.name for p in (run_copy / "checkpoints").iterdir())
    err = one_line_error(["train", "--resume", "--out", run_copy], capsys)
    assert "weights only" in err and "step_0000002, step_0000004" in err, err
    assert f"--init-from {run_copy / 'checkpoints' / 'step_0000004'}" in err and "--overwrite" in err, err
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == before


def test_the_disk_projection_is_within_ten_percent_of_what_the_run_wrote(run, tiny_data):
    folder, summary = run
    written = sum(p.stat().st_size for p in (folder / "checkpoints").rglob("*") if p.is_file())
    assert summary["checkpoint_bytes"] == written
    plan = checkpoint_disk_plan(policy_config(tiny_data), torch.device("cpu"), tiny_data / "tokenizer.json")
    assert summary["checkpoint_bytes_projected"] == plan.total
    assert abs(plan.total - written) <= 0.1 * written, (plan.total, written)
    assert json.loads((folder / "run_summary.json").read_text())["checkpoint_bytes"] == written
    assert f"checkpoints {checkpoint.format_size(written)} on disk ({written:,} bytes)" in format_summary(summary)


def test_keep_full_all_keeps_the_optimizer_state_in_every_checkpoint_and_is_projected_too(tiny_data, tmp_path):
    cfg = policy_config(tiny_data, keep_full="all")
    summary = train(cfg, tmp_path / "run", log=quiet)
    step = tmp_path / "run" / "checkpoints" / STEP
    assert (step / "optimizer.safetensors").is_file() and "loader" in state(step)
    assert {t.dtype for t in load_file(str(step / "model.safetensors")).values()} == {torch.float32}  # exact
    written = summary["checkpoint_bytes"]
    assert abs(checkpoint_disk_plan(cfg, torch.device("cpu"), tiny_data / "tokenizer.json").total - written) <= 0.1 * written


FakeUsage = namedtuple("FakeUsage", "total used free")


def test_a_run_whose_checkpoints_do_not_fit_is_refused_up_front_unless_told_to_go_on(tiny_data, tmp_path, capsys,
                                                                                      monkeypatch):
    cfg = tiny_run_config(tiny_data, max_steps=2, eval_every=2, checkpoints=1)
    cfg.save(tmp_path / "config.json")
    plan = checkpoint_disk_plan(cfg, torch.device("cpu"), tiny_data / "tokenizer.json")
    seen = []

    def disk_usage(path):
        seen.append(Path(path))
        return FakeUsage(10**12, 10**12 - plan.peak + 1, plan.peak - 1)  # one byte short of the peak

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    out = tmp_path / "runs" / "run"
    err = one_line_error(["train", "--config", tmp_path / "config.json", "--out", out], capsys)
    assert f"need about {checkpoint.format_size(plan.peak)}" in err and "train.ignore_disk_check=true" in err, err
    assert seen == [tmp_path] and not (tmp_path / "runs").exists()  # the nearest existing folder; nothing written
    code, _, err = cli(["train", "--config", tmp_path / "config.json", "--out", out,
                        "--set", "train.ignore_disk_check=true"], capsys)
    assert code == 0, err
    assert (out / "checkpoints/last").is_dir()


def test_dry_run_of_rain_v2_projects_its_checkpoints_below_40_gb_without_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(["train", "--config", "rain-v2", "--dry-run"], capsys)
    assert code == 0, err
    assert "134,255,104 parameters" in out and "152,587 of 65,536 tokens" in out, out
    assert "100 step_N weights only (bf16" in out and "best and last with the optimizer state" in out, out
    projected = int(re.search(r"\(([\d,]+) bytes\) of checkpoints", out).group(1).replace(",", ""))
    assert 25e9 < projected < 40e9, out
    assert list(tmp_path.iterdir()) == []  # nothing written
    code, out, err = cli(["train", "--config", "rain-v2", "--dry-run", "--set", "train.keep_full=all"], capsys)
    assert code == 0 and int(re.search(r"\(([\d,]+) bytes\)", out).group(1).replace(",", "")) > 150e9, out


@pytest.mark.parametrize("argv, fragment", [
    (["--set", "train.keep_full=best"], "train.keep_full 'best' must be last, last,best or all"),
    (["--set", "train.intermediate_dtype=fp16"], "train.intermediate_dtype 'fp16' must be auto, bf16 or fp32"),
    (["--set", "train.ignore_disk_check=1"], "train.ignore_disk_check in --set train.ignore_disk_check=1: expected bool"),
    ([], "rain train needs --out RUN"),
])
def test_bad_policy_settings_are_one_line(argv, fragment, tmp_path, capsys):
    out = [] if not argv else ["--out", tmp_path / "run"]
    err = one_line_error(["train", "--config", "tiny", *out, *argv], capsys)
    assert fragment in err, err
    assert not (tmp_path / "run").exists()
