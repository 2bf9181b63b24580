"""`rain eval`: validation loss / perplexity / bits per byte and benchmarks for one checkpoint or every
checkpoint of a run, resumable, into RUN/eval/results.jsonl plus a trend table and curves. `rain decontaminate`:
the benchmark items found in a prepared folder's shards (rain.eval.decontaminate). `rain score`: a quality score
per training document (rain.eval.quality), for `rain data filter`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rain.commands_common import number
from rain.errors import RainError
from rain.eval.tasks import EVAL_DATA_ENV, eval_data_cache, eval_data_hint

ALL_TASKS = "all"


def parse_tasks(text: str | None) -> list[str]:
    from rain.eval.tasks import TASK_NAMES

    names = [t.strip() for t in (text or "").split(",") if t.strip()]
    return list(TASK_NAMES) if names == [ALL_TASKS] else list(dict.fromkeys(names))


def parse_shots(text: str) -> list[int]:
    try:
        shots = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise RainError(f"--shots takes whole numbers separated by commas (e.g. 0,5), got {text!r}") from None
    if not shots:
        raise RainError("--shots needs at least one number (e.g. 0,5)")
    return shots


def parse_limit(text: str | None) -> float | int | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise RainError(f"--limit takes a number of items (or a fraction below 1), got {text!r}") from None
    return int(value) if value >= 1 and value.is_integer() else value


def eval_data_dir(flag: str | None) -> str | None:
    """The folder `rain eval` reads benchmark files from, the first of: --eval-data DIR (flag), $RAIN_EVAL_DATA,
    the user cache folder $XDG_CACHE_HOME/rain/eval (default ~/.cache/rain/eval) when it exists.
    None: none of them, so the files come from the Hugging Face hub. Nothing depends on the working directory."""
    if flag is not None:
        return flag
    env = os.environ.get(EVAL_DATA_ENV)
    if env:
        if not Path(env).is_dir():  # set on purpose, so falling through to the hub would hide a mistake
            raise RainError(f"${EVAL_DATA_ENV}={env}: no such benchmark folder; {eval_data_hint()}")
        return env
    cache = eval_data_cache()
    return str(cache) if cache.is_dir() else None


def checkpoint_hooks(args) -> list:
    """Extra per-checkpoint evaluations, resumable like the benchmarks (rain.eval.checkpoint_reports)."""
    from rain.eval.checkpoint_reports import build_hooks

    hooks = build_hooks(args.prompts, args.memorisation, seed=args.prompt_seed)
    if args.safety:
        from rain.eval.safety import SafetyHook

        hooks.append(SafetyHook())
    return hooks


def cmd_eval(args) -> None:
    from rain.eval.plots import trend_table, write_trends
    from rain.eval.runner import EvalPlan, evaluate_run, training_start_rows

    tasks = parse_tasks(args.tasks)
    plan = EvalPlan(
        tasks=tasks, shots=parse_shots(args.shots), limit=parse_limit(args.limit),
        harness=args.harness, harness_tasks=[t for t in parse_tasks(args.harness_tasks) if t != ALL_TASKS],
        val_batches=args.batches, val_data=args.data,
        eval_data=eval_data_dir(args.eval_data) if tasks else args.eval_data,  # only --tasks read benchmark files
        batch_size=args.batch_size, seed=args.seed, allow_code_execution=args.allow_code_execution,
    )
    if args.harness and not plan.tasks:
        raise RainError("--harness runs the --tasks through lm-eval: name them with --tasks (e.g. --tasks arc_easy)")
    outcome = evaluate_run(args.checkpoint, plan, out=args.out, device=args.device, hooks=checkpoint_hooks(args))
    rows = outcome.rows
    if plan.val_batches is None and plan.val_data is None:  # the windows training scored at step 0 too
        rows = training_start_rows(args.checkpoint, rows) + rows
    written = write_trends(outcome.eval_dir, rows, plot=args.plot)
    print(trend_table(rows), end="")
    print(f"\n{outcome.new_rows} new result(s); wrote {outcome.eval_dir / 'results.jsonl'}, "
          + ", ".join(str(p) for p in written))


def cmd_compare(args) -> None:
    import shlex
    import sys

    from rain.eval.compare import compare, write_report

    tasks = parse_tasks(args.tasks)
    shots = parse_shots(args.shots)
    if len(shots) != 1:
        raise RainError(f"--shots takes one count for a comparison, got {args.shots!r}")
    report = compare(args.models, tasks, shots=shots[0], limit=parse_limit(args.limit),
                     eval_data=eval_data_dir(args.eval_data), metric=args.metric, resamples=args.resamples,
                     seed=args.seed, min_category_items=args.min_category_items, batch_size=args.batch_size,
                     device=args.device, log=lambda m: print(m, file=sys.stderr, flush=True))
    command = "rain " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["compare"] else None
    written = write_report(report, args.out, command, plot=args.plot)
    for (a, b), c in zip(report.pairs, report.tasks):
        print(f"{c.task}: {b} - {a} = {c.diff * 100:+.1f} points [{c.low * 100:+.1f}, {c.high * 100:+.1f}], "
              f"{c.n:,} items: {c.verdict()}")
    print("wrote " + ", ".join(str(p) for p in written))


def cmd_decontaminate(args) -> None:
    from rain.eval.decontaminate import decontaminate, table

    report = decontaminate(args.data_dir, eval_data_dir(args.eval_data), tasks=parse_tasks(args.tasks) or None,
                           ngram=args.ngram, drop=args.drop, out=args.out, samples=args.samples)
    print(table(report), end="")
    dropped = report["dropped"]
    if dropped is not None:
        print(f"dropped {dropped['documents']:,} training document(s) ({dropped['tokens']:,} tokens); "
              "the validation split is unchanged" if dropped["documents"] else "--drop: no document to drop")
    print(f"wrote {report['path']}")


def cmd_score(args) -> None:
    from rain.eval.quality import score

    info = score(args.data_dir, args.kind, model=args.model, name=args.name, max_tokens=args.max_tokens,
                 batch_size=args.batch_size, device=args.device, label=args.label)
    for source, s in info["by_source"].items():
        if "median" in s:
            print(f"{source}: {s['documents']:,} documents, median {s['median']:.4g} (p10 {s['p10']:.4g}, "
                  f"p90 {s['p90']:.4g})" + (f", {s['unscored']:,} unscored" if s["unscored"] else ""))
    print(f"next: rain data filter {args.data_dir} --scores {info['name']} --threshold X (or --keep-quantile Q)")


def register(sub: argparse._SubParsersAction) -> None:
    from rain.eval.live import register_benchmarks

    register_benchmarks()  # train.eval_tasks: `rain train` scores benchmarks during training (rain.train.hooks)
    p = sub.add_parser("eval", help="evaluate a checkpoint or every checkpoint of a run", description=
                       "Validation loss, perplexity and bits per byte (per source) on the held-out split, plus "
                       "multiple-choice benchmarks scored as lm-evaluation-harness scores them. On a run folder "
                       "every checkpoint is evaluated in token order; results are appended to RUN/eval/results.jsonl "
                       "and whatever is already there is not evaluated again.")
    p.add_argument("checkpoint", help="a run folder (every checkpoint in it) or one checkpoint folder")
    p.add_argument("--tasks", metavar="LIST", help="benchmarks, comma-separated: arc_easy, arc_challenge, hellaswag, piqa, winogrande, "
                   "openbookqa, boolq, lambada_openai, or 'all' of those; generated and scored from --eval-data: gsm8k, "
                   "humaneval (default: none, validation loss only)")
    p.add_argument("--shots", default="0,5", metavar="K,...", help="few-shot counts, comma-separated (default: %(default)s)")
    p.add_argument("--limit", metavar="N", help="only the first N items of each task (a fraction below 1: that share)")
    p.add_argument("--eval-data", metavar="DIR", help="folder of benchmark files for --tasks (hellaswag/*.arrow, "
                   "arc/ARC-Easy-test.jsonl, piqa/valid.jsonl, winogrande/dev.jsonl, ...). Looked for in this order: "
                   f"--eval-data DIR, then ${EVAL_DATA_ENV}, then $XDG_CACHE_HOME/rain/eval (default ~/.cache/rain/eval) "
                   "if it exists, then the Hugging Face hub")
    p.add_argument("--allow-code-execution", action="store_true", help="humaneval: run the model's completions "
                   "(python -I in a temporary folder, resource limits, sockets and subprocesses refused, killed at a "
                   "timeout; a guard against accidents, not an attack)")
    p.add_argument("--harness", action="store_true", help="score --tasks with lm-evaluation-harness instead of "
                   "rain's own scorer (needs `pip install 'rain[eval]'`)")
    p.add_argument("--harness-tasks", metavar="LIST", help="any lm-eval task names, comma-separated, run through lm-eval on the "
                   "rain model (their data comes from the hub), e.g. lambada_openai")
    p.add_argument("--data", metavar="DIR", help="prepared data folder for validation loss (default: the one each checkpoint "
                   "was trained on)")
    p.add_argument("--batches", "--val-batches", dest="batches", type=int, default=None, metavar="N",
                   help="validation loss on N x train.micro_batch windows spread over the split, overall and per "
                        "source; 0 skips it (default: the run's train.eval_batches, the windows training scored)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="benchmark rows per forward pass (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1234, help="few-shot sampling seed, lm-eval's default (default: %(default)s)")
    p.add_argument("--out", metavar="DIR", help="folder for results.jsonl and the trends (default: RUN/eval)")
    p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True,
                   help="draw trends.png, every metric against tokens seen, beside trends.md (default: on)")
    p.add_argument("--prompts", action="store_true", help="sample the probing prompt suite at every checkpoint into "
                   "eval/prompts.md (bias, creative, basic-ability, code and fact prompts, with automatic checks)")
    p.add_argument("--prompt-seed", type=int, default=0, help="sampling seed of the prompt suite (default: %(default)s)")
    p.add_argument("--memorisation", action="store_true", help="find the longest verbatim training-data span in each "
                   "probing completion (builds eval/memorisation_index once) into eval/memorisation.md")
    p.add_argument("--safety", action="store_true", help="ask the held-out prompts of rain's safety pack (harmful "
                   "requests and benign look-alikes) in each checkpoint's chat template, greedily, into eval/safety.md: "
                   "refusal rate on the harmful ones, answer rate on the benign ones (a base model is asked in plain "
                   "text, with a warning)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="compare checkpoints item by item: differences, confidence intervals, verdicts",
                       description="Compare two or more checkpoints, runs (their newest checkpoint) or Hugging Face "
                       "folders on the same benchmark items: per task and per category, the difference with a paired "
                       "bootstrap confidence interval and p-value, McNemar's exact test, the items that flipped and a "
                       "verdict in words (including the items needed to detect a 1-point change). Every model is "
                       "compared with the first. Per-item scores stored by `rain eval` (eval/items.jsonl, same "
                       "--tasks, --shots and --limit) are reused; anything else is scored with the same evaluator. "
                       "Writes OUT/compare.md and OUT/compare.png.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="checkpoint, run or Hugging Face folders (at least two)")
    p.add_argument("--tasks", required=True, metavar="LIST", help="benchmarks, comma-separated, or 'all'")
    p.add_argument("--shots", default="0", metavar="K", help="few-shot count (default: %(default)s)")
    p.add_argument("--limit", metavar="N", help="only the first N items of each task (as for `rain eval`)")
    p.add_argument("--eval-data", metavar="DIR", help="folder of benchmark files, as for `rain eval --eval-data`")
    p.add_argument("--metric", default="acc", choices=["acc", "acc_norm"], help="(default: %(default)s)")
    p.add_argument("--resamples", type=number(int, "[100, inf)"), default=10_000, metavar="N",
                   help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.add_argument("--min-category-items", type=number(int, "[1, inf)"), default=10, metavar="N",
                   help="compare a category only with at least N items (default: %(default)s)")
    p.add_argument("--out", default="compare", metavar="DIR", help="folder for compare.md and compare.png "
                   "(default: %(default)s)")
    p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True, help="draw compare.png (default: on)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="rows per forward pass (default: %(default)s)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("decontaminate", help="find benchmark items in a prepared folder's shards (and drop them)",
                       description="Find the benchmark items (of the tasks rain evaluates, read as for `rain eval`) "
                       "whose token n-grams occur in a prepared data folder's training or validation documents; write "
                       "the contaminated items per task, per source and with samples of the matching text to "
                       "decontamination.json and print a table. With --drop, rewrite the training split without the "
                       "documents that hold them.")
    p.add_argument("data_dir", help="a prepared data folder (written by `rain prepare`)")
    p.add_argument("--eval-data", metavar="DIR", help="folder of benchmark files, laid out as for `rain eval --eval-data` "
                   f"(default: ${EVAL_DATA_ENV}, then $XDG_CACHE_HOME/rain/eval, then the Hugging Face hub)")
    p.add_argument("--tasks", metavar="LIST", help="benchmarks, comma-separated, or 'all' (default: every one found in "
                   "the benchmark folder)")
    p.add_argument("--ngram", type=number(int, "[1, inf)"), default=13, metavar="N",
                   help="tokens per n-gram; a text shorter than this is matched whole (default: %(default)s, as GPT-3)")
    p.add_argument("--drop", action="store_true", help="rewrite the training split without the documents that hold "
                   "a benchmark n-gram (the validation split is left alone); recorded in manifest.json")
    p.add_argument("--out", metavar="DIR", help="where to write decontamination.json (default: the data folder)")
    p.add_argument("--samples", type=number(int, "[0, inf)"), default=3, metavar="K",
                   help="matching documents shown per contaminated item (default: %(default)s)")
    p.set_defaults(func=cmd_decontaminate)

    p = sub.add_parser("score", help="a quality score per training document: perplexity, classifier or readability",
                       description="Score every training document of a prepared folder and write the scores beside "
                       "them (DATA/scores/NAME.npy, one per document, and NAME.json: the model, settings, statistics "
                       "per source), for `rain data filter`, which keeps documents by them without rescoring. "
                       "perplexity: bits per byte under a reference model (a rain run or checkpoint, or a Hugging "
                       "Face causal LM folder; each reads the text with its own tokenizer), lower is better. "
                       "classifier: a Hugging Face sequence classifier folder (e.g. FineWeb-Edu's): its regression "
                       "output, or the expected label index (or --label's probability) with several labels. "
                       "readability: Flesch reading ease, no model.")
    p.add_argument("data_dir", help="a prepared data folder (written by `rain prepare`)")
    p.add_argument("--kind", required=True, choices=["perplexity", "classifier", "readability"])
    p.add_argument("--model", metavar="PATH", help="the reference model (perplexity) or the classifier folder "
                   "(local files only)")
    p.add_argument("--name", help="the scores' name, scores/NAME.npy (default: the kind)")
    p.add_argument("--max-tokens", type=number(int, "[2, inf)"), default=512, metavar="N",
                   help="score each document's first N tokens, in the model's tokens (default: %(default)s)")
    p.add_argument("--batch-size", type=number(int, "[1, inf)"), default=8, metavar="N",
                   help="documents per forward pass (default: %(default)s)")
    p.add_argument("--label", help="with a classifier of several labels: score the probability of this label "
                   "(default: the expected label index)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_score)
