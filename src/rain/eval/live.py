"""Benchmarks during training (train.eval_tasks): multiple-choice tasks scored on the live model at an interval,
into metrics.jsonl as "eval" records ("eval/hellaswag/acc_norm": ...), so their curves grow while the run goes
(in trackio or TensorBoard as they are logged, in loss.png when the run ends).

The Trainer reaches this through rain.train.hooks (rain.train may not import rain.eval): register_benchmarks()
puts `benchmarks` there, which the Trainer calls with the run's config before anything else, so a bad task name
or missing benchmark files stop the run before it starts rather than at its first validation hours in.

Which items: a fixed sample of train.eval_limit items of each task (seeded, in the task's order), each with exactly
the prompt and few-shot examples `rain eval` gives it, scored at every point, so a curve's points are comparable.
A sample, not the first N items (`rain eval --limit`): those are one corner of some tasks (the first 200 of
HellaSwag's validation split are all ActivityNet items; two thirds of the split is WikiHow)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Callable

from rain.config import RunConfig
from rain.errors import RainError
from rain.eval.tasks import FEWSHOT_SEED, GENERATIVE_TASK_NAMES, TASK_NAMES, TaskRequests, build_requests, eval_data_hint
from rain.train import hooks

SUBSET_SEED = 0  # which items the sample holds; fixed, so every run with the same eval_limit scores the same items


def register_benchmarks() -> None:
    """Let every Trainer from now on run train.eval_tasks (the `rain` command does this as it loads the stages)."""
    hooks.register("benchmarks", benchmarks)


def benchmarks(cfg: RunConfig, log: Callable[[str], None] = print) -> "LiveBenchmarks | None":
    t = cfg.train
    if not t.eval_tasks:
        return None
    return LiveBenchmarks(t.eval_tasks, shots=t.eval_shots, limit=t.eval_limit, every_tokens=t.eval_every_tokens,
                          eval_data=t.eval_data or None)


def check_names(names: list[str]) -> list[str]:
    """The task names without repeats; a generative or unknown one is a one-line error listing the choices."""
    for name in names:
        if name in GENERATIVE_TASK_NAMES:
            raise RainError(f"train.eval_tasks: {name} is generated, too slow to score during training (run `rain "
                            f"eval --tasks {name}` on the checkpoints); during training choose from {', '.join(TASK_NAMES)}")
        if name not in TASK_NAMES:
            raise RainError(f"train.eval_tasks: unknown task {name!r}; choose from {', '.join(TASK_NAMES)}")
    return list(dict.fromkeys(names))


def benchmark_folder(eval_data: str | None) -> str | None:
    """train.eval_data, else where `rain eval` looks ($RAIN_EVAL_DATA, the user cache folder); None: the hub."""
    from rain.eval.commands import eval_data_dir

    if eval_data is not None and not Path(eval_data).is_dir():
        raise RainError(f"train.eval_data={eval_data}: no such benchmark folder; {eval_data_hint()}")
    return eval_data_dir(eval_data)


def fixed_sample(task: TaskRequests, limit: int, seed: int = SUBSET_SEED) -> TaskRequests:
    """`limit` of the task's items, drawn once with `seed`, in the task's order (0, or at least all: every item)."""
    n = len(task.items)
    if not limit or limit >= n:
        return task
    keep = sorted(random.Random(seed).sample(range(n), limit))
    return dataclasses.replace(task, items=[task.items[i] for i in keep])


class LiveBenchmarks:
    """The rain.train.hooks hook: due at each validation, or every `every_tokens` tokens (and at the first and
    last step); scores its fixed items on the model it is handed and returns the record and a log line."""

    def __init__(self, names: list[str], *, shots: int = 0, limit: int = 200, every_tokens: int = 0,
                 eval_data: str | None = None, seed: int = FEWSHOT_SEED):
        names = check_names(names)
        folder = benchmark_folder(eval_data)
        try:  # every item's prompt as `rain eval` builds it (few-shot draws consume the sampler in order), then the sample
            self.tasks = [fixed_sample(build_requests(name, shots, None, folder, seed), limit) for name in names]
        except RainError as exc:
            raise RainError(f"train.eval_tasks: {exc}; for training name the folder with --set train.eval_data=DIR") from None
        self.shots, self.every_tokens = shots, every_tokens
        self.tokenizer = None  # the run's, read at the first call

    def due(self, at: hooks.TrainingPoint) -> bool:
        if not self.every_tokens:
            return at.validated
        crossed = at.tokens // self.every_tokens > (at.tokens - at.tokens_per_step) // self.every_tokens
        return at.step == 0 or at.step == at.total_steps or crossed

    def __call__(self, model, at: hooks.TrainingPoint) -> tuple[dict, str]:
        from rain.data.tokenizer import Tokenizer
        from rain.eval.multiple_choice import score_tasks

        if self.tokenizer is None:
            if at.tokenizer_path is None:
                raise RainError("train.eval_tasks: the training data names no tokenizer.json to encode the benchmarks")
            self.tokenizer = Tokenizer.from_file(at.tokenizer_path)
        try:
            rows = score_tasks(model, self.tokenizer, self.tasks, at.batch_rows, show_progress=False)
        except RainError as exc:  # e.g. an item longer than the model's context: met at step 0, before training
            raise RainError(f"train.eval_tasks at step {at.step}: {exc}; leave that task out, or give the model a "
                            "longer model.context") from None
        record = {"kind": "eval", **{f"eval/{r['task']}/{r['metric']}": r["value"] for r in rows},
                  "eval_stderr": {f"{r['task']}/{r['metric']}": r["stderr"] for r in rows},
                  "eval_items": {t.name: len(t.items) for t in self.tasks}, "eval_shots": self.shots}
        return record, eval_line(at.step, rows, self.shots)


def eval_line(step: int, rows: list[dict], shots: int) -> str:
    """'step 40: hellaswag acc_norm 0.265, piqa acc_norm 0.550 (200 and 200 items, 0-shot)': each task's headline
    metric, acc_norm where it has one (lm-eval's usual headline for these tasks), else acc, else its first."""
    headline = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = {r["metric"]: r for r in rows if r["task"] == task}
        headline.append(mine.get("acc_norm") or mine.get("acc") or next(iter(mine.values())))
    scores = ", ".join(f"{r['task']} {r['metric']} {r['value']:.3f}" for r in headline)
    return f"step {step}: {scores} ({' and '.join(str(r['items']) for r in headline)} items, {shots}-shot)"
