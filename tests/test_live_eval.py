"""Benchmarks during training (train.eval_tasks): "eval" records in metrics.jsonl on their cadence, scored on a
fixed sample of items, a run that trains exactly as without them, and bad settings as one line before anything
starts."""

import copy
import json
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
from rain import checkpoint as ckpt
from rain.cli import main
from rain.config import load_config
from rain.eval.live import LiveBenchmarks, fixed_sample, register_benchmarks
from rain.eval.tasks import build_requests
from rain.train.hooks import IntervalHooks, TrainingPoint
from rain.train.metrics import benchmark_curves, read_metrics
from rain.train.trainer import train
from tests.conftest import assert_same_run, small_toml, tiny_run_config

QUIET = dict(log=lambda *a: None)


@pytest.fixture(scope="module")
def arc_folder(tmp_path_factory):
    """A benchmark folder holding a 12-question ARC-Easy test file in the real layout (arc/ARC-Easy-test.jsonl)."""
    folder = tmp_path_factory.mktemp("eval_data")
    (folder / "arc").mkdir()
    items = []
    for i in range(12):
        a, b = i + 2, 7 - i % 5
        answers = [str(a + b), str(a * b + 1), str(a + b + 3), "apples"]
        items.append({"id": f"toy_{i}", "question": f"What is {a} + {b}?",
                      "choices": {"text": answers, "label": list("ABCD")}, "answerKey": "ABCD"[i % 4]})
    (folder / "arc" / "ARC-Easy-test.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    return folder


def eval_records(run) -> list[dict]:
    return [r for r in read_metrics(run) if r["kind"] == "eval"]


def test_benchmarks_logged_at_each_validation_without_changing_training(tiny_data, arc_folder, tmp_path):
    register_benchmarks()  # what `rain train` gets from the CLI loading rain.eval's commands
    base = tiny_run_config(tiny_data, max_steps=3, eval_every=2, checkpoints=0, batch_size=2, micro_batch=2,
                           eval_batches=1)
    train(base, tmp_path / "plain", **QUIET)
    cfg = copy.deepcopy(base)
    cfg.train.eval_tasks, cfg.train.eval_data, cfg.train.eval_limit = ["arc_easy"], str(arc_folder), 8
    train(cfg, tmp_path / "bench", **QUIET)

    # Same losses, same validations, bit-identical final weights: scoring the live model changed nothing.
    assert_same_run(tmp_path / "plain", tmp_path / "bench")
    vals = [r for r in read_metrics(tmp_path / "plain") if r["kind"] == "val"]
    assert [r for r in read_metrics(tmp_path / "bench") if r["kind"] == "val"] == vals
    records = eval_records(tmp_path / "bench")
    per_step = base.tokens_per_step()
    assert [r["step"] for r in records] == [r["step"] for r in vals] == [0, 2, 3]  # by default, with each validation
    for r in records:
        assert r["tokens"] == r["step"] * per_step and r["eval_items"] == {"arc_easy": 8} and r["eval_shots"] == 0
        assert {k for k in r if k.startswith("eval/")} == {"eval/arc_easy/acc", "eval/arc_easy/acc_norm"}
        assert all(v * 8 == round(v * 8) for k, v in r.items() if k.startswith("eval/"))  # a share of 8 items

    # What the curve shows is what the scorer gives the saved final weights (a full fp32 checkpoint: exact).
    model, _ = ckpt.load_model(ckpt.find(tmp_path / "bench" / "checkpoints" / "last"), "cpu")
    hook = LiveBenchmarks(["arc_easy"], limit=8, eval_data=str(arc_folder))
    record, line = hook(model, TrainingPoint(3, 3 * per_step, per_step, 3, True, tiny_data / "tokenizer.json", 2))
    assert {k: v for k, v in record.items() if k.startswith("eval/")} == \
           {k: v for k, v in records[-1].items() if k.startswith("eval/")}
    assert line.startswith("step 3: arc_easy acc_norm ") and line.endswith("(8 items, 0-shot)")

    # loss.png's benchmark panel: one curve per task and metric, against tokens.
    curves = benchmark_curves(read_metrics(tmp_path / "bench"))
    assert list(curves) == ["arc_easy acc", "arc_easy acc_norm"]
    assert curves["arc_easy acc"][0] == [0, 2 * per_step, 3 * per_step]


def test_a_hook_cannot_change_the_run():
    """The seam's promise, whatever a hook does: gradients off while it runs; train mode and the RNG states after."""
    class Greedy:  # draws random numbers and leaves the model in eval mode
        def due(self, at):
            return at.step % 2 == 0

        def __call__(self, model, at):
            seen.append((model.training, torch.is_grad_enabled(), float(torch.rand(()))))
            model.eval()
            return {"kind": "probe", "x": 1.0}, f"step {at.step}: probed"

    seen, logged, lines = [], [], []
    model = torch.nn.Linear(2, 2).train()
    trainer = SimpleNamespace(model=model, device=torch.device("cpu"), autocast=nullcontext(), tokens_per_step=10,
                              total=4, data=SimpleNamespace(tokenizer_path=None), micro_batch=1,
                              lines=SimpleNamespace(log=lines.append))
    metrics = SimpleNamespace(log=logged.append)
    hooks = IntervalHooks([Greedy()])
    state = torch.get_rng_state()
    for step in range(4):
        hooks.run_due(trainer, step, metrics, validated=False)
    assert torch.equal(torch.get_rng_state(), state) and model.training
    assert [(training, grad) for training, grad, _ in seen] == [(False, False), (False, False)]
    assert seen[0][2] == seen[1][2]  # each call starts from the run's RNG state, untouched by the one before
    assert [(r["kind"], r["step"], r["tokens"], r["x"]) for r in logged] == [("probe", 0, 0, 1.0), ("probe", 2, 20, 1.0)]
    assert lines == ["step 0: probed", "step 2: probed"]


def test_every_tokens_cadence(arc_folder):
    hook = LiveBenchmarks(["arc_easy"], limit=4, every_tokens=1000, eval_data=str(arc_folder))
    due = [s for s in range(13) if hook.due(TrainingPoint(s, s * 300, 300, 12, s % 5 == 0, None, 2))]
    assert due == [0, 4, 7, 10, 12]  # past 1,000, 2,000, 3,000 tokens; the first and the last step; not validations
    at_validations = LiveBenchmarks(["arc_easy"], limit=4, eval_data=str(arc_folder))
    assert [s for s in range(13) if at_validations.due(TrainingPoint(s, s * 300, 300, 12, s % 5 == 0, None, 2))] == [0, 5, 10]


def test_the_sample_is_fixed_and_spread(arc_folder):
    task = build_requests("arc_easy", data_dir=arc_folder)
    first, again = fixed_sample(task, 5), fixed_sample(task, 5)
    indices = [item.index for item in first.items]
    assert indices == [item.index for item in again.items] == sorted(indices)
    assert indices != [0, 1, 2, 3, 4]  # a seeded sample of the task, not its first items
    assert fixed_sample(task, 0).items == task.items == fixed_sample(task, 50).items  # 0 or more than there are: all


@pytest.mark.parametrize("setting, fragment", [
    ('train.eval_tasks=["hellaswog"]', "train.eval_tasks: unknown task 'hellaswog'; choose from arc_easy, "),
    ('train.eval_tasks=["gsm8k"]', "train.eval_tasks: gsm8k is generated"),
    ("train.eval_data='{missing}'", "no such benchmark folder"),
    ('train.eval_tasks=["piqa"]', "piqa/valid.jsonl: file not found"),  # a folder without this task's files
])
def test_bad_benchmark_settings_stop_the_run_before_it_starts(setting, fragment, arc_folder, tmp_path, capsys):
    config = tmp_path / "small.toml"
    config.write_text(small_toml(eval_tasks=["arc_easy"], eval_data=str(arc_folder)))
    setting = setting.format(missing=tmp_path / "nowhere")
    code = main(["train", "--config", str(config), "--data", str(tmp_path / "unprepared"), "--out",
                 str(tmp_path / "run"), "--set", setting])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("rain: error:") and "\n" not in err, err
    assert fragment in err, err
    assert not (tmp_path / "run").exists()  # checked before the run folder, the data or the model


def test_settings_are_config_keys_with_ranges():
    cfg = load_config(None, ["train.max_steps=1", 'train.eval_tasks=["piqa", "arc_easy"]', "train.eval_limit=50",
                             "train.eval_every_tokens=1000000", "train.eval_shots=5"])
    assert (cfg.train.eval_tasks, cfg.train.eval_limit, cfg.train.eval_shots) == (["piqa", "arc_easy"], 50, 5)
    with pytest.raises(Exception, match="train.eval_limit = -1 must be in"):
        load_config(None, ["train.max_steps=1", "train.eval_limit=-1"])
