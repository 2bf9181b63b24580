"""rain's native evaluator vs lm-evaluation-harness on the same items and the same model (docs/performance.md).

Three ways to score the same loglikelihood tasks (first --items items of each, same k-shot):
  rain      rain.eval.multiple_choice.evaluate (packed choices, shared batches)
  lm-eval   lm_eval.simple_evaluate with its own HF backend (`hf`, transformers) on the model exported with
            rain.export.hf (same weights; needs `accelerate`, which lm-eval's hf backend imports)
  RainLM    lm_eval.simple_evaluate driving rain's scorer through the RainLM adapter
Wall time of each call (task building, tokenisation, scoring, metrics) after one warm-up call each; the
numbers they report are printed too (rain and RainLM agree exactly; the hf backend to float rounding).

    python benchmarks/eval_vs_lm_eval.py --eval-data ../shared/data/eval --items 50
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from rain.config import load_config
from rain.data.tokenizer import train_bpe
from rain.eval.harness import harness_evaluate, write_local_tasks
from rain.eval.multiple_choice import evaluate
from rain.eval.tasks import build_requests
from rain.export.hf import export_hf
from rain.model import Transformer

TASKS = ["arc_challenge", "openbookqa", "boolq", "lambada_openai"]


def timed(fn):
    fn()  # warm-up: datasets' converted copies, lazy imports
    t0 = time.perf_counter()
    rows = fn()
    return time.perf_counter() - t0, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval-data", default="../shared/data/eval")
    p.add_argument("--preset", default="tiny", help="model shape (random weights; default: tiny)")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--items", type=int, default=50)
    p.add_argument("--shots", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    tasks = args.tasks.split(",")

    cfg = load_config(args.preset).model
    torch.manual_seed(0)
    texts = [c + k for name in tasks
             for it in build_requests(name, limit=args.items, data_dir=args.eval_data).items for c, k in it.requests]
    tokenizer = train_bpe(texts, cfg.vocab_size)
    model = Transformer(cfg).eval()
    n_requests = sum(len(it.requests) for name in tasks
                     for it in build_requests(name, shots=args.shots, limit=args.items, data_dir=args.eval_data).items)
    kw = {"shots": args.shots, "limit": args.items, "data_dir": args.eval_data, "batch_size": args.batch_size}

    import lm_eval
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = export_hf(cfg, model.state_dict(), tokenizer, Path(tmp) / "hf")
        names = write_local_tasks(args.eval_data, Path(tmp) / "tasks", tasks, fewshot=args.shots > 0)
        manager = TaskManager(include_path=str(Path(tmp) / "tasks"), include_defaults=False)

        def lm_eval_hf():
            res = lm_eval.simple_evaluate(
                model="hf", model_args=f"pretrained={hf_dir},dtype=float32", device="cpu",
                tasks=[names[t] for t in tasks], num_fewshot=args.shots, limit=args.items,
                batch_size=args.batch_size, task_manager=manager, bootstrap_iters=0)
            return [(t, m.split(",")[0], v) for t in tasks for m, v in res["results"][names[t]].items()
                    if m.endswith(",none") and "stderr" not in m]

        runs = {
            "rain": lambda: [(r["task"], r["metric"], r["value"])
                             for r in evaluate(model, tokenizer, tasks, show_progress=False, **kw)],
            "lm-eval (hf backend)": lm_eval_hf,
            "lm-eval + RainLM": lambda: [(r["task"], r["metric"], r["value"]) for r in harness_evaluate(
                model, tokenizer, tasks, cache_dir=Path(tmp) / "cache", bootstrap_iters=0, **kw)],
        }
        print(f"machine: CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
              f"torch {torch.__version__}; model {args.preset} ({sum(p.numel() for p in model.parameters()):,} "
              f"params, random weights); {len(tasks)} tasks x {args.items} items, {args.shots}-shot, "
              f"{n_requests} loglikelihood requests")
        print("| evaluator | wall s | requests/s | results |\n|---|---|---|---|")
        for name, fn in runs.items():
            seconds, rows = timed(fn)
            shown = ", ".join(f"{t} {m} {v:.4g}" for t, m, v in sorted(rows))
            print(f"| {name} | {seconds:.2f} | {n_requests / seconds:,.0f} | {shown} |")


if __name__ == "__main__":
    main()
