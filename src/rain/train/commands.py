"""`rain bench` on the command line; the measuring lives in rain.train.bench, imported only when the command runs
so that `rain --help` does not pay for torch."""

from __future__ import annotations

import argparse
import json

from rain.errors import RainError

PRECISIONS = ("fp32", "bf16", "bf16-master")  # bf16: autocast over fp32 weights; bf16-master: bf16 weights
# Parts of rain's fast path that --disable switches off, to measure what each gives.
FAST_PATH = ("chunked-loss", "sdpa-gqa", "prefetch", "gc-pause")


def format_report(preset: str, r: dict) -> str:
    lines = [f"rain bench {preset}: {r['device']}, torch {r['torch']}, micro-batch {r['micro_batch']} x {r['seq_len']}, "
             f"{r['precision']}, {'compiled' if r['compile'] else 'eager'}, {r['optimizer']}, "
             f"median of {r['repeats']} x {r['steps']} steps after {r['warmup']} warm-up"
             + (f", rain without {', '.join(r['disabled'])}" if r["disabled"] else ""),
             f"{'':<34}{'tokens/s':>10}{'TFLOP/s':>9}{'MFU':>7}{'step ms':>9}{'fwd+bwd':>9}{'optim':>8}{'data':>7}"
             f"{'peak GB' if r['device_type'] == 'cuda' else 'peak RSS':>9}"]
    for kind in ("rain", "transformers"):
        if kind not in r:
            continue
        x, s = r[kind], r[kind]["split_ms"]
        mfu = f"{x['mfu']:.1%}" if x["mfu"] is not None else "-"
        mem = f"{x.get('peak_memory_gb', x.get('peak_rss_gb')) or '-'}"
        name = f"{kind} ({x['model']})"
        lines.append(f"{name:<34}{x['tokens_per_s']:>10,.0f}{x['flops_per_s'] / 1e12:>9.2f}{mfu:>7}{x['step_ms']:>9.1f}"
                     f"{s['forward_backward']:>9.1f}{s['optimizer']:>8.1f}{s['data']:>7.2f}{mem:>9}")
        if x.get("attention_kernels"):
            lines.append(f"{'':<34}attention kernels: {', '.join(x['attention_kernels'])}")
    if "speedup_vs_transformers" in r:
        lines.append(f"rain / transformers: {r['speedup_vs_transformers']:.3f}x tokens/s")
    return "\n".join(lines)


def cmd_bench(args) -> None:
    from rain.config import load_config
    from rain.train.bench import bench
    from rain.runtime import pick_device

    overrides = list(args.set)
    if args.device:
        overrides.append(f"train.device={args.device!r}")
    if args.optimizer:
        overrides.append(f"train.optimizer={args.optimizer!r}")
    if args.checkpoint_layers is not None:
        overrides.append(f"train.checkpoint_layers={args.checkpoint_layers}")
    cfg = load_config(args.preset, overrides)
    precision = args.precision or cfg.train.dtype
    if precision == "auto":
        precision = "bf16" if pick_device(cfg.train.device).type == "cuda" else "fp32"
    micro_batch = args.micro_batch or ("auto" if cfg.train.auto_micro_batch else str(cfg.train.micro_batch))
    if micro_batch != "auto" and not micro_batch.isdigit():
        raise RainError(f"--micro-batch {micro_batch!r}: a positive number or auto")
    compile_model = cfg.train.compile if args.compile is None else args.compile
    quiet = args.json

    def log(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)

    report = bench(cfg, micro_batch=micro_batch, precision=precision, compile_model=compile_model, steps=args.steps,
                   warmup=args.warmup, repeats=args.repeats, compare_hf=not args.no_hf, memory_gb=args.memory_gb,
                   disable=args.disable, log=log)
    report = {"preset": args.preset, **report}
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(report) + "\n")
    print(json.dumps(report) if args.json else format_report(args.preset, report))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="training-step speed vs transformers' model of the same shape", description=
                       "Time rain's training step on synthetic tokens (warm-up excluded): tokens/s, MFU (6N + 12·L·d·T "
                       "FLOPs per token against the GPU's bf16 dense peak), the step split (data, forward+backward, "
                       "optimizer) and peak memory; then the same for transformers' Qwen3ForCausalLM/LlamaForCausalLM "
                       "of identical shape with the same optimizer and settings, and the ratio.")
    p.add_argument("--preset", default="tiny", help="a preset in configs/ or a TOML file (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--micro-batch", help="sequences per step, or auto: the largest that fits (CUDA; default: the "
                   "preset's micro_batch, or auto where it sets train.auto_micro_batch)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile both models (default: the preset's train.compile)")
    p.add_argument("--precision", choices=PRECISIONS, help="fp32, bf16 (autocast, fp32 weights) or bf16-master (bf16 "
                   "weights, fp32 master copies in the optimizer); default: the preset's train.dtype")
    p.add_argument("--optimizer", choices=("adamw", "muon"), help="default: the preset's train.optimizer")
    p.add_argument("--checkpoint-layers", type=int, help="blocks with activation checkpointing (default: the preset's)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first, compilation included (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=1, help="alternate rain and transformers this many times and report "
                   "the median (default: %(default)s)")
    p.add_argument("--memory-gb", type=float, help="memory budget for --micro-batch auto (default: 90%% of the GPU's)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (default: the preset's train.device)")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    p.add_argument("--disable", action="append", default=[], choices=FAST_PATH, help="switch off one part of rain's "
                   "fast path (repeatable), to measure what it gives: %(choices)s")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--out", help="also append the JSON object to this file (one line per run)")
    p.set_defaults(func=cmd_bench)
