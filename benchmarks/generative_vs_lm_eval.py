"""rain's generative tasks vs lm-evaluation-harness on the same items and the same weights (docs/performance.md).

GSM8K (5-shot, the first --items test items, shots from the train split) and HumanEval (0-shot, the first
--humaneval-items), decoded greedily three ways:
  rain      rain.eval.generative (rain's KV-cache decoding, stop strings checked after each token)
  lm-eval   lm-eval's `hf` backend (transformers' generate, batch --hf-batch-size) on the rain.export.hf folder
            of the same weights, fp32 (needs `accelerate`, which the hf backend imports)
  RainLM    lm-eval driving rain through the RainLM adapter's generate_until
GSM8K runs through lm_eval.simple_evaluate on lm-eval's own gsm8k.yaml (only the dataset swapped for local
files), so its prompts, filters and exact_match score it. lm-eval's humaneval task loads code_eval from the
hub when it is built, so there the yaml's requests (prompt, until, max_gen_toks 1024) go straight to each
backend's generate_until and only the completions are compared; nothing is executed.

The model: a 0.9M-parameter LLaMA-style shape (2 layers, d_model 128, 4,096-token BPE) with a 2,048-token
context (5-shot prompts are ~1,000 tokens and the hf backend needs room for 256 new ones), trained for
--train-steps of AdamW on GSM8K's train answers (in the prompt's "Question: ... Answer: ..." form) and Python's
standard library sources, so that generations stop at "Question:" and hold numbers instead of repeating one
token; --cache keeps it for the next run. Wall time per call after a one-item warm-up; "tok/s" counts the
tokens of the returned (stop-cut) texts. One torch thread by default: on a shared 2-core machine two threads
ran 2-3x slower than one.

    nice python benchmarks/generative_vs_lm_eval.py --items 20 --humaneval-items 5 --cache /tmp/gen-bench --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rain.config import load_config
from rain.data.tokenizer import Tokenizer, train_bpe
from rain.eval.generative import generate, gsm8k_items, gsm8k_scores, humaneval_items
from rain.export.hf import export_hf
from rain.model import Transformer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# ----------------------------------------------------------------------------- data and model


def local_eval_dir(out: Path, items: int) -> Path:
    """lm-eval's gsm8k layout (test: the first `items` evaluated; train: the whole shot pool) and HumanEval."""
    (out / "gsm8k").mkdir(parents=True)
    test = (SHARED / "eval" / "gsm8k" / "test.jsonl").read_text().splitlines(keepends=True)[:items]
    (out / "gsm8k" / "test.jsonl").write_text("".join(test))
    (out / "gsm8k" / "train.jsonl").symlink_to(SHARED / "corpus" / "gsm8k_train" / "train.jsonl")
    (out / "humaneval").symlink_to(SHARED / "eval" / "humaneval", target_is_directory=True)
    return out


def training_texts(max_code_chars: int = 1_000_000) -> list[str]:
    lines = (SHARED / "corpus" / "gsm8k_train" / "train.jsonl").read_text().splitlines()
    qa = [f"Question: {d['question']}\nAnswer: {d['answer']}" for d in map(json.loads, lines)]
    texts = ["\n\n".join(qa[i : i + 6]) for i in range(0, len(qa), 6)]  # chained, as the 5-shot prompt is
    code, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        code.append(text)
        size += len(text)
        if size > max_code_chars:
            break
    return texts + code


def train_tiny(cfg, tokenizer, texts: list[str], steps: int, seq: int = 256, batch: int = 16,
               peak_lr: float = 4e-3) -> Transformer:
    """Some AdamW steps on random windows of the token stream (seeded): not a good model, a non-degenerate one."""
    stream = torch.tensor([t for text in texts for t in tokenizer.encode(text) + [tokenizer.eot_id]])
    gen = torch.Generator().manual_seed(0)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, betas=(0.9, 0.99), weight_decay=0.1)
    for step in range(steps):
        lr = peak_lr * min(1.0, (step + 1) / 30) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(stream) - seq - 1, (batch,), generator=gen)
        x = torch.stack([stream[s : s + seq] for s in starts])
        y = torch.stack([stream[s + 1 : s + seq + 1] for s in starts])
        loss = model(x, targets=y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"  train step {step}: loss {loss.item():.3f}", flush=True)
    return model.eval()


def small_model(steps: int, cache: Path | None) -> tuple[Transformer, Tokenizer]:
    cfg = dataclasses.replace(load_config("tiny").model, context=2048, n_layer=2, d_model=128, d_ff=384,
                              vocab_size=4096)
    weights = cache / f"model-{steps}.pt" if cache else None
    if weights is not None and weights.is_file():
        model = Transformer(cfg)
        model.load_state_dict(torch.load(weights))
        return model.eval(), Tokenizer.from_file(cache / "tokenizer.json")
    torch.manual_seed(0)
    texts = training_texts()
    tokenizer = train_bpe(texts, cfg.vocab_size)
    t0 = time.perf_counter()
    model = train_tiny(cfg, tokenizer, texts, steps)
    print(f"trained {steps} steps in {time.perf_counter() - t0:.0f} s")
    if weights is not None:
        cache.mkdir(parents=True, exist_ok=True)
        tokenizer.save(cache / "tokenizer.json")
        torch.save(model.state_dict(), weights)
    return model, tokenizer


# ----------------------------------------------------------------------------- the three ways


def gsm8k_task_dir(data_dir: Path, out: Path) -> Path:
    """A task folder whose yaml includes lm-eval's gsm8k.yaml and swaps only the dataset for the local files."""
    import lm_eval

    cfg = {"include": str(Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k.yaml"), "task": "rain_gsm8k",
           "tag": "rain_local", "dataset_path": "json", "dataset_name": None,
           "dataset_kwargs": {"data_files": {"test": str(data_dir / "gsm8k" / "test.jsonl"),
                                             "train": str(data_dir / "gsm8k" / "train.jsonl")},
                              "cache_dir": str(out / "hf_cache")}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "rain_gsm8k.yaml").write_text(json.dumps(cfg))
    return out


def lm_eval_gsm8k(lm, task_dir: Path, limit: int) -> tuple[list[str], dict[str, float]]:
    """lm_eval.simple_evaluate on the local gsm8k: (raw generations in item order, exact_match per filter)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    res = lm_eval.simple_evaluate(model=lm, tasks=["rain_gsm8k"], num_fewshot=5, limit=limit, log_samples=True,
                                  task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
                                  bootstrap_iters=0, fewshot_random_seed=1234)
    texts = {s["doc_id"]: s["resps"][0][0] for s in res["samples"]["rain_gsm8k"]}
    scores = {k.split(",")[1]: v for k, v in res["results"]["rain_gsm8k"].items()
              if k.startswith("exact_match,") and "stderr" not in k}
    return [texts[i] for i in range(limit)], scores


def backend_generate(lm, items) -> list[str]:
    """The task's requests handed to an lm-eval backend's generate_until, as lm-eval builds them."""
    from lm_eval.api.instance import Instance

    reqs = [Instance(request_type="generate_until", doc=it.doc, idx=0, arguments=(
        it.context, {"until": list(it.until), "max_gen_toks": it.max_gen_toks, "do_sample": False,
                     "temperature": 0.0})) for it in items]
    return lm.generate_until(reqs, disable_tqdm=True)


def timed(fn, warmup=None, repeats: int = 1):
    """(the fastest of `repeats` wall times, the output): on a shared machine the minimum is the least noisy."""
    if warmup is not None:
        warmup()  # lazy imports, datasets' converted copies, first-call allocations
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def compare(name: str, ours: list[str], theirs: list[str]) -> str:
    same = sum(a == b for a, b in zip(ours, theirs))
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            k = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            print(f"  {name} item {i}: differs from char {k}: rain {a[k:k + 60]!r} vs {b[k:k + 60]!r}")
    return f"{same}/{len(ours)}"


def table(tokenizer, runs: dict, extra: dict | None = None, extra_names: list[str] = ()) -> None:
    """One markdown row per evaluator: wall s, returned tokens per item and per second, texts equal to rain's."""
    ours = next(iter(runs.values()))[1]
    print("| evaluator | wall s | tok/item | tok/s | same text as rain |" + "".join(f" {n} |" for n in extra_names))
    print("|---" * (5 + len(extra_names)) + "|")
    for name, (secs, out) in runs.items():
        toks = sum(len(tokenizer.encode(t)) for t in out)
        cells = [f"{secs:.1f}", f"{toks / len(out):.0f}", f"{toks / secs:.0f}", compare(name, ours, out)]
        print(f"| {name} | " + " | ".join(cells + (extra or {}).get(name, [])) + " |")


# ----------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=20, help="GSM8K test items (5-shot)")
    p.add_argument("--humaneval-items", type=int, default=5)
    p.add_argument("--train-steps", type=int, default=500)
    p.add_argument("--hf-batch-size", type=int, default=1)
    p.add_argument("--show", type=int, default=2, help="print this many GSM8K generations")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="timed calls per evaluator; the fastest is shown")
    p.add_argument("--cache", type=Path, help="folder keeping the trained model and tokenizer between runs")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from lm_eval.models.huggingface import HFLM

    from rain.eval.harness import RainLM

    model, tokenizer = small_model(args.train_steps, args.cache)
    cfg = model.cfg

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = local_eval_dir(tmp / "eval", args.items)
        task_dir = gsm8k_task_dir(data, tmp / "tasks")
        hf_dir = export_hf(cfg, model.state_dict(), tokenizer, tmp / "hf")
        hf = HFLM(pretrained=str(hf_dir), dtype="float32", device="cpu", batch_size=args.hf_batch_size)
        rain_lm = RainLM(model, tokenizer)
        items = gsm8k_items(data, limit=args.items)
        n_ctx = [len(tokenizer.encode(it.context)) for it in items]
        print(f"machine: CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
              f"torch {torch.__version__}; model 2x128, context 2048 ({sum(p.numel() for p in model.parameters()):,} "
              f"params); GSM8K {args.items} items 5-shot, prompts {min(n_ctx)}-{max(n_ctx)} tokens")

        with torch.no_grad():
            gsm = {
                "rain": timed(lambda: (generate(model, tokenizer, items), None),
                              lambda: generate(model, tokenizer, items[:1]), args.repeats),
                f"lm-eval (hf backend, batch {args.hf_batch_size})": timed(
                    lambda: lm_eval_gsm8k(hf, task_dir, args.items), lambda: lm_eval_gsm8k(hf, task_dir, 1),
                    args.repeats),
                "lm-eval + RainLM": timed(lambda: lm_eval_gsm8k(rain_lm, task_dir, args.items),
                                          lambda: lm_eval_gsm8k(rain_lm, task_dir, 1), args.repeats),
            }
        ours = gsm["rain"][1][0]
        native = {f: sum(v) / len(v) for f, v in gsm8k_scores(ours, items).items()}
        gsm["rain"] = (gsm["rain"][0], (ours, native))
        for i in range(min(args.show, len(ours))):
            print(f"  rain item {i}: {ours[i][:300]!r}")
        print(f"\nGSM8K (first {args.items}, 5-shot)")
        filters = ["strict-match", "flexible-extract"]
        table(tokenizer, {name: (secs, out) for name, (secs, (out, _)) in gsm.items()},
              {name: [f"{em[f]:.3f}" for f in filters] for name, (_, (_, em)) in gsm.items()}, filters)

        he_items = humaneval_items(data, limit=args.humaneval_items)
        with torch.no_grad():
            he = {"rain": timed(lambda: generate(model, tokenizer, he_items),
                                lambda: generate(model, tokenizer, he_items[:1]), args.repeats),
                  f"lm-eval hf backend, batch {args.hf_batch_size}": timed(
                      lambda: backend_generate(hf, he_items), lambda: backend_generate(hf, he_items[:1]),
                      args.repeats),
                  "RainLM": timed(lambda: backend_generate(rain_lm, he_items),
                                  lambda: backend_generate(rain_lm, he_items[:1]), args.repeats)}
        for i in range(min(args.show, len(he_items))):
            print(f"  rain {he_items[i].doc['task_id']}: {he['rain'][1][i][:200]!r}")
        print(f"\nHumanEval (first {args.humaneval_items}, completions only)")
        table(tokenizer, he)


if __name__ == "__main__":
    main()
