"""Training recipes compared on a CPU proxy of rain-v2: the preset's shape scaled down with its depth-to-width
ratio kept (32 x 512 -> 8 x 128: GQA 4/2 heads of 32, SwiGLU 4x, context 256, vocab 8,192), trained on the
corpus of benchmarks/cpu_speedrun.py (benchmarks/rain-v2-local.toml) with each preset's own training recipe read
from its TOML, and validation bits per byte reported at a fixed budget of training FLOPs.

Arms (each one preset's [train] recipe; everything else is the proxy's):
  seed    configs/rain-v2.toml: AdamW (0.9, 0.999), wd 0.1, warm-up 1% + cosine to 0, clip 1
  muon    configs/rain-v2-muon.toml: Muon for the hidden matrices, AdamW for embeddings and norms, WSD

Every arm trains with the same seed, so the same initial weights and the same batches in the same order (the
window order is a function of train.seed); a shorter arm sees a prefix of a longer one's data. An arm's share of
the FLOPs (--share muon=0.6) shortens its run, and its schedule with it (a WSD decay ends the shorter run).

    python benchmarks/recipe_proxy.py --out /tmp/recipe --flops 2e13 --share muon=0.6 --seeds 1337,1338
    python benchmarks/recipe_proxy.py --out /tmp/recipe --arms muon --steps 150 --width 256 \\
        --sweep train.muon_lr=0.01,0.02,0.04                       # an LR sweep at a fixed number of steps
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from cpu_speedrun import prepared_data, train_for_flops

from rain.config import load_config

ARMS = {"seed": "rain-v2", "muon": "rain-v2-muon"}
# What a preset's [train] recipe is: the optimiser, its schedule and regularisation. The rest (batch, precision,
# compile, checkpoints, the run's length) belongs to the proxy.
RECIPE = ("optimizer", "lr", "min_lr", "warmup", "schedule", "decay_frac", "weight_decay", "beta1", "beta2", "eps",
          "grad_clip", "muon_lr", "muon_warmup", "muon_schedule", "muon_momentum", "muon_weight_decay")
DEPTH_DIVISOR, HEAD_DIM, CONTEXT, VOCAB = 4, 32, 256, 8192


def proxy_config(preset: str, width: int, seed: int, extra: list[str]):
    """The tiny preset's CPU settings (8 x 256 tokens a step, fp32, eager) with `preset`'s [train] recipe and its
    model scaled: n_layer / 4, d_model = width, heads of 32 in the preset's query/key-value ratio, d_ff in the
    preset's ratio to d_model; norms, QK-norm, tying, RoPE and init as the preset has them."""
    src = load_config(preset)
    cfg = load_config("tiny", ["train.device='cpu'", "train.checkpoints=0", "train.eval_batches=40",
                               "train.log_every=25"])
    m = src.model
    n_head = width // HEAD_DIM
    cfg.model = type(m)(**{**vars(m), "vocab_size": VOCAB, "n_layer": m.n_layer // DEPTH_DIVISOR, "d_model": width,
                           "n_head": n_head, "n_kv_head": n_head * m.n_kv_head // m.n_head, "head_dim": HEAD_DIM,
                           "d_ff": width * m.d_ff // m.d_model, "context": CONTEXT})
    for key in RECIPE:
        setattr(cfg.train, key, getattr(src.train, key))
    return load_config(cfg, extra + [f"train.seed={seed}"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default="seed,muon", help="comma-separated, of: " + ", ".join(ARMS))
    p.add_argument("--flops", type=float, default=2e13, help="training FLOPs of a full arm (default: %(default)g)")
    p.add_argument("--share", action="append", default=[], metavar="ARM=FRACTION",
                   help="train ARM for FRACTION of --flops (default 1)")
    p.add_argument("--steps", type=int, default=0, help="train every arm exactly this many steps instead")
    p.add_argument("--width", type=int, default=128, help="the proxy's d_model (default: %(default)s)")
    p.add_argument("--seeds", default="1337", help="comma-separated training seeds")
    p.add_argument("--set", action="append", default=[], help="an override for every arm, after its recipe")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="one run per value of KEY (each --sweep on its own, the others at the recipe's value)")
    p.add_argument("--out", default="runs/recipe_proxy", help="working folder (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    arms = args.arms.split(",")
    if unknown := [a for a in arms if a not in ARMS]:
        p.error(f"unknown arm(s) {unknown}; known: {', '.join(ARMS)}")
    shares = {a: float(f) for a, f in (s.split("=", 1) for s in args.share)}
    variants = [[]] if not args.sweep else [
        [f"{key}={value}"] for key, values in (s.split("=", 1) for s in args.sweep) for value in values.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    data = prepared_data(out, log)
    results = []
    for seed in map(int, args.seeds.split(",")):
        for arm in arms:
            for variant in variants:
                extra = args.set + variant
                cfg = proxy_config(ARMS[arm], args.width, seed, extra)
                tag = "".join(f"-{o.split('.', 1)[1]}" for o in extra).replace("'", "")
                name = f"{arm}-w{args.width}{tag}"
                r = train_for_flops(cfg, name, data, out / "runs" / f"{name}-seed{seed}",
                                    args.flops * shares.get(arm, 1.0), extra, log, steps=args.steps)
                results.append({**r, "width": args.width, "share": shares.get(arm, 1.0)})
                with (out / "results.jsonl").open("a") as f:
                    f.write(json.dumps(results[-1]) + "\n")
    print(f"{'run':<48}{'seed':>6}{'steps':>7}{'FLOPs':>10}{'bits/byte':>11}")
    for r in results:
        print(f"{r['arm']:<48}{r['seed']:>6}{r['steps']:>7}{r['flops']:>10.3g}{r['val_bpb']:>11.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
