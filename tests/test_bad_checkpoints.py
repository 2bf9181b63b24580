"""A checkpoint damaged on disk (a truncated or empty weights file, a garbled state.json, a config.json holding a
list) is one line naming the file and what to do in every command that reads it, never a traceback; `rain eval`
of a run skips a damaged checkpoint and scores the others; `rain export --overwrite` replaces only an earlier
export; checkpoint files all get the same permissions (issue "Nothing lost, nothing silent", items 1, 12, 15)."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from rain import checkpoint
from rain.cli import main
from rain.train.trainer import train
from tests.conftest import tiny_run_config


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def trained_run(tiny_data, tmp_path_factory) -> Path:
    """checkpoints/step_0000002, step_0000004, last (step 4) and best."""
    run = tmp_path_factory.mktemp("damaged") / "run"
    train(tiny_run_config(tiny_data, max_steps=4, eval_every=2, checkpoints=2), run, log=quiet)
    return run


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    """A copy of the trained run, this test's to damage."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def cli(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def one_line_error(argv, capsys) -> str:
    code, err = cli(argv, capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("rain: error:") and "Traceback" not in err, err
    return err


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated weights": ("model.safetensors", truncate),
    "empty weights": ("model.safetensors", lambda p: p.write_bytes(b"")),
    "truncated optimizer": ("optimizer.safetensors", truncate),
    "empty optimizer": ("optimizer.safetensors", lambda p: p.write_bytes(b"")),
    "garbled state": ("state.json", lambda p: p.write_bytes(b"\x00\xff{not json")),
    # A state.json with a step but none of the training records (`{}` has no step at all, so --resume does not
    # take that checkpoint for one to continue from; sample, eval and export read its weights, which are intact).
    "state without records": ("state.json", lambda p: p.write_text('{"step": 4}')),
    "config a list": ("config.json", lambda p: p.write_text("[1, 2, 3]")),
}
LAST = "RUN/checkpoints/last"
COMMANDS = {
    "sample": ["sample", LAST, "--max-tokens", "2", "--prompt", "x"],
    "eval": ["eval", LAST, "--out", "OUT"],
    "export": ["export", LAST, "OUT"],
}
# What each command reads: sample, eval and export need no optimizer state and read state.json only for records.
# (--resume passes over any damaged checkpoint: see the tests below.)
READ = {c: {"truncated weights", "empty weights", "garbled state", "config a list"} for c in ("sample", "eval", "export")}
CASES = [(command, damage) for command in COMMANDS for damage in DAMAGE if damage in READ[command]]


@pytest.mark.parametrize("command, damage", CASES)
def test_a_damaged_checkpoint_is_one_line_naming_the_file(command, damage, run, tmp_path, capsys):
    name, spoil = DAMAGE[damage]
    folder = run / "checkpoints" / "last"
    spoil(folder / name)
    argv = [str(run) if a == "RUN" else str(tmp_path / "out") if a == "OUT" else a.replace("RUN", str(run))
            for a in COMMANDS[command]]
    err = one_line_error(argv, capsys)
    assert f"{folder / name}:" in err and err.count(str(folder)) == 1, err  # the file, named once
    assert "pick another checkpoint" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_passes_over_a_damaged_last_and_mends_it(damage, run, capsys):
    name, spoil = DAMAGE[damage]
    spoil(run / "checkpoints" / "last" / name)
    code, err = cli(["train", "--resume", "--out", run], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    mended = checkpoint.read(run / "checkpoints" / "last")
    assert mended.step == 4 and checkpoint.newest_complete(run).name in ("last", "step_0000004")


def test_resume_with_every_checkpoint_damaged_is_one_line_and_deletes_nothing(run, capsys):
    for folder in (run / "checkpoints").iterdir():
        truncate(folder / "model.safetensors")
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    err = one_line_error(["train", "--resume", "--out", run], capsys)
    assert "no checkpoint can be resumed from" in err and "--overwrite" in err, err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_eval_of_a_run_skips_a_damaged_checkpoint_and_scores_the_others(run, tmp_path, capsys):
    truncate(run / "checkpoints/step_0000002/model.safetensors")
    code, err = cli(["eval", run, "--out", tmp_path], capsys)
    assert code == 0, err
    skipped = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 1 and skipped[0].startswith("skipped step_0000002: ") and "model.safetensors" in skipped[0]
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {r["checkpoint"] for r in rows} == {"step_0000004"} and {r["task"] for r in rows} == {"val"}


def test_eval_fails_when_no_checkpoint_can_be_read(run, tmp_path, capsys):
    for folder in (run / "checkpoints").iterdir():
        (folder / "state.json").write_text("[]")
    err = one_line_error(["eval", run, "--out", tmp_path], capsys)
    assert "none of its 4 checkpoints could be evaluated" in err and "state.json" in err, err
    assert not (tmp_path / "results.jsonl").exists()


def test_checkpoint_files_share_one_mode(run):
    umask = os.umask(0o022)
    os.umask(umask)
    for folder in (run / "checkpoints").iterdir():
        modes = {p.name: oct(os.stat(p).st_mode & 0o777) for p in folder.iterdir()}
        assert set(modes.values()) == {oct(0o666 & ~umask)}, (folder.name, modes)


def test_sample_on_a_missing_gpu_names_the_device_option(run, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = one_line_error(["sample", run, "--device", "cuda", "--prompt", "x"], capsys)
    assert "--device" in err and "train.device" not in err, err


# ----------------------------------------------------------------------------- export --overwrite


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_export_overwrite_never_replaces_the_source_a_run_or_other_files(run, tmp_path, capsys):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    second_run = Path(shutil.copytree(run, tmp_path / "second_run"))
    before = {f: listing(f) for f in (run, other, second_run)}
    for source, out, fragment in [
        (run, run, "is the source"),
        (run / "checkpoints/last", run, "contains the source"),
        (run, run / "checkpoints/export", "lies inside the source"),
        (run, second_run, "holds a rain run"),
        (run, second_run / "checkpoints/last", "holds a rain checkpoint"),
        (run, other, "todo.txt"),
    ]:
        err = one_line_error(["export", source, out, "--overwrite"], capsys)
        assert fragment in err and str(out) in err, err
    assert {f: listing(f) for f in before} == before
    assert (other / "todo.txt").read_text() == "mine"


def test_export_overwrite_replaces_an_earlier_export_but_not_a_model_another_tool_wrote(run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(["export", run, empty], capsys)[0] == 0  # an empty folder needs no --overwrite
    out = tmp_path / "export"
    assert cli(["export", run, out], capsys)[0] == 0
    (out / "README.md").write_text("edited")
    assert cli(["export", run, out, "--overwrite"], capsys)[0] == 0
    assert (out / "README.md").read_text() != "edited"
    assert len({oct(os.stat(p).st_mode & 0o777) for p in out.iterdir()}) == 1  # the weights like every other file
    # The same file names, written by transformers' save_pretrained: not rain's to delete.
    import transformers

    theirs = tmp_path / "theirs"
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1)
    transformers.LlamaForCausalLM(config).save_pretrained(theirs)
    capsys.readouterr()  # its progress bar
    before = {p.name: p.read_bytes() for p in theirs.iterdir()}
    err = one_line_error(["export", run, theirs, "--overwrite"], capsys)
    assert "without rain export's mark" in err, err
    assert {p.name: p.read_bytes() for p in theirs.iterdir()} == before
