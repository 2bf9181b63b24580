"""The GPU measurements behind the Speed section of docs/performance.md, in one command. Each run is
`rain bench ... --json --out FILE` in a fresh process (so compilation caches and memory do not leak between
runs); a markdown table of everything in FILE is printed at the end.

    PYTHONPATH=src python benchmarks/gpu_bench.py --out bench.jsonl                  # the targets (core)
    PYTHONPATH=src python benchmarks/gpu_bench.py --out bench.jsonl --groups ablations,memory
    python benchmarks/gpu_bench.py --table bench.jsonl                                # table only

Groups, most important first (each rain-v2 run with transformers compiled too takes a few minutes):
  core       rain-v2 and gpt2-124m at 32x1024, bf16 autocast, compiled, vs transformers
  eager      the same two uncompiled, vs transformers
  precision  rain-v2 with bf16 weights + fp32 master copies, and in TF32 fp32
  ablations  rain-v2 compiled with one part of the fast path switched off at a time
  memory     rain-v2 --micro-batch auto in a 24 GB budget (peak per micro-batch); 64x1024 checkpointed
  optimizer  rain-v2 with Muon
  moe        moe-150m at 32x1024, bf16 autocast, compiled, vs transformers' Qwen3MoeForCausalLM
  tiny       the tiny preset on the GPU, vs transformers
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# rain-v2 at 32 x 1024: 64 x 1024 without activation checkpointing needs ~85 GB in eager mode
# (benchmarks/activation_memory.py); the memory group runs 64 x 1024 with checkpointing.
V2 = ["--preset", "rain-v2", "--micro-batch", "32", "--precision", "bf16"]
GPT2 = ["--preset", "gpt2-124m", "--micro-batch", "32", "--precision", "bf16"]
GROUPS = {
    "core": [V2 + ["--compile"], GPT2 + ["--compile"]],
    "eager": [V2 + ["--no-compile"], GPT2 + ["--no-compile"]],
    "precision": [["--preset", "rain-v2", "--micro-batch", "32", "--precision", p, "--compile", "--no-hf"]
                  for p in ("bf16-master", "fp32")],
    "ablations": [V2 + ["--compile", "--no-hf", "--disable", part]
                  for part in ("chunked-loss", "sdpa-gqa", "prefetch", "gc-pause")],
    "memory": [["--preset", "rain-v2", "--micro-batch", "auto", "--memory-gb", "24", "--precision", "bf16",
                "--compile", "--no-hf", "--steps", "5"],
               ["--preset", "rain-v2", "--micro-batch", "64", "--precision", "bf16", "--compile", "--no-hf",
                "--checkpoint-layers", "32"]],
    "optimizer": [V2 + ["--compile", "--no-hf", "--optimizer", "muon"]],
    "moe": [["--preset", "moe-150m", "--micro-batch", "32", "--precision", "bf16", "--compile"]],
    "tiny": [["--preset", "tiny", "--micro-batch", "64", "--precision", "bf16", "--compile"]],
}


def table(path: Path) -> str:
    rows = ["| preset | micro-batch | precision | compile | optimizer | off | model | tokens/s | MFU | step ms "
            "| fwd+bwd / optim / data ms | peak GB | attention | vs transformers |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for line in path.read_text().splitlines():
        r = json.loads(line)
        for kind in ("rain", "transformers"):
            if kind not in r:
                continue
            x, s = r[kind], r[kind]["split_ms"]
            mfu = f"{x['mfu']:.1%}" if x.get("mfu") is not None else "-"
            ratio = f"{r['speedup_vs_transformers']:.2f}x" if kind == "rain" and "speedup_vs_transformers" in r else ""
            rows.append(f"| {r['preset']} | {r['micro_batch']} | {r['precision']} | {r['compile']} | {r['optimizer']}"
                        f"{'+ckpt' + str(r['checkpoint_layers']) if r['checkpoint_layers'] else ''} "
                        f"| {','.join(r['disabled']) or '-'} | {x['model']} | {x['tokens_per_s']:,.0f} | {mfu} "
                        f"| {x['step_ms']:.1f} | {s['forward_backward']:.1f} / {s['optimizer']:.1f} / {s['data']:.2f} "
                        f"| {x.get('peak_memory_gb', '-')} | {','.join(x.get('attention_kernels') or ['-'])} | {ratio} |")
        if "micro_batch_probe" in r:
            probe = r["micro_batch_probe"]
            rows.append(f"| {r['preset']} probe ({probe['budget_gb']} GB budget): peak reserved GB by micro-batch "
                        f"{probe['peak_reserved_gb']} |" + " |" * 13)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench.jsonl", help="JSON lines file the runs append to")
    p.add_argument("--groups", default="core", help=f"comma-separated, of: {', '.join(GROUPS)} (or all)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--table", metavar="FILE", help="only print the table of an existing JSON lines file")
    args = p.parse_args(argv)
    if args.table:
        print(table(Path(args.table)))
        return 0
    groups = list(GROUPS) if args.groups == "all" else args.groups.split(",")
    out = Path(args.out)
    failed = 0
    for group in groups:
        for run in GROUPS[group]:
            extra = [] if "--steps" in run else ["--steps", str(args.steps)]
            cmd = [sys.executable, "-m", "rain.cli", "bench", *run, *extra, "--warmup", str(args.warmup), "--json",
                   "--out", str(out)]
            print("$ rain bench " + " ".join(cmd[4:]), flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                failed += 1
                print(done.stderr[-3000:], flush=True)
            else:
                print(done.stdout.strip()[:400], flush=True)
    if out.is_file():
        print(table(out))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
