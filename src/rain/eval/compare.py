"""`rain compare A B [C ...]`: are two checkpoints really different on the benchmarks, item by item?

Every model after the first is compared with the first, on the very same items: per task and per category, the
difference in accuracy (B - A) with a paired bootstrap confidence interval and p-value, McNemar's exact test on
the items that flipped, the flipped items themselves, and a verdict in words, including how many items it would
take to see a 1-point change. Per-item scores come from eval/items.jsonl when `rain eval` stored them for the
same task, shots and --limit; otherwise (a Hugging Face folder, or a checkpoint not yet evaluated so) the items
are scored here through the same evaluator (rain.eval.multiple_choice) and nothing is written into the run.

Statistics, for n paired items with scores a_i, b_i in {0, 1} and d_i = b_i - a_i:

- difference: mean(d);
- paired bootstrap: resample the n pairs with replacement (numpy, seeded, 10,000 resamples by default); the 95%
  interval is the 2.5th and 97.5th percentiles of the resampled mean(d); the two-sided p-value is the share of
  resampled means at least |mean(d)| away from mean(d) (the bootstrap distribution shifted to the null of no
  difference), with the usual +1 in numerator and denominator, so it is never 0 and is 1 when nothing differs;
- McNemar's exact test: with b items right only in B and c right only in A, under the null each flipped item is
  a fair coin: p = min(1, 2 * sum_{k <= min(b, c)} C(b + c, k) / 2^(b + c)), exact integer arithmetic;
- minimum detectable effect (two-sided 5% test, 80% power): MDE = (z_0.975 + z_0.8) * SE with the paired
  standard error SE = sd(d) / sqrt(n), and the items needed to detect a change of delta:
  n_delta = ((z_0.975 + z_0.8) * sd(d) / delta)^2 (sd(d) estimated from these pairs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rain import checkpoint as ckpt_io
from rain.checkpoint import Checkpoint
from rain.data.tokenizer import Tokenizer
from rain.errors import RainError
from rain.eval.item_results import ITEMS_FILE, correct, item_record, read_items
from rain.eval.tasks import FEWSHOT_SEED, build_requests, get_task

Z_TWO_SIDED_95 = 1.959963984540054  # the normal quantile at 0.975
Z_POWER_80 = 0.8416212335729143  # the normal quantile at 0.8
ALPHA = 0.05
REPORT_FILE, PLOT_FILE = "compare.md", "compare.png"


# ----------------------------------------------------------------------------- statistics


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = 10_000,
                     seed: int = 0) -> tuple[float, float, float, float]:
    """(mean(b - a), 95% interval low, high, two-sided p) by resampling the pairs; see the module docstring."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    n = len(d)
    if n == 0:
        raise ValueError("no pairs to compare")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)  # resample in blocks: bounded memory for any n
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        means[start : start + k] = d[rng.integers(0, n, size=(k, n))].mean(axis=1)
    observed = float(d.mean())
    low, high = np.percentile(means, [2.5, 97.5])
    extreme = int(np.sum(np.abs(means - observed) >= abs(observed) - 1e-12))
    return observed, float(low), float(high), (extreme + 1) / (resamples + 1)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (a binomial test of only_b in only_a + only_b)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)


def detectable(d: np.ndarray, delta: float = 0.01) -> tuple[float | None, int | None]:
    """(minimum detectable effect at this n, items needed to detect `delta`), from the paired sd of d; None
    when the pairs never differ (sd 0: nothing to estimate the noise from)."""
    n = len(d)
    sd = float(np.std(d, ddof=1)) if n > 1 else 0.0
    if sd == 0.0:
        return None, None
    z = Z_TWO_SIDED_95 + Z_POWER_80
    return z * sd / math.sqrt(n), math.ceil((z * sd / delta) ** 2)


@dataclass
class Comparison:
    """B against A on one task (or one category of it), on the same n items."""

    task: str
    category: str | None
    metric: str
    n: int
    a: float  # accuracy of A
    b: float
    diff: float  # b - a
    low: float
    high: float
    p_bootstrap: float
    p_mcnemar: float
    only_a: list[str] = field(default_factory=list)  # ids right in A, wrong in B
    only_b: list[str] = field(default_factory=list)
    mde: float | None = None
    n_for_1_point: int | None = None

    def verdict(self) -> str:
        if self.n < 2:
            return "too few items to say anything"
        if not self.only_a and not self.only_b:
            return "no difference: both are right on exactly the same items"
        if self.p_mcnemar < ALPHA and (self.low > 0 or self.high < 0):
            return f"B is {abs(self.diff) * 100:.1f} points {'higher' if self.diff > 0 else 'lower'} (p = {self.p_mcnemar:.2g})"
        need = f"; a 1-point change needs about {self.n_for_1_point:,} items" if self.n_for_1_point else ""
        mde = f" (smallest detectable: {self.mde * 100:.1f} points)" if self.mde is not None else ""
        return f"no detectable difference at {self.n:,} items{mde}{need}"


def compare_scores(task: str, metric: str, a: Sequence[int], b: Sequence[int], ids: Sequence[str],
                   category: str | None = None, resamples: int = 10_000, seed: int = 0) -> Comparison:
    diff, low, high, p_boot = paired_bootstrap(a, b, resamples, seed)
    only_a = [i for i, x, y in zip(ids, a, b) if x and not y]
    only_b = [i for i, x, y in zip(ids, a, b) if y and not x]
    mde, needed = detectable(np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64))
    return Comparison(task, category, metric, len(a), float(np.mean(a)), float(np.mean(b)), diff, low, high, p_boot,
                      mcnemar_exact(len(only_a), len(only_b)), only_a, only_b, mde, needed)


# ----------------------------------------------------------------------------- models and their item scores


@dataclass
class Model:
    arg: str  # as given
    label: str
    folder: Path
    checkpoint: Checkpoint | None  # None: a Hugging Face folder

    @property
    def tokenizer_json(self) -> Path:
        return self.folder / "tokenizer.json"


def resolve_model(arg: str | Path) -> Model:
    """A rain checkpoint, a run folder (its newest checkpoint) or a local Hugging Face model folder."""
    path = Path(arg)
    if ckpt_io.is_hf_folder(path):
        return Model(str(arg), path.name, path, None)
    ckpt = ckpt_io.find(path)
    run = ckpt.folder.parent.parent if ckpt.folder.parent.name == "checkpoints" else None
    label = f"{run.name}/{ckpt.name}" if run is not None else ckpt.folder.name
    return Model(str(arg), label, ckpt.folder, ckpt)


def stored_record(model: Model, task: str, shots: int, limit: float | None) -> dict | None:
    """The model's per-item record from `rain eval` (RUN/eval/items.jsonl) for this unit, if there is one."""
    from rain.eval.runner import default_eval_dir, owns

    if model.checkpoint is None:
        return None
    found = None
    for rec in read_items(default_eval_dir(model.folder) / ITEMS_FILE):
        if (owns(model.checkpoint, rec) and rec.get("evaluator", "rain") == "rain"
                and (rec["task"], rec["n_shot"], rec.get("limit")) == (task, shots, limit)):
            found = rec  # a later line replaces an earlier one
    return found


def score_model(model: Model, tasks: list, batch_size: int, device: str, show_progress: bool) -> dict[str, dict]:
    """Per-item records of built tasks, scored now with rain's evaluator."""
    from rain.eval.multiple_choice import score_tasks
    from rain.runtime import autocast_for, pick_device

    torch_device = pick_device(device, option="--device")
    net, _ = ckpt_io.load_model(model.checkpoint or model.folder, torch_device)
    tokenizer = Tokenizer.from_file(model.tokenizer_json)
    per_item: dict[str, dict[str, list[float]]] = {}
    with autocast_for(torch_device, "auto"):
        score_tasks(net, tokenizer, tasks, batch_size, show_progress, per_item)
    return {t.name: item_record(t, per_item[t.name]) for t in tasks}


def check_tokenizers(models: list[Model], tasks: Sequence[str], log: Callable[[str], None]) -> None:
    """Accuracy is comparable across tokenizers; per-token metrics (validation loss, perplexity) are not."""
    differ = [m for m in models[1:] if not ckpt_io.same_tokenizer(models[0].tokenizer_json, m.tokenizer_json)]
    if "val" in tasks:
        if differ:
            raise RainError(f"{differ[0].arg} has another tokenizer than {models[0].arg}: perplexity and loss are per "
                            "token, so theirs are not comparable; compare accuracy tasks, or bits per byte in `rain eval`")
        raise RainError("rain compare pairs benchmark items; validation loss has no items to pair: compare it in the "
                        "trends of `rain eval` (bits per byte)")
    for m in differ:
        log(f"note: {m.label} has another tokenizer than {models[0].label}; accuracy is still comparable")


@dataclass
class Report:
    models: list[Model]
    metric: str
    shots: int
    limit: float | None
    where: dict[str, str]  # label -> "stored (eval/items.jsonl)" | "scored now"
    tasks: list[Comparison]  # per (B, task), B in models[1:] order
    categories: list[Comparison]
    pairs: list[tuple[str, str]]  # (A label, B label) of each entry, aligned with tasks / categories
    category_pairs: list[tuple[str, str]]
    resamples: int
    seed: int


def compare(args: Sequence[str | Path], tasks: Sequence[str], shots: int = 0, limit: float | None = None,
            eval_data: str | Path | None = None, metric: str = "acc", resamples: int = 10_000, seed: int = 0,
            min_category_items: int = 10, batch_size: int = 32, device: str = "auto",
            log: Callable[[str], None] = lambda m: None, show_progress: bool = True) -> Report:
    if len(args) < 2:
        raise RainError("rain compare needs at least two checkpoints, runs or Hugging Face folders")
    if not tasks:
        raise RainError("--tasks names the benchmarks to compare on (e.g. --tasks arc_easy,hellaswag)")
    if "val" not in tasks:
        for name in tasks:
            get_task(name)  # an unknown name lists the known ones
    if metric not in ("acc", "acc_norm"):
        raise RainError(f"--metric must be acc or acc_norm, got {metric!r}")
    models = [resolve_model(a) for a in args]
    check_tokenizers(models, tasks, log)
    seen: dict[str, int] = {}
    for m in models:  # labels name the columns: keep them apart
        seen[m.label] = seen.get(m.label, 0) + 1
        if seen[m.label] > 1:
            m.label = f"{m.label} ({seen[m.label]})"
    records: dict[str, dict[str, dict]] = {}
    where: dict[str, str] = {}
    built: dict[str, object] = {}
    for m in models:
        mine = {t: rec for t in tasks if (rec := stored_record(m, t, shots, limit)) is not None}
        missing = [t for t in tasks if t not in mine]
        if missing:
            for t in missing:
                if t not in built:
                    built[t] = build_requests(t, shots, limit, eval_data, FEWSHOT_SEED)
            log(f"{m.label}: scoring {', '.join(missing)} ({shots}-shot) now")
            mine.update(score_model(m, [built[t] for t in missing], batch_size, device, show_progress))
        where[m.label] = "scored now" if missing == list(tasks) else (
            "stored by rain eval" if not missing else f"stored, {', '.join(missing)} scored now")
        records[m.label] = mine
    base = models[0]
    report = Report(models, metric, shots, limit, where, [], [], [], [], resamples, seed)
    for other in models[1:]:
        for t in tasks:
            ra, rb = records[base.label][t], records[other.label][t]
            if ra["ids"] != rb["ids"]:
                raise RainError(f"{t}: {base.label} and {other.label} were scored on different items; evaluate "
                                "both with the same --limit, shots and benchmark files")
            m = metric if metric in ra["scores"] else "acc"  # winogrande has acc only
            a, b = correct(ra, m), correct(rb, m)
            report.tasks.append(compare_scores(t, m, a, b, ra["ids"], None, resamples, seed))
            report.pairs.append((base.label, other.label))
            for kind, labels in ra.get("categories", {}).items():
                for label in sorted({x for x in labels if x is not None}):
                    members = [k for k, x in enumerate(labels) if x == label]
                    if len(members) < min_category_items:
                        continue
                    report.categories.append(compare_scores(
                        t, m, [a[k] for k in members], [b[k] for k in members], [ra["ids"][k] for k in members],
                        f"{kind}={label}", resamples, seed))
                    report.category_pairs.append((base.label, other.label))
    return report


# ----------------------------------------------------------------------------- output


def _pts(x: float) -> str:
    return f"{x * 100:+.1f}"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def render_markdown(report: Report, command: str | None = None, flips_shown: int = 20) -> str:
    models = report.models
    limit = f", the first {report.limit:g} items of each task" if report.limit is not None else ""
    lines = [f"# Comparison: {' vs '.join(m.label for m in models)}", ""]
    if command:
        lines += [f"Made by `{command}`.", ""]
    lines += [(f"Metric {report.metric} (acc where a task has only that), {report.shots}-shot{limit}. "
              f"A = {models[0].label}; every other model is B against it. Differences are B - A in accuracy points "
              f"with a paired bootstrap 95% interval ({report.resamples:,} resamples, seed {report.seed}) and p-value, "
              "and McNemar's exact p on the items that flipped. The verdict uses McNemar's p < 0.05 with an "
              "interval that excludes 0; \"smallest detectable\" is (z_0.975 + z_0.8) * sd(B - A) / sqrt(n), the "
              "change a two-sided 5% test finds with 80% power."), "", "| model | folder | per-item scores |",
              "|---|---|---|"]
    lines += [f"| {m.label} | `{m.arg}` | {report.where[m.label]} |" for m in models]
    header = ("| A | B | task | items | A | B | B - A (points) | 95% CI | p (bootstrap) | p (McNemar) | "
              "right only in A | right only in B | verdict |")
    lines += ["", "## Per task", "", header, "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for (la, lb), c in zip(report.pairs, report.tasks):
        lines.append(_row(la, lb, c.task, c))
    if report.categories:
        lines += ["", "## Per category", "", ("Categories with at least the minimum number of items (see "
                  "rain.eval.categories for what each task's data carries)."), "",
                  header.replace("| task |", "| task | category |"),
                  "|---|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"]
        for (la, lb), c in zip(report.category_pairs, report.categories):
            lines.append(_row(la, lb, f"{c.task} | {c.category}", c))
    lines += ["", "## Items that flipped", ""]
    for (la, lb), c in zip(report.pairs, report.tasks):
        for who, ids in ((f"right in {lb}, wrong in {la}", c.only_b), (f"right in {la}, wrong in {lb}", c.only_a)):
            shown = ", ".join(f"`{i}`" for i in ids[:flips_shown]) + (" ..." if len(ids) > flips_shown else "")
            lines.append(f"- {c.task}, {who}: {len(ids)}" + (f": {shown}" if ids else ""))
    return "\n".join(lines) + "\n"


def _row(la: str, lb: str, what: str, c: Comparison) -> str:
    return (f"| {la} | {lb} | {what} | {c.n:,} | {c.a:.3f} | {c.b:.3f} | {_pts(c.diff)} | "
            f"[{_pts(c.low)}, {_pts(c.high)}] | {_p(c.p_bootstrap)} | {_p(c.p_mcnemar)} | {len(c.only_a)} | "
            f"{len(c.only_b)} | {c.verdict()} |")


def plot_comparison(report: Report, path: Path, categories_shown: int = 20) -> Path:
    """Differences with their 95% intervals: tasks on the left, the largest categories on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = sorted(zip(report.category_pairs, report.categories), key=lambda x: -x[1].n)[:categories_shown]
    panels = [("per task", list(zip(report.pairs, report.tasks)))] + ([("per category", cats)] if cats else [])
    height = max(2.5, 0.32 * max(len(entries) for _, entries in panels) + 1.2)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), height), squeeze=False)
    for ax, (title, entries) in zip(axes.flat, panels):
        y = np.arange(len(entries))[::-1]
        diffs = np.array([c.diff for _, c in entries]) * 100
        err = np.array([[c.diff - c.low, c.high - c.diff] for _, c in entries]).T * 100
        ax.errorbar(diffs, y, xerr=err, fmt="o", capsize=3)
        ax.axvline(0, color="gray", ls="--", lw=1)
        names = [f"{c.task}" + (f" {c.category}" if c.category else "") + f" (n={c.n})"
                 + (f" [{pair[1]}]" if len(report.models) > 2 else "") for pair, c in entries]
        ax.set_yticks(y, names, fontsize=7)
        ax.set_xlabel(f"{report.models[1].label if len(report.models) == 2 else 'B'} - {report.models[0].label}, "
                      f"{report.metric} points (95% CI)", fontsize=8)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: Report, out: str | Path, command: str | None = None, plot: bool = True) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / REPORT_FILE
    md.write_text(render_markdown(report, command))
    return [md] + ([plot_comparison(report, out / PLOT_FILE)] if plot else [])
