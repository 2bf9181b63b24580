"""Where `rain eval` finds benchmark files: --eval-data, $RAIN_EVAL_DATA, the user cache folder, the hub,
in that order, never a folder found relative to the working directory; and what it says when there are none."""

import json
import sys
import types
from pathlib import Path

import pytest

from rain.cli import main
from rain.errors import RainError
from rain.eval.commands import eval_data_dir
from rain.train.trainer import train
from tests.conftest import tiny_run_config

ARC_ITEMS = [
    {"id": f"q{i}", "question": f"Which number is {i}?",
     "choices": {"text": [str(i), str(i + 1)], "label": ["A", "B"]}, "answerKey": "A"}
    for i in range(2)
]


@pytest.fixture
def places(tmp_path, monkeypatch) -> dict[str, Path]:
    """A working directory with ../shared/data/eval beside it (the old hidden default), an empty user cache,
    no $RAIN_EVAL_DATA, and a hub that cannot be reached."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared" / "data" / "eval" / "arc").mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("RAIN_EVAL_DATA", raising=False)

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub (offline)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    return {"cache": tmp_path / "xdg" / "rain" / "eval", "flag": tmp_path / "flag", "env": tmp_path / "env"}


def arc_folder(root: Path) -> Path:
    (root / "arc").mkdir(parents=True)
    (root / "arc" / "ARC-Easy-test.jsonl").write_text("".join(json.dumps(d) + "\n" for d in ARC_ITEMS))
    return root


@pytest.fixture(scope="module")
def run_dir(tiny_data, tmp_path_factory) -> Path:
    cfg = tiny_run_config(tiny_data, max_steps=2, eval_every=2, checkpoints=1, batch_size=2, micro_batch=2)
    run = tmp_path_factory.mktemp("run") / "run"
    train(cfg, run, log=lambda *a: None)
    return run


def rain_eval(args, capsys) -> tuple[int, str]:
    code = main(["eval", *map(str, args), "--shots", "0", "--batches", "0", "--no-plot", "--device", "cpu"])
    return code, capsys.readouterr().err.strip()


def test_flag_then_env_then_cache_then_hub(places, monkeypatch):
    for folder in places.values():
        folder.mkdir(parents=True)
    monkeypatch.setenv("RAIN_EVAL_DATA", str(places["env"]))
    assert eval_data_dir(str(places["flag"])) == str(places["flag"])
    assert eval_data_dir(None) == str(places["env"])
    monkeypatch.setenv("RAIN_EVAL_DATA", "")  # set but empty: as if unset
    assert eval_data_dir(None) == str(places["cache"])
    places["cache"].rmdir()
    assert eval_data_dir(None) is None  # the hub, although ../shared/data/eval is beside the working directory


def test_cache_folder_defaults_to_home(places, monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / ".cache" / "rain" / "eval").mkdir(parents=True)
    assert eval_data_dir(None) == str(tmp_path / "home" / ".cache" / "rain" / "eval")


def test_env_var_naming_no_folder_is_an_error(places, monkeypatch):
    monkeypatch.setenv("RAIN_EVAL_DATA", str(places["env"]))
    with pytest.raises(RainError, match=r"\$RAIN_EVAL_DATA=.*env: no such benchmark folder"):
        eval_data_dir(None)


@pytest.mark.parametrize("where", ["env", "cache"])
def test_rain_eval_scores_benchmarks_from_env_or_cache_folder(where, places, monkeypatch, run_dir, tmp_path, capsys):
    arc_folder(places[where])
    if where == "env":
        monkeypatch.setenv("RAIN_EVAL_DATA", str(places["env"]))
    code, err = rain_eval([run_dir, "--tasks", "arc_easy", "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert {(r["task"], r["items"]) for r in rows} == {("arc_easy", len(ARC_ITEMS))}


def test_offline_with_no_benchmark_files_says_where_to_put_them(places, run_dir, tmp_path, capsys):
    code, err = rain_eval([run_dir, "--tasks", "arc_easy", "--out", tmp_path / "out"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("rain: error: arc_easy: cannot load allenai/ai2_arc from the Hugging Face hub"), err
    for named in ("--eval-data DIR", "$RAIN_EVAL_DATA", str(places["cache"]), "arc/ARC-Easy-test.jsonl",
                  "hellaswag/*.arrow", "piqa/valid.jsonl + valid-labels.lst", "winogrande/dev.jsonl"):
        assert named in err, (named, err)


def test_missing_benchmark_file_says_where_to_put_it(places, run_dir, tmp_path, capsys):
    (places["flag"] / "piqa").mkdir(parents=True)
    code, err = rain_eval([run_dir, "--tasks", "piqa", "--eval-data", places["flag"], "--out", tmp_path / "out"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{places['flag'] / 'piqa' / 'valid.jsonl'}: file not found" in err, err
    assert "--eval-data DIR" in err and "$RAIN_EVAL_DATA" in err and "piqa/valid.jsonl + valid-labels.lst" in err, err


def test_help_gives_the_order(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert ("--eval-data DIR, then $RAIN_EVAL_DATA, then $XDG_CACHE_HOME/rain/eval (default ~/.cache/rain/eval) "
            "if it exists, then the Hugging Face hub") in help_text
