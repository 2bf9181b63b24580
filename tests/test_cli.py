"""Every bad input exits non-zero with one clear line, and nothing earlier is overwritten."""

import json
import shutil
import subprocess
import sys

import pytest

from rain.cli import main
from rain.train.trainer import train
from tests.conftest import tiny_run_config

TINY = ["--set", "model.vocab_size=512", "--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.d_ff=64",
        "--set", "model.context=32", "--set", "train.max_steps=2", "--set", "train.eval_every=2", "--set", "train.batch_size=2",
        "--set", "train.micro_batch=2", "--set", "train.checkpoints=0", "--set", "train.device='cpu'"]


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


def one_line_error(code, err, fragment):
    assert code == 2
    assert err.startswith("rain: error:") and "\n" not in err and "Traceback" not in err
    assert fragment in err, err


@pytest.fixture(scope="module")
def run_dir(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    train(tiny_run_config(tiny_data, max_steps=2, eval_every=2, checkpoints=0), run, log=lambda *a: None)
    return run


def test_help_for_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "rain.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("prepare", "train", "sample", "eval", "demo"):
        assert command in out.stdout
        sub = subprocess.run([sys.executable, "-m", "rain.cli", command, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0 and "usage: rain " + command in sub.stdout


def test_missing_corpus_path(tmp_path, capsys):
    one_line_error(*run_cli(["prepare", "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "d")], capsys), "no such file or folder")


def test_empty_corpus(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("   \n")
    one_line_error(*run_cli(["prepare", "--data", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "d"), *TINY], capsys), "empty")


def test_prepare_refuses_to_overwrite(tiny_data, capsys):
    one_line_error(*run_cli(["prepare", "--out", str(tiny_data)], capsys), "--overwrite")


def test_config_with_unknown_key_or_wrong_type(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nn_layers = 4\n")
    one_line_error(*run_cli(["train", "--config", str(bad), "--out", str(tmp_path / "r")], capsys), "unknown key model.n_layers")
    bad.write_text("[train]\nmax_steps = 'many'\n")
    one_line_error(*run_cli(["train", "--config", str(bad), "--out", str(tmp_path / "r")], capsys), "expected int")


def test_train_without_prepared_data(tmp_path, capsys):
    one_line_error(*run_cli(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *TINY], capsys), "rain prepare")


def test_resume_with_nothing_to_resume(tiny_data, tmp_path, capsys):
    one_line_error(*run_cli(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--resume", *TINY], capsys), "nothing to resume")


def test_existing_run_is_not_overwritten(run_dir, tiny_data, capsys):
    before = (run_dir / "checkpoints/last/model.safetensors").read_bytes()
    one_line_error(*run_cli(["train", "--data", str(tiny_data), "--out", str(run_dir), *TINY], capsys), "--overwrite")
    assert (run_dir / "checkpoints/last/model.safetensors").read_bytes() == before


def test_incomplete_checkpoint(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(run_dir / "checkpoints/last", broken)
    (broken / "model.safetensors").unlink()
    one_line_error(*run_cli(["sample", str(broken)], capsys), "incomplete checkpoint")


def test_checkpoint_from_another_architecture(run_dir, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(run_dir / "checkpoints/last", other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model"]["d_model"] = 128
    (other / "config.json").write_text(json.dumps(cfg))
    one_line_error(*run_cli(["sample", str(other)], capsys), "do not fit this architecture")


def test_prompt_longer_than_context(run_dir, capsys):
    one_line_error(*run_cli(["sample", str(run_dir), "--prompt", "word " * 200], capsys), "shorten it")


def test_sample_and_eval_a_run(run_dir, capsys):
    assert main(["sample", str(run_dir), "--prompt", "alice has", "--max-tokens", "5", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert main(["sample", str(run_dir), "--prompt", "alice has", "--max-tokens", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first and "alice has" in first
    assert main(["eval", str(run_dir), "--batches", "2", "--no-plot"]) == 0
    rows = [json.loads(line) for line in (run_dir / "eval" / "results.jsonl").read_text().splitlines()]
    overall = {r["metric"]: r["value"] for r in rows if r["task"] == "val" and r["source"] == "all"}
    assert {r["step"] for r in rows} == {2} and overall["loss"] > 0 and overall["bpb"] > 0


def test_help_does_not_import_torch():
    # `rain --help` and every subcommand's --help answer at once: no stage pulls torch in to build the parser.
    code = "import sys, rain.cli; rain.cli.build_parser(); print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def sample_run(path, capsys, *extra):
    assert main(["sample", str(path), "--prompt", "alice has", "--max-tokens", "8", "--seed", "3", *extra]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_sample_reads_a_runs_best_checkpoint_as_its_help_says(run_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    last = run / "checkpoints/last/model.safetensors"  # training went on past the best evaluation and got worse
    save_file({k: v * 0.5 + 0.1 for k, v in load_file(str(last)).items()}, str(last))
    from_best, from_last = sample_run(run / "checkpoints/best", capsys), sample_run(run / "checkpoints/last", capsys)
    assert from_best[0] != from_last[0]
    out, err = sample_run(run, capsys)
    assert out == from_best[0] and f"sampling {run / 'checkpoints/best'}" in err
    assert "best checkpoint" in subprocess.run([sys.executable, "-m", "rain.cli", "sample", "--help"],
                                               capture_output=True, text=True).stdout
    shutil.rmtree(run / "checkpoints/best")  # stopped before its first evaluation: there is only `last`
    assert sample_run(run, capsys)[0] == from_last[0]


def test_train_can_start_from_a_saved_runs_config(run_dir, tiny_data, tmp_path, capsys):
    # --config takes a run's config.json as well as a preset: the new run repeats the old one's settings.
    new = tmp_path / "again"
    assert main(["train", "--config", str(run_dir / "config.json"), "--set", "train.max_steps=1",
                 "--data", str(tiny_data), "--out", str(new)]) == 0
    old_cfg, new_cfg = (json.loads((r / "config.json").read_text()) for r in (run_dir, new))
    assert new_cfg["train"].pop("max_steps") == 1 and old_cfg["train"].pop("max_steps") == 2
    assert new_cfg == old_cfg
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    one_line_error(*run_cli(["train", "--config", str(broken), "--out", str(tmp_path / "r")], capsys), "not valid JSON")
