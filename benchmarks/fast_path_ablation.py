"""What each part of rain's fast path gives: rain's training step with everything on, against the same with one
part switched off (`rain bench --disable PART`), alternating in one process so that a busy machine slows all
variants alike; the median of each variant's repeats is reported.

    python benchmarks/fast_path_ablation.py --preset tiny                       # CPU, eager fp32
    python benchmarks/fast_path_ablation.py --preset tiny --compile
    PYTHONPATH=src python benchmarks/fast_path_ablation.py --preset rain-v2 --micro-batch 32 --precision bf16 --compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from rain.config import load_config
from rain.train.benchmark import FAST_PATH, PRECISIONS, device_name, measure
from rain.runtime import pick_device


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--micro-batch", type=int, help="default: the preset's")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--parts", default=",".join(FAST_PATH), help="comma-separated, of: %(default)s")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    cfg = load_config(args.preset, [f"train.device={args.device!r}"])
    device = pick_device(cfg.train.device)
    micro_batch = args.micro_batch or cfg.train.micro_batch
    variants = {"all on": frozenset(), **{f"without {part}": frozenset([part]) for part in args.parts.split(",")}}
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.repeats):
        for name, off in variants.items():
            result = measure("rain", cfg, device, args.precision, args.compile, micro_batch, args.steps, args.warmup,
                             seed=r, disable=off)
            runs[name].append(result["tokens_per_s"])
            print(f"  {name}: {result['tokens_per_s']:,.0f} tokens/s", file=sys.stderr, flush=True)
    base = statistics.median(runs["all on"])
    print(f"{args.preset} on {device_name(device)}, micro-batch {micro_batch}, {args.precision}, "
          f"{'compiled' if args.compile else 'eager'}: median of {args.repeats} x {args.steps} steps")
    for name, values in runs.items():
        median = statistics.median(values)
        print(f"  {name:<26}{median:>10,.0f} tokens/s  {median / base:6.3f}x  {json.dumps(values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
