"""`rain compare`: the paired statistics on constructed cases with known answers, per-item scores stored by
`rain eval` (and the per-category results beside them), and the comparison report of two real checkpoints."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from rain.cli import main
from rain.eval.compare import Z_POWER_80, Z_TWO_SIDED_95, compare_scores, mcnemar_exact, paired_bootstrap
from rain.train.trainer import train
from tests.conftest import SHARED_DATA, tiny_run_config

EVAL = SHARED_DATA / "eval"


# ----------------------------------------------------------------------------- statistics with known answers


def test_identical_scores_differ_by_nothing():
    a = np.random.default_rng(1).integers(0, 2, 300)
    diff, low, high, p = paired_bootstrap(a, a, resamples=2000)
    assert (diff, low, high, p) == (0.0, 0.0, 0.0, 1.0)
    c = compare_scores("t", "acc", list(a), list(a), [str(i) for i in range(300)], resamples=2000)
    assert c.p_mcnemar == 1.0 and c.only_a == c.only_b == [] and c.mde is None
    assert c.verdict() == "no difference: both are right on exactly the same items"


def test_mcnemar_exact_against_hand_computation():
    # 2 items right only in A, 8 only in B: p = 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * 56 / 1024.
    assert mcnemar_exact(2, 8) == mcnemar_exact(8, 2) == pytest.approx(112 / 1024, rel=1e-15)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 150) == pytest.approx(2.0**-149, rel=1e-12)  # every flip one way


def test_bootstrap_interval_matches_the_normal_approximation():
    # 1000 items: 100 right only in B, 50 only in A: B - A = 0.05 with paired sd of d known in closed form.
    a = np.array([0] * 100 + [1] * 50 + [1] * 400 + [0] * 450)
    b = np.array([1] * 100 + [0] * 50 + [1] * 400 + [0] * 450)
    diff, low, high, p = paired_bootstrap(a, b, resamples=10_000, seed=3)
    sd = math.sqrt((150 / 1000 - 0.05**2) * 1000 / 999)
    se = sd / math.sqrt(1000)
    assert diff == pytest.approx(0.05)
    assert low == pytest.approx(0.05 - 1.96 * se, abs=0.003) and high == pytest.approx(0.05 + 1.96 * se, abs=0.003)
    assert p < 1e-3  # z = 5 / 1.2 ≈ 4: far in the tail
    c = compare_scores("t", "acc", list(a), list(b), [str(i) for i in range(1000)], resamples=2000)
    assert c.mde == pytest.approx((Z_TWO_SIDED_95 + Z_POWER_80) * se)
    assert c.n_for_1_point == math.ceil(((Z_TWO_SIDED_95 + Z_POWER_80) * sd / 0.01) ** 2)
    assert c.verdict().startswith("B is 5.0 points higher")
    assert len(c.only_b) == 100 and c.only_b[0] == "0" and len(c.only_a) == 50


def test_a_small_difference_on_few_items_is_not_detectable():
    a = [1, 0] * 25
    b = [0, 1] * 3 + [1, 0] * 22  # 3 flips each way on 50 items: no difference to speak of
    c = compare_scores("t", "acc", a, b, [str(i) for i in range(50)], resamples=2000)
    assert c.diff == 0.0 and c.p_mcnemar == 1.0 and c.low < 0 < c.high
    assert c.verdict().startswith("no detectable difference at 50 items") and "1-point change needs about" in c.verdict()


# ----------------------------------------------------------------------------- end to end on two checkpoints


@pytest.fixture(scope="module")
def run_dir(tiny_data, tmp_path_factory) -> Path:
    cfg = tiny_run_config(tiny_data, max_steps=4, eval_every=2, checkpoints=2, batch_size=2, micro_batch=2)
    cfg.model.context = 256  # room for HellaSwag's endings
    run = tmp_path_factory.mktemp("compare") / "run"
    train(cfg, run, log=lambda *a: None)
    return run


def rain(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def one_line_error(result, fragment: str) -> None:
    code, _, err = result
    assert code == 2, err
    last = err.splitlines()[-1]
    assert last.startswith("rain: error:") and "Traceback" not in err and fragment in last, err


def _tables(md: str) -> list[str]:
    """The report's result rows (tables after the model list), which must not depend on where scores came from."""
    return [line for line in md.split("## Per task", 1)[1].splitlines() if line.startswith("|")]


@pytest.mark.shared_data
def test_compare_two_checkpoints_stored_or_scored_alike(run_dir, tmp_path, capsys):
    a, b = run_dir / "checkpoints" / "step_0000002", run_dir / "checkpoints" / "step_0000004"
    common = ["--tasks", "hellaswag", "--limit", 12, "--eval-data", EVAL]
    code, out, err = rain(["compare", a, b, *common, "--resamples", 500, "--min-category-items", 3,
                           "--out", tmp_path / "now"], capsys)
    assert code == 0, err
    assert "scoring hellaswag (0-shot) now" in err and "hellaswag: run/step_0000004 - run/step_0000002" in out
    now = (tmp_path / "now" / "compare.md").read_text()
    assert (tmp_path / "now" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| run/step_0000002 | run/step_0000004 | hellaswag | source=activitynet |" in now
    assert "## Items that flipped" in now and "scored now" in now

    # `rain eval` stores the per-item scores and the per-category results ...
    code, _, err = rain(["eval", run_dir, *common, "--shots", 0, "--batches", 0, "--no-plot"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (run_dir / "eval" / "items.jsonl").read_text().splitlines()]
    assert {(r["checkpoint"], r["task"], len(r["scores"]["acc"])) for r in records} == {
        (c, "hellaswag", 12) for c in ("step_0000002", "step_0000004")}
    rows = [json.loads(line) for line in (run_dir / "eval" / "results.jsonl").read_text().splitlines()]
    by_source = [r for r in rows if r.get("category", "").startswith("source=") and r["task"] == "hellaswag"
                 and r["checkpoint"] == "step_0000004" and r["metric"] == "acc"]
    overall = next(r for r in rows if r["task"] == "hellaswag" and not r.get("category")
                   and r["checkpoint"] == "step_0000004" and r["metric"] == "acc")
    assert sum(r["items"] for r in by_source) == 12
    assert sum(r["value"] * r["items"] for r in by_source) / 12 == pytest.approx(overall["value"])
    trends = (run_dir / "eval" / "trends.md").read_text()
    assert "## Per category: step_0000004" in trends and "| hellaswag 0-shot acc (limit 12) | source=" in trends

    # ... which compare then reuses, with the very same numbers as scoring them itself.
    code, _, err = rain(["compare", a, b, *common, "--resamples", 500, "--min-category-items", 3,
                         "--out", tmp_path / "stored", "--no-plot"], capsys)
    assert code == 0 and "scoring" not in err, err
    stored = (tmp_path / "stored" / "compare.md").read_text()
    assert "stored by rain eval" in stored and _tables(stored) == _tables(now)


@pytest.mark.shared_data
def test_compare_bad_inputs(run_dir, tiny_data, tmp_path, capsys):
    a, b = run_dir / "checkpoints" / "step_0000002", run_dir / "checkpoints" / "step_0000004"
    quick = ["--limit", 5, "--eval-data", EVAL, "--out", tmp_path / "out", "--no-plot"]
    one_line_error(rain(["compare", a, b, "--tasks", "arc_easy,nope", *quick], capsys),
                   "unknown eval task 'nope': choose from arc_easy")
    one_line_error(rain(["compare", a, "--tasks", "arc_easy", *quick], capsys), "at least two")

    bench = tmp_path / "bench" / "arc"
    bench.mkdir(parents=True)
    (bench / "ARC-Easy-test.jsonl").write_text(json.dumps({"id": "x", "choices": {"text": ["a"], "label": ["A"]},
                                                           "answerKey": "A"}) + "\n")
    one_line_error(rain(["compare", a, b, "--tasks", "arc_easy", *quick[:2], "--eval-data", bench.parent,
                         *quick[4:]], capsys), "ARC-Easy-test.jsonl: item 1 has no question field")

    # Another tokenizer: accuracy is still compared, perplexity is refused.
    other = tmp_path / "other"
    shutil.copytree(b, other)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"]["zzz-not-in-the-run"] = len(tokenizer["model"]["vocab"])
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    one_line_error(rain(["compare", a, other, "--tasks", "val", *quick], capsys), "perplexity and loss are per token")
    code, _, err = rain(["compare", a, other, "--tasks", "arc_easy", "--resamples", 200, *quick], capsys)
    assert code == 0 and "another tokenizer" in err and "accuracy is still comparable" in err, err
