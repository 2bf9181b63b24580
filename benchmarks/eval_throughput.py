"""Evaluator throughput vs the model's plain forward at the same batch shapes (docs/performance.md, Evaluation).

The multiple-choice scorer (rain.eval.multiple_choice.score_tokens) packs the choices of a question into
one row and batches rows by length. This script records the (batch, length) of every batch it runs, then
times the plain forward `model(idx)` (logits at every position) on exactly those shapes. Both push the same
token positions, so the ratio of their throughputs is the scorer's overhead: masks, gathers, log-softmax.

    python benchmarks/eval_throughput.py --eval-data ../shared/data/eval            # tiny preset, random weights
    python benchmarks/eval_throughput.py --eval-data ../shared/data/eval --shots 5 --items 500

Also printed: "request tokens/s", the context + continuation tokens of every request per second of scoring,
i.e. what an evaluator without packing would have to push through the model for the same results.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from contextlib import nullcontext

import torch

from rain.config import load_config
from rain.data.tokenizer import Tokenizer, train_bpe
from rain.eval import multiple_choice as mc
from rain.eval.tasks import build_requests, load_task
from rain.model import Transformer


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval-data", default="../shared/data/eval", help="benchmark files (layout of shared/data/eval)")
    p.add_argument("--preset", default="tiny", help="model shape (random weights): a preset or TOML (default: tiny)")
    p.add_argument("--tokenizer", help="a tokenizer.json (default: a BPE of the preset's vocab size trained on the items)")
    p.add_argument("--items", type=int, default=500, help="hellaswag items (default: %(default)s)")
    p.add_argument("--shots", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="timed passes of each, interleaved; medians are reported")
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    cfg = load_config(args.preset).model
    torch.manual_seed(0)
    model = Transformer(cfg).to(device).eval()

    data = load_task("hellaswag", args.eval_data, need_pool=args.shots > 0)
    task = build_requests("hellaswag", shots=args.shots, limit=args.items, data=data)
    texts = [c + k for item in task.items for c, k in item.requests]
    tokenizer = Tokenizer.from_file(args.tokenizer) if args.tokenizer else train_bpe(texts, cfg.vocab_size)
    t0 = time.perf_counter()
    requests = mc.tokenize_requests(tokenizer, [r for item in task.items for r in item.requests])
    tokenize_s = time.perf_counter() - t0

    shapes: list[tuple[int, int]] = []
    score_batch = mc._score_batch

    def recording(model, batch, pack, device):
        shapes.append((len(batch), max(len(r) for r in batch)))
        return score_batch(model, batch, pack, device)

    def run_scorer() -> tuple[float, float]:
        sync(device)
        t, c = time.perf_counter(), time.process_time()
        with autocast:
            mc.score_tokens(model, requests, args.batch_size)
        sync(device)
        return time.perf_counter() - t, time.process_time() - c

    inputs = None

    @torch.inference_mode()
    def run_forward() -> tuple[float, float]:
        sync(device)
        t, c = time.perf_counter(), time.process_time()
        with autocast:
            for idx in inputs:
                model(idx)
        sync(device)
        return time.perf_counter() - t, time.process_time() - c

    mc._score_batch = recording
    run_scorer()  # warm-up, and the shapes
    mc._score_batch = score_batch
    inputs = [torch.randint(0, cfg.vocab_size, shape, device=device) for shape in shapes]
    run_forward()  # warm-up
    scorer_s, forward_s = [], []
    for _ in range(args.repeats):  # interleaved, so drift in the machine's speed hits both alike
        scorer_s.append(run_scorer())
        forward_s.append(run_forward())
    scorer, forward = statistics.median(s[0] for s in scorer_s), statistics.median(f[0] for f in forward_s)
    scorer_cpu, forward_cpu = statistics.median(s[1] for s in scorer_s), statistics.median(f[1] for f in forward_s)

    positions = sum(b * t for b, t in shapes)
    request_tokens = sum(len(c) + len(k) for c, k in requests)
    print(f"hellaswag {args.shots}-shot, {len(task.items)} items, {len(requests)} requests; model {args.preset} "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, context {cfg.context}); "
          f"{len(shapes)} batches of <= {args.batch_size} rows, {positions:,} token positions")
    print(f"machine: {machine(device)}")
    print(f"plain forward  {positions / forward:12,.0f} tokens/s  ({forward:.2f} s, median of {args.repeats})")
    print(f"evaluator      {positions / scorer:12,.0f} tokens/s  ({scorer:.2f} s)  = {forward / scorer:.0%} of the forward")
    if device.type == "cpu":  # CPU time of all threads: steadier than wall time on a shared machine
        print(f"CPU time       forward {forward_cpu:.2f} s, evaluator {scorer_cpu:.2f} s  = "
              f"{forward_cpu / scorer_cpu:.0%} of the forward")
    print(f"request tokens {request_tokens / scorer:12,.0f} tokens/s  ({request_tokens:,} unpacked tokens; "
          f"tokenising them took {tokenize_s:.2f} s more)")


if __name__ == "__main__":
    main()
