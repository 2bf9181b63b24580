"""`rain eval` on a run folder: every checkpoint in token order, resumable, atomic results, trends, bad inputs."""

import json
import shutil
from pathlib import Path

import pytest

from rain import checkpoint
from rain.cli import main
from rain.errors import RainError
from rain.eval import runner
from rain.eval.plots import trend_table
from rain.train.trainer import train
from tests.conftest import SHARED_DATA, tiny_run_config

EVAL = SHARED_DATA / "eval"
TASKS = "arc_easy,hellaswag,piqa,winogrande"
MC_ROWS_PER_CHECKPOINT = 7  # acc + acc_norm for arc_easy, hellaswag, piqa; acc for winogrande


@pytest.fixture(scope="module")
def run_dir(tiny_data, tmp_path_factory) -> Path:
    """A run with checkpoints at steps 2 and 4 (plus last and best, which repeat them)."""
    cfg = tiny_run_config(tiny_data, max_steps=4, eval_every=2, checkpoints=2, batch_size=2, micro_batch=2)
    cfg.model.context = 256  # room for HellaSwag's longest endings with the 435-token test tokenizer
    run = tmp_path_factory.mktemp("eval") / "run"
    train(cfg, run, log=lambda *a: None)
    return run


def rain_eval(args, capsys) -> tuple[int, str, str]:
    code = main(["eval", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def one_line_error(result, fragment: str) -> None:
    code, _, err = result
    assert code == 2, err
    last = err.splitlines()[-1]  # the lines above it are progress ("step_0000002 (1,024 tokens): val")
    assert last.startswith("rain: error:") and "Traceback" not in err and err.count("rain: error:") == 1, err
    assert fragment in last, err


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_checkpoints_found_once_per_step_in_token_order(run_dir):
    found = checkpoint.find_all(run_dir)
    assert [c.name for c in found] == ["step_0000002", "step_0000004"]
    assert [c.tokens for c in found] == [2 * 256 * 2, 4 * 256 * 2]
    assert runner.default_eval_dir(run_dir / "checkpoints" / "last") == run_dir / "eval"


def test_validation_loss_per_source_matches_training(run_dir, tmp_path, capsys):
    code, out, err = rain_eval([run_dir, "--out", tmp_path], capsys)  # by default, the windows training scored
    assert code == 0, err
    assert (tmp_path / "trends.png").is_file() and (tmp_path / "trends.md").is_file()  # drawn by default
    rows = read_rows(tmp_path / "results.jsonl")
    assert {(r["checkpoint"], r["source"]) for r in rows} == {
        (c, s) for c in ("step_0000002", "step_0000004") for s in ("all", "math", "prose")}
    for name in ("step_0000002", "step_0000004"):
        state = json.loads((run_dir / "checkpoints" / name / "state.json").read_text())
        mine = {r["metric"]: r["value"] for r in rows if r["checkpoint"] == name and r["source"] == "all"}
        # The same windows as the trainer's own evaluation: the same loss, perplexity and bits per byte.
        assert mine == pytest.approx({k: state[f"val_{k}"] for k in ("loss", "ppl", "bpb")}, abs=1e-4)
        for source in ("math", "prose"):  # and each source's, from the same windows
            theirs = {r["metric"]: r["value"] for r in rows if r["checkpoint"] == name and r["source"] == source}
            assert theirs["loss"] == pytest.approx(state[f"val_loss/{source}"], abs=1e-4)
            assert theirs["bpb"] == pytest.approx(state[f"val_bpb/{source}"], abs=1e-4)
    assert all(r["value"] > 0 and r["items"] > 0 for r in rows)
    assert "val bpb (math)" in out
    # The trends start where training did: its step-0 validation, never written as a result row.
    start = next(json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"step": 0' in line)
    trends = (tmp_path / "trends.md").read_text()
    assert "start (0 tok)" in trends and f"| {start['val_ppl']:.4g} |" in trends
    assert all(r["checkpoint"] != "start" for r in rows)


@pytest.mark.shared_data
def test_benchmarks_resumable_then_new_shots_then_plot(run_dir, tmp_path, capsys):
    out_dir, results = tmp_path / "eval", tmp_path / "eval" / "results.jsonl"
    base = [run_dir, "--tasks", TASKS, "--limit", 10, "--eval-data", EVAL, "--batches", 1, "--out", out_dir, "--no-plot"]
    code, _, err = rain_eval([*base, "--shots", 5], capsys)
    assert code == 0, err
    rows = read_rows(results)
    mc = [r for r in rows if r["task"] != "val" and not r.get("category")]  # the per-category rows aside
    assert len(mc) == 2 * MC_ROWS_PER_CHECKPOINT
    assert len({(r["checkpoint"], r["task"], r["metric"]) for r in mc}) == len(mc)
    assert {(r["n_shot"], r["items"], r["limit"], r["evaluator"]) for r in mc} == {(5, 10, 10, "rain")}
    assert [r["tokens"] for r in rows] == sorted(r["tokens"] for r in rows)  # checkpoints in token order
    assert all(0 <= r["value"] <= 1 for r in mc)

    first = results.read_bytes()
    code, out, err = rain_eval([*base, "--shots", 5], capsys)
    assert code == 0 and "nothing new to evaluate" in err and "0 new result(s)" in out
    # The single checkpoint `last` is step 4, already evaluated: nothing new either.
    code, out, err = rain_eval([run_dir / "checkpoints" / "last", *base[1:], "--shots", 5], capsys)
    assert code == 0 and "0 new result(s)" in out
    assert results.read_bytes() == first

    code, _, err = rain_eval([*base, "--shots", "0,5"], capsys)
    assert code == 0, err
    assert results.read_bytes().startswith(first)
    added = [r for r in read_rows(results)[len(rows):] if not r.get("category")]
    assert len(added) == 2 * MC_ROWS_PER_CHECKPOINT and {r["n_shot"] for r in added} == {0}

    assert not (out_dir / "trends.png").exists()
    code, out, err = rain_eval([*base, "--shots", "0,5", "--plot"], capsys)
    assert code == 0 and "0 new result(s)" in out, err
    assert (out_dir / "trends.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out_dir / "trends.md").read_text()
    for label in ("hellaswag 0-shot acc_norm (limit 10)", "winogrande 5-shot acc (limit 10)", "val loss (all)"):
        assert label in table and label in out
    assert "| 0.25 |" in table and "| 0.50 |" in table  # random baselines


@pytest.mark.shared_data
def test_harness_scores_the_same_tasks_through_lm_eval(run_dir, tmp_path, capsys, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [run_dir / "checkpoints" / "step_0000004", "--tasks", "arc_easy", "--shots", 0, "--limit", 5,
            "--eval-data", EVAL, "--batches", 0, "--out", tmp_path, "--no-plot"]
    assert rain_eval(args, capsys)[0] == 0
    assert rain_eval([*args, "--harness"], capsys)[0] == 0
    rows = read_rows(tmp_path / "results.jsonl")
    native = {r["metric"]: r["value"] for r in rows if r["evaluator"] == "rain"}
    harness = {r["metric"]: r["value"] for r in rows if r["evaluator"] == "lm-eval"}
    assert native == harness and set(native) == {"acc", "acc_norm"}


def test_failed_evaluation_leaves_results_untouched(run_dir, tmp_path, capsys, monkeypatch):
    results = tmp_path / "results.jsonl"
    assert rain_eval([run_dir, "--batches", 1, "--out", tmp_path, "--no-plot"], capsys)[0] == 0
    before = results.read_bytes()
    calls = []
    real = runner.validation_rows

    def fail_on(n):
        def rows(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                raise RainError("simulated failure")
            return real(*args, **kwargs)
        return rows

    monkeypatch.setattr(runner, "validation_rows", fail_on(1))
    one_line_error(rain_eval([run_dir, "--batches", 2, "--out", tmp_path], capsys), "simulated failure")
    assert results.read_bytes() == before

    # A failure at the second checkpoint keeps the first one's complete results, and only those.
    calls.clear()
    monkeypatch.setattr(runner, "validation_rows", fail_on(2))
    one_line_error(rain_eval([run_dir, "--batches", 2, "--out", tmp_path], capsys), "step_0000004")
    added = read_rows(results)[len(before.splitlines()):]
    assert results.read_bytes().startswith(before)
    assert {r["checkpoint"] for r in added} == {"step_0000002"} and {r["limit"] for r in added} == {2}


def test_bad_inputs_give_one_line_errors(run_dir, tiny_data, tmp_path, capsys):
    quick = ["--batches", 1, "--out", tmp_path / "out"]
    one_line_error(rain_eval([run_dir, "--tasks", "arc_easy,nope", *quick], capsys), "unknown eval task 'nope'")
    one_line_error(rain_eval([run_dir, "--shots", "five", *quick], capsys), "--shots")
    one_line_error(rain_eval([run_dir, "--harness", *quick], capsys), "--tasks")
    one_line_error(rain_eval([run_dir, "--tasks", "piqa", "--eval-data", tmp_path / "nowhere", *quick], capsys),
                   "no such benchmark folder")

    bench = tmp_path / "bench"
    (bench / "piqa").mkdir(parents=True)
    one_line_error(rain_eval([run_dir, "--tasks", "piqa", "--eval-data", bench, *quick], capsys), "file not found")
    item = {"goal": "open a jar", "sol1": "twist the lid", "sol2": "shake it"}
    (bench / "piqa" / "valid.jsonl").write_text("\n".join(json.dumps(item) for _ in range(3)) + "\n")
    (bench / "piqa" / "valid-labels.lst").write_text("0\n1\n")
    one_line_error(rain_eval([run_dir, "--tasks", "piqa", "--eval-data", bench, *quick], capsys), "2 labels for 3 items")
    (bench / "arc").mkdir()
    (bench / "arc" / "ARC-Easy-test.jsonl").write_text('{"question": "q"}\nnot json\n')
    one_line_error(rain_eval([run_dir, "--tasks", "arc_easy", "--eval-data", bench, *quick], capsys), "not valid JSON")

    (tmp_path / "empty").mkdir()
    one_line_error(rain_eval([tmp_path / "empty", *quick], capsys), "no checkpoints here")
    (tmp_path / "fresh" / "checkpoints").mkdir(parents=True)
    one_line_error(rain_eval([tmp_path / "fresh", *quick], capsys), "no checkpoints yet")
    one_line_error(rain_eval([tmp_path / "missing", *quick], capsys), "no such checkpoint or run folder")

    # Validation data prepared with another tokenizer is refused.
    other_data = tmp_path / "other_data"
    shutil.copytree(tiny_data, other_data)
    tokenizer = json.loads((other_data / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"]["zzz-not-in-the-run"] = len(tokenizer["model"]["vocab"])
    (other_data / "tokenizer.json").write_text(json.dumps(tokenizer))
    one_line_error(rain_eval([run_dir, "--data", other_data, *quick], capsys), "another tokenizer")

    # Checkpoints of one run with different tokenizers are refused, before anything is evaluated.
    mixed = tmp_path / "mixed"
    shutil.copytree(run_dir / "checkpoints", mixed / "checkpoints")
    shutil.copyfile(other_data / "tokenizer.json", mixed / "checkpoints" / "step_0000002" / "tokenizer.json")
    one_line_error(rain_eval([mixed, *quick], capsys), "must share a tokenizer")
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_corrupt_results_file_is_reported_not_overwritten(run_dir, tmp_path, capsys):
    (tmp_path / "results.jsonl").write_text('{"task": "val"\n')
    one_line_error(rain_eval([run_dir, "--batches", 1, "--out", tmp_path], capsys), "results.jsonl:1")
    assert (tmp_path / "results.jsonl").read_text() == '{"task": "val"\n'


def test_lm_eval_rows_name_the_requested_group():
    results = {
        "results": {"lambada_openai": {"alias": "lambada_openai", "acc,none": 0.5, "acc_stderr,none": 0.1,
                                       "perplexity,none": 12.0, "perplexity_stderr,none": "N/A"},
                    "sub_a": {"acc,none": 0.25, "acc_stderr,none": 0.05}},
        "groups": {"grp": {"acc,none": 0.3, "acc_stderr,none": 0.04}},
        "group_subtasks": {"grp": ["sub_a"], "lambada_openai": []},
        "n-samples": {"lambada_openai": {"original": 5153, "effective": 10}},
    }
    rows = runner.lm_eval_rows(results, ["lambada_openai", "grp"])
    assert {(r["task"], r["metric"], r.get("group")) for r in rows} == {
        ("lambada_openai", "acc", None), ("lambada_openai", "perplexity", None), ("sub_a", "acc", "grp"),
        ("grp", "acc", None)}
    ppl = next(r for r in rows if r["metric"] == "perplexity")
    assert ppl["stderr"] is None and ppl["items"] == 10
    assert runner.Unit("grp", 0, None, "lm-eval").matches({**rows[-1], "n_shot": 0, "limit": None, "evaluator": "lm-eval"})


def test_trend_table_lists_series_by_checkpoint():
    row = {"checkpoint": "step_1", "step": 1, "tokens": 1000, "task": "piqa", "n_shot": 5, "metric": "acc",
           "value": 0.5, "stderr": 0.1, "limit": None, "evaluator": "rain"}
    table = trend_table([row, {**row, "checkpoint": "step_2", "step": 2, "tokens": 2_000_000, "value": 0.6}])
    assert "| piqa 5-shot acc | 0.50 | 0.500 ± 0.100 | 0.600 ± 0.100 |" in table
    assert "step_2 (2M tok)" in table


@pytest.mark.shared_data
def test_generative_tasks_run_through_rain_eval_and_humaneval_asks_first(run_dir, tmp_path, capsys):
    # the first GSM8K and HumanEval items, greedy to each task's stop strings (the tiny model's context caps them)
    args = [run_dir, "--eval-data", EVAL, "--shots", "0", "--limit", "2", "--batches", "0", "--no-plot"]
    one_line_error(rain_eval([*args, "--tasks", "humaneval", "--out", tmp_path / "refused"], capsys),
                   "--allow-code-execution")
    one_line_error(rain_eval([*args[:3], "--tasks", "humaneval", "--allow-code-execution"], capsys), "--shots 0")
    code, _, err = rain_eval([*args, "--tasks", "gsm8k,humaneval", "--allow-code-execution", "--out", tmp_path], capsys)
    assert code == 0, err
    rows = read_rows(tmp_path / "results.jsonl")
    got = {(r["checkpoint"], r["task"], r["metric"]): r["items"] for r in rows}
    for name in ("step_0000002", "step_0000004"):
        expected = {(name, "gsm8k", "exact_match,strict-match"): 2, (name, "gsm8k", "exact_match,flexible-extract"): 2,
                    (name, "humaneval", "pass@1"): 2}
        assert expected.items() <= got.items(), got
    assert all(r["value"] == 0.0 for r in rows)  # a 4-step model solves nothing; the scoring itself is tested elsewhere
    assert not (tmp_path / "refused" / "results.jsonl").exists()
