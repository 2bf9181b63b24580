"""Mixture schedules compared on the CPU proxy (issue 14, item 3): the `tiny` preset on the local 60/30/10 corpus
of benchmarks/cpu_speedrun.py (web, code, math; prepared by its prepared_data), trained for the same training FLOPs
per arm, and validation bits per byte reported overall and per source.

Arms (every one starts from data.weights = web 0.6, code 0.3, math 0.1):
  fixed     those weights throughout
  staged    those weights, then from 80% of the run a blended stage to web 0.4, code 0.3, math 0.3 (more math late)
  reweight  [data.reweight] against the run's own early losses (the first validation from 10% on), eta 1,
            smoothing 0.1 towards the base weights, floor 0.05 and cap 0.8 per source (rain.data.reweight)

Every arm validates every --eval-every steps (the same validation cost; the FLOPs counted are training FLOPs
only, 6N + 12·L·d·T per token as cpu_speedrun counts them), with the same seed per arm, so the same initial weights.

    python benchmarks/mixture_proxy.py --out /tmp/mix --flops 2e13 --seeds 1337,1338
    python benchmarks/mixture_proxy.py --out /tmp/mix-smoke --steps 6 --eval-every 2 --arms fixed,reweight
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from cpu_speedrun import prepared_data

from rain.config import load_config
from rain.model import Transformer
from rain.train.metrics import flops_per_token, read_metrics
from rain.train.trainer import train

BASE = "data.weights={web = 0.6, code = 0.3, math = 0.1}"
ARMS = {
    "fixed": [BASE],
    "staged": [BASE, "data.stage=[{start = 0.8, weights = {web = 0.4, code = 0.3, math = 0.3}, blend = true}]"],
    "reweight": [BASE, ("data.reweight={reference = 'early', eta = 1.0, smoothing = 0.1, floor = 0.05, cap = 0.8, "
                        "start = 0.1}")],
}


def run_arm(name: str, data: Path, out: Path, flops: float, steps: int, eval_every: int, seed: int,
            extra: list[str], log) -> dict:
    """One arm for `flops` training FLOPs (or exactly `steps` steps), validating every `eval_every` steps (0: ten
    times a run); its final validation, per source too, and the mixture it ended with."""
    cfg = load_config("tiny", ["train.device='cpu'", "train.checkpoints=0", "train.eval_batches=40",
                               "train.log_every=25", f"train.seed={seed}", f"data.dir='{data}'"])
    fpt = flops_per_token(cfg.model, Transformer(cfg.model).num_params())
    steps = steps or max(1, int(flops // (fpt * cfg.tokens_per_step())))
    cfg = load_config(cfg, ARMS[name] + extra + [f"train.max_steps={steps}",
                                                 f"train.eval_every={eval_every or max(1, steps // 10)}"])
    t0 = time.time()
    run = out / f"{name}-seed{seed}"
    summary = train(cfg, run, overwrite=True, log=lambda *_: None)
    records = read_metrics(run)
    final = [r for r in records if r["kind"] == "val"][-1]
    mixture = [r["mixture"] for r in records if r["kind"] == "train" and "mixture" in r]
    result = {"arm": name, "seed": seed, "steps": steps, "flops": steps * cfg.tokens_per_step() * fpt,
              "val_loss": final["val_loss"], "val_bpb": final.get("val_bpb"),
              **{k: v for k, v in final.items() if k.startswith(("val_loss/", "val_bpb/"))},
              "final_mixture": mixture[-1] if mixture else None, "source_windows": summary.get("source_windows"),
              "reweightings": sum(r["kind"] == "mixture" for r in records), "seconds": round(time.time() - t0, 1)}
    log(f"  {name} (seed {seed}): {steps} steps, val {result['val_bpb']:.4f} bits/byte, ended on "
        f"{result['final_mixture']}, {result['seconds']:.0f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default="fixed,staged,reweight", help="comma-separated, of: " + ", ".join(ARMS))
    p.add_argument("--flops", type=float, default=2e13, help="training FLOPs per arm (default: %(default)g)")
    p.add_argument("--steps", type=int, default=0, help="train every arm exactly this many steps instead")
    p.add_argument("--eval-every", type=int, default=0, help="validate every N steps (default: ten times a run)")
    p.add_argument("--seeds", default="1337,1338", help="comma-separated training seeds (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], help="an extra override for every arm")
    p.add_argument("--out", default="runs/mixture_proxy", help="working folder (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepared_data(out, print)
    results = [run_arm(arm, data, out, args.flops, args.steps, args.eval_every, int(seed), args.set, print)
               for arm in args.arms.split(",") for seed in args.seeds.split(",")]
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{'arm':<10} {'bpb (median)':>12}  per source (median bpb)")
    for arm in args.arms.split(","):
        rows = [r for r in results if r["arm"] == arm]
        per = {k.split("/", 1)[1]: statistics.median(r[k] for r in rows) for k in rows[0] if k.startswith("val_bpb/")}
        print(f"{arm:<10} {statistics.median(r['val_bpb'] for r in rows):>12.4f}  "
              + ", ".join(f"{n} {v:.4f}" for n, v in per.items()))
    print(f"(results: {out / 'results.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
