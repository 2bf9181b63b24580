"""`rain eval --prompts --memorisation` on a run folder: reports written, rows recorded, nothing redone."""

import json

from rain.cli import main
from rain.train.trainer import train
from tests.conftest import tiny_run_config


def test_prompt_report_and_memorisation_audit_for_every_checkpoint(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_run_config(tiny_data, max_steps=4, eval_every=2, checkpoints=2), run, log=lambda *a: None)
    args = ["eval", str(run), "--batches", "0", "--prompts", "--memorisation", "--no-plot", "--device", "cpu"]
    assert main(args) == 0
    eval_dir = run / "eval"
    rows = [json.loads(line) for line in (eval_dir / "results.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == {2, 4}
    shares = [r for r in rows if r["metric"] == "share_verbatim_50"]
    assert len(shares) == 2 and all(0 <= r["value"] <= 1 for r in shares)
    assert {r["metric"] for r in rows if r["evaluator"] == "probes"} >= {
        "distinct_2", "longest_repeated_ngram", "prompt_adherence", "bias_valence_gap", "stereotype_preference",
        "stereotype_preference_full_sentence"}
    preference = [r for r in rows if r["metric"] == "stereotype_preference" and not r.get("category")]
    assert [r["items"] for r in preference] == [46, 46] and all(0 <= r["value"] <= 1 for r in preference)
    assert {r["category"] for r in rows if r["metric"] == "stereotype_preference" and r.get("category")} >= {"gender", "age"}
    report = (eval_dir / "prompts.md").read_text()
    assert "The quick brown fox" in report and report.index("step_0000002") < report.index("step_0000004")
    likelihood = report.split("### Likelihood pairs", 1)[1]
    assert "| step_0000002 |" in likelihood and "| step_0000004 |" in likelihood and "## Creative prompts" in report
    assert "| step_0000004 |" in (eval_dir / "memorisation.md").read_text()
    before = (eval_dir / "results.jsonl").read_bytes()
    capsys.readouterr()
    assert main(args) == 0  # everything is already evaluated: nothing new
    assert (eval_dir / "results.jsonl").read_bytes() == before
    assert "0 new result(s)" in capsys.readouterr().out
