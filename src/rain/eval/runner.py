"""Evaluate every checkpoint of a run (or one checkpoint) into `eval/results.jsonl`, incrementally.

The work on a checkpoint is a list of units, one per (task, n_shot, limit, evaluator): validation loss, a
multiple-choice task at k shots, an lm-eval task, or a hook's report. A unit whose rows are already in
results.jsonl for that checkpoint (same step and tokens seen) is not run again, so a second invocation
evaluates only new checkpoints, tasks and shot counts. Every input is checked before the first model loads,
and a checkpoint's rows are appended only once all its units have finished, by rewriting the file
atomically: a failed evaluation leaves results.jsonl exactly as it was.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch

from rain import checkpoint as ckpt_io
from rain.checkpoint import Checkpoint
from rain.data.prepared import PreparedData
from rain.files import append_jsonl, read_jsonl_rows
from rain.train.metrics import read_metrics
from rain.data.tokenizer import Tokenizer
from rain.errors import RainError
from rain.eval.item_results import ITEMS_FILE, append_items, category_rows, item_record
from rain.eval.multiple_choice import score_tasks
from rain.eval.generative import evaluate_generative
from rain.eval.sandbox import require_code_execution
from rain.eval.tasks import FEWSHOT_SEED, GENERATIVE_TASK_NAMES, TaskData, build_requests, get_task, load_task
from rain.runtime import autocast_for, pick_device
from rain.train.batches import validation_batches
from rain.train.validation import source_losses, validation_report

RESULTS_FILE = "results.jsonl"
ROW_FIELDS = ("checkpoint", "step", "tokens", "task", "n_shot", "metric", "value", "stderr", "items", "limit",
              "evaluator", "fewshot_source", "source")


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- checkpoints


def owns(ckpt: Checkpoint, row: dict) -> bool:
    """A results row of this checkpoint: the same step and tokens seen (or, with no step, the same name)."""
    if ckpt.step is None:
        return row.get("step") is None and row.get("checkpoint") == ckpt.name
    return row.get("step") == ckpt.step and row.get("tokens") == ckpt.tokens


def default_eval_dir(path: str | Path) -> Path:
    """RUN/eval for a run folder or a checkpoint inside one, else CHECKPOINT/eval."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        return path / "eval"
    folder = ckpt_io.resolve(path)
    return folder.parent.parent / "eval" if folder.parent.name == "checkpoints" else folder / "eval"


def check_tokenizers(checkpoints: Sequence[Checkpoint]) -> None:
    first = checkpoints[0].folder / "tokenizer.json"
    for c in checkpoints[1:]:
        if not ckpt_io.same_tokenizer(first, c.folder / "tokenizer.json"):
            raise RainError(f"{c.folder}/tokenizer.json differs from {first}: the checkpoints of one run must share "
                            "a tokenizer; evaluate them separately with --out")


# ----------------------------------------------------------------------------- results file


@dataclass(frozen=True)
class Unit:
    """One resumable piece of work on a checkpoint; its rows carry these four fields."""

    task: str
    n_shot: int | None = None
    limit: float | None = None  # items per task (a fraction below 1); for "val", batches per source
    evaluator: str = "rain"  # rain | lm-eval | a hook's name

    def matches(self, row: dict) -> bool:
        # lm-eval groups report their subtasks under their own names; those rows carry the group's.
        return ((row.get("group") or row.get("task")), row.get("n_shot"), row.get("limit"), row.get("evaluator")) == (
            self.task, self.n_shot, self.limit, self.evaluator)

    def describe(self) -> str:
        shots = f" {self.n_shot}-shot" if self.n_shot is not None else ""
        return f"{self.task}{shots}" + (f" [{self.evaluator}]" if self.evaluator != "rain" else "")


def read_results(path: Path) -> list[dict]:
    return read_jsonl_rows(path, ("task", "metric", "value"), "a result row")


def append_results(path: Path, rows: list[dict]) -> None:
    append_jsonl(path, rows)


def make_row(ckpt: Checkpoint, unit: Unit, row: dict) -> dict:
    out = {"checkpoint": ckpt.name, "step": ckpt.step, "tokens": ckpt.tokens, "task": row.get("task", unit.task),
           "n_shot": unit.n_shot, "metric": row["metric"], "value": row["value"], "stderr": row.get("stderr"),
           "items": row.get("items"), "limit": unit.limit, "evaluator": unit.evaluator,
           "fewshot_source": row.get("fewshot_source"), "source": row.get("source")}
    return {**out, **{k: v for k, v in row.items() if k not in ROW_FIELDS}}


# ----------------------------------------------------------------------------- validation loss per source


class ValidationSet:
    """The held-out split of a prepared data folder, scored on the windows training scores."""

    def __init__(self, data_dir: str | Path):
        self.data = PreparedData(data_dir)
        self.dir = self.data.dir
        self.stream = self.data.stream("val", sources=True)

    def check_tokenizer(self, tokenizer_json: Path, tokenizer: Tokenizer, vocab_size: int) -> None:
        ours = self.data.tokenizer_path
        if ours.is_file():
            same = ckpt_io.same_tokenizer(ours, tokenizer_json)
        else:
            same = self.data.manifest["eot_id"] == tokenizer.eot_id and self.data.manifest["vocab_size"] <= vocab_size
        if not same:
            raise RainError(f"{self.dir} was prepared with another tokenizer than {tokenizer_json.parent}: pass "
                            "--data with data prepared with the run's tokenizer, or --batches 0 to skip validation loss")

    def sources(self) -> list[str]:
        return self.data.source_names if self.stream.doc_sources is not None else []

    def counts(self) -> dict[str | None, tuple[int, int]]:
        return {None: self.data.counts("val"), **{n: self.data.counts("val", n) for n in self.sources()}}


def validation_rows(model, cfg, val: ValidationSet, batches: int | None, eot_id: int) -> list[dict]:
    """loss, ppl and bpb over the whole split and per source, as rows for results.jsonl: scored on exactly the
    windows training validates on (rain.train.batches.validation_batches: train.eval_batches x train.micro_batch
    windows spread over the split), so with the default `batches` the numbers are training's."""
    t = cfg.train
    n_windows = (batches or t.eval_batches) * t.micro_batch
    device = next(model.parameters()).device
    try:
        windows = validation_batches(val.stream, cfg.model.context, n_windows, t.micro_batch,
                                     eot_id if t.doc_mask else None)
        report = validation_report(source_losses(model, windows, device), val.sources(), val.counts())
    except ValueError as exc:
        raise RainError(f"{val.dir}: {exc}; pass --data with a larger validation split, or --batches 0") from None
    rows = []
    for source in ["all"] + val.sources():
        suffix = "" if source == "all" else f"/{source}"
        if f"val_loss{suffix}" not in report:
            continue
        loss = report[f"val_loss{suffix}"]
        ppl = report["val_ppl"] if source == "all" else round(math.exp(min(loss, 50)), 3)
        values = {"loss": loss, "ppl": ppl, "bpb": report.get(f"val_bpb{suffix}")}
        for metric, value in values.items():
            if value is not None:
                rows.append({"task": "val", "metric": metric, "value": value, "source": source,
                             "items": report[f"val_tokens{suffix}"]})
    return rows


def training_start_rows(path: str | Path, rows: list[dict]) -> list[dict]:
    """The validation that training recorded at step 0 (RUN/metrics.jsonl: the untrained model, scored on the
    windows `rain eval` scores by default) as result rows, so a run's trends start where training did. Only for a
    run folder whose rows hold validation loss and no step 0 of their own; never written to results.jsonl."""
    run = Path(path)
    if any(r.get("step") == 0 for r in rows) or not any(r.get("task") == "val" for r in rows):
        return []
    start = next((r for r in read_metrics(run) if r.get("kind") == "val" and r.get("step") == 0), None)
    out = []
    for key, value in (start or {}).items():
        metric, _, source = key.partition("/")
        if metric in ("val_loss", "val_ppl", "val_bpb"):
            out.append({"checkpoint": "start", "step": 0, "tokens": 0, "task": "val", "n_shot": None,
                        "metric": metric.removeprefix("val_"), "value": value, "source": source or "all",
                        "evaluator": "training"})
    return out


# ----------------------------------------------------------------------------- the plan


class CheckpointHook(Protocol):
    """Extra per-checkpoint work run after the benchmarks, e.g. the prompt report (rain.eval.probes) or the
    memorisation audit (rain.eval.memorisation). `unit` makes it resumable like a task; the call returns its
    result rows (at least metric and value; the runner adds checkpoint, tokens and the unit's fields) and may
    write its own files into eval_dir. Raising RainError fails the checkpoint and nothing of it is written.
    The unit's evaluator names the hook (e.g. Unit("prompts", evaluator="probes")), never "rain" or "lm-eval"."""

    unit: Unit

    def __call__(self, ckpt: Checkpoint, model, tokenizer: Tokenizer, eval_dir: Path) -> list[dict]: ...


@dataclass
class EvalPlan:
    tasks: list[str] = field(default_factory=list)  # rain's multiple-choice tasks (rain.eval.tasks)
    shots: list[int] = field(default_factory=lambda: [0, 5])
    limit: float | None = None
    harness: bool = False  # run `tasks` through lm-eval instead of rain's scorer
    harness_tasks: list[str] = field(default_factory=list)  # any lm-eval task names, run through lm-eval
    val_batches: int | None = None  # validation windows in micro-batches (None: the run's train.eval_batches; 0: none)
    val_data: str | None = None  # prepared data folder; default: the one each checkpoint was trained on
    eval_data: str | Path | None = None  # benchmark files (layout of shared/data/eval); None: the HF hub
    batch_size: int = 32
    seed: int = FEWSHOT_SEED
    allow_code_execution: bool = False  # humaneval runs the model's completions (rain.eval.sandbox)

    def check(self) -> None:
        for name in self.tasks:
            if name not in GENERATIVE_TASK_NAMES:
                get_task(name)
            elif self.harness or self.eval_data is None:
                raise RainError(f"{name} is generated and scored by rain from local files: pass --eval-data DIR "
                                "(gsm8k/test.jsonl + train.jsonl, humaneval/HumanEval.jsonl.gz), without --harness")
        if "humaneval" in self.tasks:
            if any(k > 0 for k in self.shots):
                raise RainError("humaneval is 0-shot (lm-eval's num_fewshot: 0): pass --shots 0")
            require_code_execution(self.allow_code_execution)  # refused, or warned, before any model loads
        if any(k < 0 for k in self.shots):
            raise RainError(f"--shots must be >= 0, got {min(self.shots)}")
        if self.limit is not None and self.limit <= 0:
            raise RainError(f"--limit must be positive, got {self.limit}")
        if self.val_batches is not None and self.val_batches < 0:
            raise RainError(f"--batches must be >= 0, got {self.val_batches}")
        if self.eval_data is not None and not Path(self.eval_data).is_dir():
            raise RainError(f"{self.eval_data}: no such benchmark folder (--eval-data; layout of shared/data/eval)")

    def units(self) -> list[Unit]:
        out = [Unit("val", None, self.val_batches)] if self.val_batches != 0 else []
        evaluator = "lm-eval" if self.harness else "rain"
        out += [Unit(t, k, self.limit, "rain" if t in GENERATIVE_TASK_NAMES else evaluator)
                for k in self.shots for t in self.tasks]
        out += [Unit(t, k, self.limit, "lm-eval") for k in self.shots for t in self.harness_tasks]
        return out


class Inputs:
    """Everything the pending units read, loaded and checked before any model: benchmark files, few-shot
    requests (built once, shared by every checkpoint), validation data, lm-eval task names."""

    def __init__(self, plan: EvalPlan, todo: list[tuple[Checkpoint, list[Unit]]], log: Callable[[str], None]):
        self.plan = plan
        units = {u for _, us in todo for u in us}
        pool_needed: dict[str, bool] = {}
        for u in units:
            if u.evaluator in ("rain", "lm-eval") and u.task in plan.tasks and u.task not in GENERATIVE_TASK_NAMES:
                pool_needed[u.task] = pool_needed.get(u.task, False) or u.n_shot > 0
        data: dict[str, TaskData] = {t: load_task(t, plan.eval_data, need_pool=p) for t, p in pool_needed.items()}
        self.requests = {(u.task, u.n_shot): build_requests(u.task, u.n_shot, plan.limit, plan.eval_data, plan.seed,
                                                            data=data[u.task])
                         for u in units if u.evaluator == "rain" and u.task in pool_needed}
        self.task_manager = _lm_eval_task_manager(plan.harness_tasks) if any(
            u.evaluator == "lm-eval" and u.task in plan.harness_tasks for u in units) else None
        self.val: dict[Path, ValidationSet | None] = {}
        for ckpt, us in todo:
            if any(u.task == "val" and u.evaluator == "rain" for u in us):
                self.val_for(ckpt, log)

    def val_for(self, ckpt: Checkpoint, log: Callable[[str], None]) -> ValidationSet | None:
        explicit = self.plan.val_data is not None
        data_dir = self.plan.val_data or ckpt.data_dir or ckpt.config.data.dir
        if not data_dir or (not explicit and not (Path(data_dir) / "manifest.json").is_file()):
            if ckpt.folder not in self.val:
                log(f"{ckpt.name}: skipping validation loss: its training data {data_dir or '(unknown)'} is not "
                    "here; pass --data DIR (from `rain prepare`)")
            self.val[ckpt.folder] = None
            return None
        if ckpt.folder not in self.val:
            cached = {v.dir: v for v in self.val.values() if v is not None}
            val = cached.get(Path(data_dir)) or ValidationSet(data_dir)
            tokenizer_json = ckpt.folder / "tokenizer.json"
            val.check_tokenizer(tokenizer_json, ckpt_io.tokenizer(ckpt), ckpt.config.model.vocab_size)
            self.val[ckpt.folder] = val
        return self.val[ckpt.folder]


# ----------------------------------------------------------------------------- lm-eval tasks


def _lm_eval_task_manager(names: Sequence[str]):
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise RainError("--harness-tasks needs lm-eval: pip install 'rain[eval]'") from None
    manager = TaskManager()  # indexes lm-eval's task yamls (some seconds)
    known = set(manager.all_tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RainError(f"unknown lm-eval task {unknown[0]!r} (`lm-eval ls tasks` lists them)")
    return manager


def lm_eval_rows(results: dict, requested: Sequence[str]) -> list[dict]:
    """lm_eval.simple_evaluate's output -> rows: one per task, group or group member and metric (named
    "metric" for lm-eval's "none" filter, else "metric,filter"); a member's rows name its requested group."""
    subtasks = results.get("group_subtasks", {})

    def requested_owner(task: str) -> str | None:
        for name in requested:
            stack = list(subtasks.get(name, []))
            while stack:
                member = stack.pop()
                if member == task:
                    return name
                stack += subtasks.get(member, [])
        return None

    rows = []
    for task, metrics in {**results["results"], **results.get("groups", {})}.items():
        group = None if task in requested else requested_owner(task)
        if task not in requested and group is None:
            continue
        items = results.get("n-samples", {}).get(task, {}).get("effective")
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name, filt = key.split(",", 1)
            stderr = metrics.get(f"{name}_stderr,{filt}")
            row = {"task": task, "metric": name if filt == "none" else key, "value": float(value),
                   "stderr": float(stderr) if isinstance(stderr, (int, float)) else None, "items": items}
            if group is not None:
                row["group"] = group
            rows.append(row)
    return rows


def _run_lm_eval(model, tokenizer, names: list[str], shots: int, plan: EvalPlan, manager) -> list[dict]:
    import lm_eval

    from rain.eval.harness import RainLM

    try:
        res = lm_eval.simple_evaluate(model=RainLM(model, tokenizer, batch_size=plan.batch_size), tasks=names,
                                      num_fewshot=shots, limit=plan.limit, task_manager=manager,
                                      fewshot_random_seed=plan.seed)
    except (ConnectionError, OSError, ValueError) as exc:  # offline hub, missing datasets, bad task configs
        msg = " ".join(str(exc).split())[:200]
        raise RainError(f"lm-eval could not run {', '.join(names)} ({type(exc).__name__}: {msg})") from None
    return lm_eval_rows(res, names)


# ----------------------------------------------------------------------------- the loop


@dataclass
class Outcome:
    eval_dir: Path
    rows: list[dict]  # everything in results.jsonl now
    new_rows: int
    checkpoints: list[Checkpoint]


def evaluate_run(path: str | Path, plan: EvalPlan, *, out: str | Path | None = None, device: str = "auto",
                 hooks: Sequence[CheckpointHook] = (), log: Callable[[str], None] = _stderr_log,
                 show_progress: bool = True) -> Outcome:
    plan.check()
    skipped: list[tuple[str, RainError]] = []  # (checkpoint, why): damaged ones, reported, the others still scored
    checkpoints = ckpt_io.find_all(path, on_damaged=lambda name, exc: skipped.append((name, exc)))
    if not checkpoints:
        raise nothing_evaluated(path, skipped)
    for name, exc in skipped:
        log(f"skipped {name}: {exc}")
    check_tokenizers(checkpoints)
    eval_dir = Path(out) if out is not None else default_eval_dir(path)
    results = eval_dir / RESULTS_FILE
    rows = read_results(results)
    units = plan.units() + [h.unit for h in hooks]
    todo = [(c, [u for u in units if not any(owns(c, r) and u.matches(r) for r in rows)]) for c in checkpoints]
    todo = [(c, us) for c, us in todo if us]
    if not todo:
        log(f"nothing new to evaluate: {len(checkpoints)} checkpoint(s) already in {results}")
        return Outcome(eval_dir, rows, 0, checkpoints)
    inputs = Inputs(plan, todo, log)
    todo = [(c, [u for u in us if u.task != "val" or u.evaluator != "rain" or inputs.val[c.folder] is not None])
            for c, us in todo]
    todo = [(c, us) for c, us in todo if us]
    torch_device = pick_device(device, option="--device")
    added = failed = 0
    items_file = eval_dir / ITEMS_FILE
    for ckpt, units in todo:
        tokens = f"{ckpt.tokens:,} tokens" if ckpt.tokens is not None else "tokens unknown"
        log(f"{ckpt.name} ({tokens}): {', '.join(u.describe() for u in units)}")
        t0 = time.time()
        items: list[dict] = []
        try:
            new = evaluate_checkpoint(ckpt, units, inputs, torch_device, hooks, eval_dir, log, show_progress, items)
        except ckpt_io.DamagedCheckpoint as exc:
            if len(checkpoints) == 1:  # the only checkpoint asked for: its error is the answer
                raise
            log(f"skipped {ckpt.name}: {exc}")
            skipped.append((ckpt.name, exc))
            failed += 1
            continue
        except RainError as exc:  # named once: most errors already name the checkpoint's folder or a file in it
            raise exc if str(ckpt.folder) in str(exc) else RainError(f"{ckpt.folder}: {exc}") from None
        append_items(items_file, items)  # first: results rows without their items would never be rescored
        append_results(results, new)  # only now: a failure above leaves the file untouched
        rows += new
        added += len(new)
        log(f"  {len(new)} result(s) in {time.time() - t0:.1f} s")
    # A damaged checkpoint among good ones is reported above and the others are scored: the command succeeds, as
    # their results are worth having. It fails only when no checkpoint could be used at all (none evaluated now or
    # before), so that a script evaluating a run whose checkpoints are all damaged notices.
    if failed == len(checkpoints):
        raise nothing_evaluated(path, skipped)
    return Outcome(eval_dir, rows, added, checkpoints)


def nothing_evaluated(path: str | Path, skipped: list[tuple[str, RainError]]) -> RainError:
    """The error when every checkpoint was damaged: the one checkpoint's own error, or a count and the first."""
    if len(skipped) == 1:
        return skipped[0][1]
    name, first = skipped[0]
    return RainError(f"{path}: none of its {len(skipped)} checkpoints could be evaluated (they are damaged; "
                     f"the first, {name}: {first})")


def evaluate_checkpoint(ckpt: Checkpoint, units: list[Unit], inputs: Inputs, device: torch.device,
                        hooks: Sequence[CheckpointHook], eval_dir: Path, log: Callable[[str], None],
                        show_progress: bool = True, items_out: list[dict] | None = None) -> list[dict]:
    """The checkpoint's result rows (overall and per category); items_out receives its per-item records."""
    plan = inputs.plan
    model, cfg = ckpt_io.load_model(ckpt, device)
    tokenizer = ckpt_io.tokenizer(ckpt)
    generated = [u for u in units if u.task in GENERATIVE_TASK_NAMES]
    native = [u for u in units if u.evaluator == "rain" and u.task != "val" and u not in generated]
    harness = [u for u in units if u.evaluator == "lm-eval"]
    out: list[dict] = []
    with autocast_for(device, "auto"):  # bf16 on CUDA, fp32 on CPU
        for unit in units:
            if unit.task == "val" and unit.evaluator == "rain" and (val := inputs.val_for(ckpt, log)) is not None:
                out += [make_row(ckpt, unit, r) for r in validation_rows(model, cfg, val, unit.limit, tokenizer.eot_id)]
        for shots, group in _by_shots(native).items():  # all tasks in one pass: shared batches
            tasks = [inputs.requests[(u.task, shots)] for u in group]
            per_item: dict[str, dict[str, list[float]]] = {}
            out += _rows(ckpt, group, score_tasks(model, tokenizer, tasks, plan.batch_size, show_progress, per_item))
            for unit, task in zip(group, tasks):
                record = item_record(task, per_item[task.name])
                out += [make_row(ckpt, unit, r) for r in category_rows(record)]
                if items_out is not None:
                    items_out.append({"checkpoint": ckpt.name, "step": ckpt.step, "tokens": ckpt.tokens,
                                      "limit": unit.limit, "evaluator": unit.evaluator, **record})
        for unit in generated:
            out += _rows(ckpt, [unit], evaluate_generative(model, tokenizer, unit.task, plan.eval_data, shots=unit.n_shot,
                                                          limit=plan.limit, allow_code_execution=plan.allow_code_execution,
                                                          seed=plan.seed))
        for shots, group in _by_shots(harness).items():
            ours = [u for u in group if plan.harness and u.task in plan.tasks]
            if ours:
                from rain.eval.harness import harness_evaluate

                out += _rows(ckpt, ours, harness_evaluate(model, tokenizer, [u.task for u in ours], shots=shots,
                                                          limit=plan.limit, data_dir=plan.eval_data,
                                                          batch_size=plan.batch_size, seed=plan.seed))
            if theirs := [u for u in group if u not in ours]:
                names = [u.task for u in theirs]
                out += _rows(ckpt, theirs, _run_lm_eval(model, tokenizer, names, shots, plan, inputs.task_manager))
        for hook in hooks:
            if hook.unit in units:
                out += [make_row(ckpt, hook.unit, r) for r in hook(ckpt, model, tokenizer, eval_dir)]
    return out


def _by_shots(units: list[Unit]) -> dict[int, list[Unit]]:
    return {k: [u for u in units if u.n_shot == k] for k in sorted({u.n_shot for u in units})}


def _rows(ckpt: Checkpoint, units: list[Unit], scored: list[dict]) -> list[dict]:
    by_task = {u.task: u for u in units}
    return [make_row(ckpt, by_task[r.get("group") or r["task"]], r) for r in scored]
