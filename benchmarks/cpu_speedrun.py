"""A CPU proxy for quality per unit of compute: train the `tiny` preset on a fixed local corpus (../shared/data
plus the Python standard library, mixed per benchmarks/rain-v2-local.toml) for a fixed number of training FLOPs
(6N + 12·L·d·T per token), once per recipe in the same run, and report validation bits per byte.

Recipes ("arms"):
  rain      the tiny preset as shipped (AdamW b2 0.99, warm-up, cosine to lr/10, decay on matrices only,
            gradient clipping, QK-norm)
  baseline  plain: AdamW with torch's default betas (0.9, 0.999) and weight decay (0.01), cosine to 0 after the
            same warm-up, same peak LR, no gradient clipping, no QK-norm
  muon      rain's recipe with Muon for the hidden matrices (train.optimizer=muon)
  moe       rain's recipe with each MLP split into 8 experts of width 384, top-2 routing: the same FLOPs per
            token as the dense MLP of 768 (only the experts a token uses count), 2.4x the parameters (12.3M)

    python benchmarks/cpu_speedrun.py                      # all three arms, 2e13 FLOPs each (~300 steps)
    python benchmarks/cpu_speedrun.py --flops 1e13 --arms rain,baseline
    python benchmarks/cpu_speedrun.py --arms rain,moe --seeds 1337,1338
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from rain.config import load_config
from rain.data.prepare import prepare
from rain.model import Transformer
from rain.train.metrics import flops_per_token
from rain.train.trainer import train

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "rain-v2-local.toml"
ARMS = {
    "rain": [],
    "baseline": ["model.qk_norm=false", "train.beta2=0.999", "train.weight_decay=0.01", "train.min_lr=0.0",
                 "train.grad_clip=0"],
    "muon": ["train.optimizer='muon'"],
    "moe": ["model.n_experts=8", "model.experts_per_token=2", "model.expert_d_ff=384"],
}


def prepared_data(out: Path, log) -> Path:
    data = out / "data"
    if (data / "manifest.json").is_file():
        return data
    cfg = load_config("tiny", [f"data.mixture='{CORPUS}'"])
    log(f"preparing the corpus ({CORPUS.name}) into {data} ...")
    t0 = time.time()
    prepare(cfg, data, overwrite=True)
    log(f"  done in {time.time() - t0:.0f} s")
    return data


def run_arm(name: str, data: Path, out: Path, flops: float, seed: int, extra: list[str], log) -> dict:
    cfg = load_config("tiny", ARMS[name] + extra + [f"train.seed={seed}", "train.device='cpu'", "train.checkpoints=0",
                                                    "train.eval_batches=40", "train.log_every=25"])
    return train_for_flops(cfg, name, data, out / f"{name}-seed{seed}", flops, ARMS[name] + extra, log)


def train_for_flops(cfg, name: str, data: Path, run: Path, flops: float, overrides: list[str], log,
                    steps: int = 0) -> dict:
    """Train `cfg` on `data` for `flops` training FLOPs (or exactly `steps` steps), validating once at the end;
    the schedule spans the run. Returns the run's figures (val bits/byte among them)."""
    cfg.data.dir = str(data)
    fpt = flops_per_token(cfg.model, Transformer(cfg.model).num_params())
    steps = steps or max(1, int(flops // (fpt * cfg.tokens_per_step())))
    cfg.train.max_steps = cfg.train.eval_every = steps
    t0 = time.time()
    summary = train(cfg, run, overwrite=True, log=lambda *_: None)
    result = {"arm": name, "seed": cfg.train.seed, "steps": steps, "tokens": summary["tokens_seen"],
              "flops": steps * cfg.tokens_per_step() * fpt, "val_loss": summary["final_val_loss"],
              "val_bpb": summary["final_val_bpb"], "seconds": round(time.time() - t0, 1),
              "tokens_per_s": summary["tokens_per_s"], "overrides": overrides}
    log(f"  {name} (seed {cfg.train.seed}): {steps} steps, val loss {result['val_loss']:.4f}, "
        f"{result['val_bpb']:.4f} bits/byte, {result['seconds']:.0f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flops", type=float, default=2e13, help="training FLOPs per arm (default: %(default)g)")
    p.add_argument("--arms", default="rain,baseline,muon", help="comma-separated, of: " + ", ".join(ARMS))
    p.add_argument("--seeds", default="1337", help="comma-separated training seeds; bpb is their median")
    p.add_argument("--set", action="append", default=[], help="an extra override for every arm")
    p.add_argument("--out", default="runs/cpu_speedrun", help="working folder (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arm(s) {unknown}; known: {', '.join(ARMS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    data = prepared_data(out, log)
    results = [run_arm(arm, data, out, args.flops, int(seed), args.set, log)
               for seed in args.seeds.split(",") for arm in arms]
    table = {arm: statistics.median(r["val_bpb"] for r in results if r["arm"] == arm) for arm in arms}
    report = {"flops_per_arm": args.flops, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "median_val_bpb": table, "runs": results}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'arm':<10}{'val bits/byte':>15}")
    for arm, bpb in table.items():
        print(f"{arm:<10}{bpb:>15.4f}")
    if "rain" in table and "baseline" in table:
        verdict = "lower" if table["rain"] < table["baseline"] else "NOT lower"
        print(f"rain's default is {verdict} than the baseline by {table['baseline'] - table['rain']:+.4f} bits/byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
