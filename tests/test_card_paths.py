"""An export is meant for the Hugging Face Hub: nothing in it may reveal the user's file system (the absolute
folders of the runs, the data or the home directory), while the model card still names each stage's parent run
and its data. `rain publish` refuses a rain checkpoint folder, whose state.json records those absolute paths."""

import json
import re
from pathlib import Path

import pytest

from rain.cli import main
from rain.data.prepare import prepare
from rain.train.trainer import train
from tests.conftest import synthetic_documents, tiny_run_config

# An absolute (or home-relative) path as a card or a JSON file would write it: after a space, quote, backtick or
# parenthesis, a `/` or `~/` followed by a name. ("RLHF/DPO" or "eval/results.jsonl" are not matched.)
ABSOLUTE_PATH = re.compile(r"""(?:^|[\s`'"(=])~?/[\w.-]""", re.MULTILINE)
CHAT = [[{"role": "user", "content": f"What is {a} + {b}?"}, {"role": "assistant", "content": f"{a + b}."}]
        for a in range(1, 7) for b in range(1, 5)]


def quiet(*_):
    pass


def cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err.strip()


@pytest.fixture
def lineage(tiny_data, tmp_path, capsys):
    """runs/base (pretrained on tiny_data) -> runs/cpt (on data/web-mix) -> runs/sft (on chat/arith.jsonl),
    with a benchmark result for the SFT model, all under tmp_path."""
    runs = tmp_path / "runs"
    train(tiny_run_config(tiny_data, max_steps=4, checkpoints=0), runs / "base", log=quiet)
    mix_cfg = tiny_run_config()
    mix_cfg.data.tokenizer = str(tiny_data / "tokenizer.json")
    prepare(mix_cfg, tmp_path / "data" / "web-mix", documents=lambda: iter(synthetic_documents(120, seed=1)), log=quiet)
    cpt_cfg = tiny_run_config(tmp_path / "data" / "web-mix", max_steps=4, checkpoints=0)
    train(cpt_cfg, runs / "cpt", init_from=runs / "base", log=quiet)
    chat = tmp_path / "chat" / "arith.jsonl"
    chat.parent.mkdir()
    chat.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CHAT))
    code, _, err = cli(["sft", runs / "cpt", "--data", chat, "--out", runs / "sft", "--steps", "2", "--batch", "2",
                        "--overflow", "truncate"], capsys)
    assert code == 0, err
    state = json.loads((runs / "sft/checkpoints/last/state.json").read_text())
    row = {"checkpoint": "last", "step": state["step"], "tokens": state["tokens"], "task": "arc_easy", "n_shot": 0,
           "metric": "acc", "value": 0.27, "stderr": 0.012, "items": 570}
    (runs / "sft/eval").mkdir()
    (runs / "sft/eval/results.jsonl").write_text(json.dumps(row) + "\n")
    return runs


def test_export_reveals_no_local_path_but_names_parents_and_data(lineage, tiny_data, tmp_path, capsys):
    export = tmp_path / "export"
    assert cli(["export", lineage / "sft", export], capsys)[0] == 0
    # the checkpoints keep their absolute lineage, so the card can find the parents
    assert str(tmp_path) in (lineage / "sft/checkpoints/last/state.json").read_text()
    local = {str(tmp_path), str(tmp_path.resolve()), str(tiny_data), str(tiny_data.resolve()), str(Path.home())}
    for path in export.iterdir():
        text = path.read_text(errors="replace")
        leaks = [folder for folder in local if folder in text]
        assert not leaks, f"{path.name} contains {leaks}"
        if path.suffix in (".md", ".json") and path.name != "tokenizer.json":  # (tokenizer.json holds the vocabulary)
            assert not ABSOLUTE_PATH.search(text), f"{path.name}: {ABSOLUTE_PATH.search(text).group()!r}"
    card = (export / "README.md").read_text()
    for fact in ("run `base`", "run `cpt`", "run `sft`", f"`{tiny_data.name}`", "`web-mix`", "`arith.jsonl`",
                 "| arc_easy | 0 | acc | 0.2700 |", "pretraining from scratch", "continued pretraining",
                 "supervised fine-tuning for chat"):
        assert fact in card, fact
    bill = json.loads((lineage / "base/run_summary.json").read_text())["bill"]
    assert f"Compute bill of the run: {bill['training_flops']:.3g} training FLOPs, {bill['gpu_hours']:.2f} GPU-hours" in card


def test_export_of_a_relative_checkpoint_folder_still_names_its_run(lineage, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(lineage / "cpt")
    assert cli(["export", ".", tmp_path / "cpt-export"], capsys)[0] == 0
    card = (tmp_path / "cpt-export/README.md").read_text()
    assert "run `cpt`" in card and "run `base`" in card and str(tmp_path) not in card


def test_publish_refuses_a_checkpoint_folder(lineage, capsys):
    code, out, err = cli(["publish", lineage / "sft/checkpoints/last", "--repo", "me/x", "--dry-run"], capsys)
    assert code == 2 and err.startswith("rain: error:") and "\n" not in err, err
    assert "rain export" in err and "state.json" not in out
