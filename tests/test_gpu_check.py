"""benchmarks/gpu_check.py, the device check of a GPU session: its CPU mode (the same parts on tiny shapes, so the
script cannot rot between GPU sessions) and its budget."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from rain.train.benchmark import SyntheticTokens

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)  # registered first, for its dataclasses
spec.loader.exec_module(gpu_check)


@pytest.fixture(scope="module")
def cpu_check(tmp_path_factory):
    """One `gpu_check.py --cpu` run (six fresh processes, ~45 s of CPU), read back from its files."""
    out = tmp_path_factory.mktemp("gpu-check")
    code = gpu_check.main(["--cpu", "--out", str(out), "--budget", "900"])  # a slow machine must not skip parts
    return code, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text(), out


def test_cpu_mode_measures_every_part_and_writes_json_and_table(cpu_check):
    code, result, table, out = cpu_check
    parts = {r["part"]: r for r in result["parts"]}
    assert list(parts) == [p.name for p in gpu_check.plan(cpu=True)]
    for name, r in parts.items():
        assert r["status"] == "ok", (name, r.get("error"), r.get("tail"))
        assert r["wall_s"] > 0 and r["timeout_s"] > 0 and f"| {name} |" in table
    assert code == 0

    tests = parts["cuda-tests"]["tests"]  # no CUDA here: every CUDA test is skipped, and says so
    assert tests["total"] == tests["skipped"] > 0 and not tests["failed"]
    assert any("CUDA" in why for why in tests["skip_reasons"])

    for name in ("rain-v2", "gpt2-124m", "memory", "doc-mask", "muon"):
        for report in parts[name]["reports"].values():
            for kind in ("rain", "transformers"):
                if kind in report:
                    x = report[kind]
                    assert x["tokens_per_s"] > 0 and x["step_ms"] > 0 and x["split_ms"]["forward_backward"] > 0
                    assert f"{x['tokens_per_s']:,.0f}" in table
    assert parts["rain-v2"]["reports"]["rain-v2"]["transformers"]["model"] == "Qwen3ForCausalLM"
    assert parts["rain-v2"]["ratio"]["value"] > 0
    assert parts["memory"]["reports"]["checkpointed"]["checkpoint_layers"] == 2
    # The comparisons take their baseline from rain-v2's part (same arguments) instead of timing it again.
    for name, base, other, field in (("doc-mask", "off", "on", "doc_mask"), ("muon", "adamw", "muon", "optimizer")):
        reports = parts[name]["reports"]
        assert reports[base]["reused_from"] == "rain-v2" and "reused_from" not in reports[other]
        assert parts[name]["ratio"]["value"] > 0
    assert parts["muon"]["reports"]["muon"]["optimizer"] == "muon"
    assert parts["doc-mask"]["reports"]["on"]["doc_mask"] is True
    assert "rain bench --preset rain-v2" in table and "(the rain-v2 part's rain figures)" in table

    env = result["environment"]
    assert env["torch"] == torch.__version__ and env["cuda_available"] is False
    assert result["mode"] == "cpu" and result["wall_s"] > 0 and "cuda-tests" in (out / "gpu_check.log").read_text()


def fake_parts(*estimates):
    return [gpu_check.Part(f"p{i}", f"part {i}", tests="x", tests_estimate_s=e) for i, e in enumerate(estimates)]


def test_a_part_is_skipped_when_its_estimate_exceeds_the_budget_left_and_a_failing_part_does_not_stop_the_run():
    now, ran = [0.0], []

    def execute(part, timeout, records):
        ran.append((part.name, timeout))
        now[0] += {"p0": 30, "p2": 5, "p3": 5}[part.name]
        if part.name == "p2":
            raise RuntimeError("the compiler crashed")
        return {"status": "ok"}

    saved = []
    records = gpu_check.run_parts(fake_parts(10, 40, 20, 20), 60, execute, clock=lambda: now[0],
                                  done=lambda r: saved.append(len(r)))
    assert [r["status"] for r in records] == ["ok", "skipped", "failed", "ok"]
    assert records[1]["reason"] == "budget: 30 s left, the part needs ~40 s" and "wall_s" not in records[1]
    assert records[2]["error"] == "RuntimeError: the compiler crashed" and records[2]["wall_s"] == 5
    # Killed at 3x the estimate, or when the budget runs out, whichever comes first.
    assert ran == [("p0", 30), ("p2", 30), ("p3", 25)]
    assert saved == [1, 2, 3, 4]  # the files are rewritten after every part


def test_a_comparison_runs_its_own_baseline_when_the_part_it_reuses_did_not_measure():
    part = gpu_check.plan(cpu=True)[4]
    assert part.name == "doc-mask"
    measured = [{"part": "rain-v2", "status": "ok", "reports": {"rain-v2": {"rain": {"tokens_per_s": 1.0}}}}]
    assert [r.label for r in part.to_run(measured)] == ["on"]
    assert [r.label for r in part.to_run([{**measured[0], "status": "failed"}])] == ["off", "on"]
    assert part.estimate([]) == 2 * part.estimate(measured)


def test_a_failing_or_hanging_process_is_recorded_with_its_last_lines(tmp_path):
    log = tmp_path / "log.txt"
    executor = gpu_check.Executor({**gpu_check.os.environ, "PYTHONPATH": str(ROOT / "src")}, tmp_path, log)
    bad = gpu_check.Part("bad", "a user error", [gpu_check.Run("bad", ["--micro-batch", "two"], 20)])
    [rec] = gpu_check.run_parts([bad], 60, executor)
    assert rec["status"] == "failed" and rec["error"] == "bad: rain bench exited 2"
    assert "--micro-batch 'two'" in rec["tail"] and "--micro-batch 'two'" in log.read_text()
    code, last = executor.call([sys.executable, "-c", "import time; print('compiling', flush=True); time.sleep(60)"],
                               1, "hang")
    assert code is None and last == "compiling"


def test_synthetic_tokens_carry_documents_when_bench_masks_them():
    data = SyntheticTokens(512, 4, 64, doc_mask=True)
    doc = torch.cat([data.next_batch()[2] for _ in range(4)])
    steps = doc.diff(dim=1)
    assert doc.shape == (16, 64) and ((steps == 0) | (steps == 1)).all() and steps.sum() > 0
    assert SyntheticTokens(512, 4, 64).next_batch()[2] is None
