"""`rain train`, `rain sample`, `rain demo` and `rain bench` on the command line. The work lives in rain.train,
rain.data and rain.model, imported only when a command runs so that `rain --help` does not pay for torch.

`sample` lives here rather than in rain.eval.commands because `demo` ends by sampling and rain.train must not import
rain.eval (tests/test_layers.py); rain.model only generates from token ids and knows no files."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from rain.commands_common import (add_config_args, add_run_args, add_sampling_args, add_set_arg, add_teacher_arg,
                                  sampling_options, teacher_overrides)
from rain.errors import RainError

if TYPE_CHECKING:
    from rain.config import RunConfig

# `rain demo --quick`: a third of the steps, for a slow or busy machine (the loss still falls clearly).
QUICK_DEMO = ["train.max_steps=100", "train.eval_every=50", "train.warmup=10", "train.checkpoints=2"]
DEMO_PROMPTS = ["def fibonacci(n):", "The Python standard library", "Q: What is 12 + 30?\nA:"]
# `rain bench --precision` and `--disable` choices: the names of rain.train.benchmark's PRECISIONS and FAST_PATH
# (what each means is there), spelled again here because parsing must not load torch; tests/test_bench.py checks
# that the two agree.
PRECISIONS = ("fp32", "bf16", "bf16-master")
FAST_PATH = ("chunked-loss", "sdpa-gqa", "prefetch", "gc-pause")


def train_config(config: str, overrides: list[str], out: str | Path, *, resume: bool = False,
                 data: str | None = None) -> RunConfig:
    """The config `rain train` runs: on --resume the run's own saved config.json (the preset is not read again),
    otherwise the preset or TOML file; then the --set overrides; --data names the prepared data folder."""
    from rain.config import load_config

    saved = Path(out) / "config.json"
    cfg = load_config(saved if resume and saved.is_file() else config, overrides)
    if data:
        cfg.data.dir = data
    return cfg


def cmd_train(args) -> None:
    from rain.train.trainer import train

    if args.out is None and not (args.dry_run and not args.resume):
        raise RainError("rain train needs --out RUN, the run folder (only --dry-run goes without one)")
    cfg = train_config(args.config, args.set + teacher_overrides(args), args.out or ".", resume=args.resume,
                       data=args.data)
    if args.dry_run:
        print(format_plan(args.config, cfg, args.out))
        return
    train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, init_from=args.init_from, stop_after=args.stop_after,
          time_limit=args.time_limit * 3600 if args.time_limit else None)


def format_plan(config: str, cfg: RunConfig, out: str | None) -> str:
    """What `rain train --dry-run` prints: the run's size and its checkpoints' projected disk, from the config
    alone (the model and optimizer are built on the meta device; no data or GPU needed). With --out, whether the
    checkpoints fit on that folder's file system."""
    import torch

    from rain import checkpoint as ckpt
    from rain.runtime import pick_device
    from rain.train.trainer import check_free_space, checkpoint_disk_plan

    m, t = cfg.model, cfg.train
    device = pick_device("auto") if t.device == "auto" else torch.device(t.device)  # where bf16 `auto` is decided
    tokenizer = Path(cfg.data.dir) / "tokenizer.json" if cfg.data.dir else None
    plan = checkpoint_disk_plan(cfg, device, tokenizer)
    steps, tokens_per_step = cfg.total_steps(), cfg.tokens_per_step()
    lines = [f"rain train --config {config}: the plan (nothing is trained)",
             f"  model        {plan.parameters:,} parameters ({m.n_layer} layers x {m.d_model}, vocab {m.vocab_size:,}, "
             f"context {m.context:,})",
             f"  steps        {steps:,} of {tokens_per_step:,} tokens = {steps * tokens_per_step:,} tokens"
             if t.max_steps or not t.epochs else
             f"  steps        {t.epochs:g} epochs of the prepared data ({tokens_per_step:,} tokens a step; the count "
             "depends on the data)",
             f"  checkpoints  {plan.describe()}",
             f"  disk         {ckpt.format_size(plan.total)} ({plan.total:,} bytes) of checkpoints when the run ends; "
             f"{ckpt.format_size(plan.peak)} at most, while a new last is written beside the old"]
    if out is not None:
        try:
            check_free_space(Path(out), plan)
            lines.append(f"  free space   enough for them where {out} is")
        except RainError as exc:
            lines.append(f"  free space   NOT enough: {exc}")
    return "\n".join(lines)


def load_checkpoint(path: str, device: str):
    from rain import checkpoint as ckpt
    from rain.runtime import pick_device

    checkpoint = ckpt.find(path)
    model, cfg = ckpt.load_model(checkpoint, pick_device(device, option="--device"))
    return model, cfg, ckpt.tokenizer(checkpoint), checkpoint.folder


def sample_checkpoint(path: str | Path) -> Path:
    """What `rain sample PATH` reads: a run folder's best checkpoint (the lowest validation loss, which is what
    a user asking a run for samples wants; after overfitting, `last` is worse), or its `last` before the first
    evaluation saved a best; any other path as given."""
    from rain import checkpoint as ckpt

    best = Path(path) / "checkpoints" / "best"
    return best if ckpt.resolve(best).exists() else Path(path)


def sample(checkpoint: str | Path, prompts: list[str], *, device: str = "auto", max_tokens: int = 80,
           temperature: float = 0.8, top_k: int = 50, top_p: float = 0.95, seed: int = 0) -> Iterator[tuple[str, str]]:
    """(prompt, completion) for each prompt, generated with a KV cache from a checkpoint folder or a run folder's
    best checkpoint (see sample_checkpoint); prompt i is sampled with seed + i. Every prompt is checked against
    the context before the first is generated."""
    from rain.model.generate import generate

    model, cfg, tok, _ = load_checkpoint(str(sample_checkpoint(checkpoint)), device)
    encoded = [tok.encode(prompt) for prompt in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise RainError(f"prompt {i + 1} is empty: give some text for the model to continue")
        if len(ids) >= cfg.model.context:
            raise RainError(f"prompt {i + 1} has {len(ids)} tokens; the model's context is {cfg.model.context}: shorten it")
    for i, (prompt, ids) in enumerate(zip(prompts, encoded)):
        out = generate(model, ids, max_new_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       stop_ids=(tok.eot_id,), seed=seed + i, vocab_limit=tok.vocab_size)
        yield prompt, tok.decode(out)


def print_samples(checkpoint: str | Path, prompts: list[str], *, device: str = "auto", **options) -> None:
    folder = sample_checkpoint(checkpoint)
    for i, (prompt, completion) in enumerate(sample(folder, prompts, device=device, **options)):
        if i == 0:  # said once the checkpoint loaded and every prompt fits, so an error stays one line
            print(f"sampling {folder}", file=sys.stderr)
        print(f"--- {prompt!r}\n{prompt}{completion}\n", flush=True)


def cmd_sample(args) -> None:
    print_samples(args.checkpoint, args.prompt or DEMO_PROMPTS, device=args.device, **sampling_options(args))


def demo_config(quick: bool, overrides: list[str]) -> RunConfig:
    from rain.config import load_config

    return load_config("tiny", QUICK_DEMO + overrides if quick else overrides)


def cmd_demo(args) -> None:
    from rain.data.prepare import prepare
    from rain.train.trainer import train

    out = Path(args.out)
    t0 = time.time()
    cfg = demo_config(args.quick, args.set)
    data_dir = out / "data"
    if (data_dir / "manifest.json").exists() and not args.overwrite:
        print(f"using the corpus already prepared in {data_dir}")
    else:
        print("preparing the built-in corpus (CPython stdlib code, package docs, arithmetic) ...")
        manifest = prepare(cfg, data_dir, overwrite=True)
        tokens = sum(s["tokens"] for s in manifest["sources"]["train"].values())
        print(f"  {tokens:,} training tokens, tokenizer of {cfg.model.vocab_size:,} in {manifest['seconds']:.0f} s")
    cfg.data.dir = str(data_dir)
    summary = train(cfg, out / "run", overwrite=args.overwrite)
    print("\nsamples from the trained model:")
    print_samples(out / "run", DEMO_PROMPTS, **sampling_options(args))
    print(f"demo finished in {time.time() - t0:.0f} s; outputs in {out}/ (run/loss.png, run/metrics.jsonl, run/checkpoints/)")
    if summary.get("final_val_loss") is not None and summary["final_val_loss"] >= summary["first_val_loss"]:
        raise RainError("validation loss did not fall during the demo; something is wrong with this install")


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
    from rain.train.benchmark import bench
    from rain.runtime import pick_device

    overrides = list(args.set)
    if args.device:
        overrides.append(f"train.device={args.device!r}")
    if args.optimizer:
        overrides.append(f"train.optimizer={args.optimizer!r}")
    if args.checkpoint_layers is not None:
        overrides.append(f"train.checkpoint_layers={args.checkpoint_layers}")
    cfg = load_config(args.preset, overrides)
    precision = args.precision or cfg.train.precision
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


def cmd_plan(args) -> None:
    from rain.train.gpus import Gpu, gpu_named
    from rain.train.plan import format_plan, make_plan, write_config

    if args.peak_tflops or args.memory_gb:
        if not (args.peak_tflops and args.memory_gb and args.peak_tflops > 0 and args.memory_gb > 0):
            raise RainError("--peak-tflops and --memory-gb go together, both positive (a GPU not in the table)")
        gpu = Gpu(args.gpu or "custom", args.gpu or "custom GPU", args.memory_gb, args.peak_tflops, 0, "given")
    elif args.gpu:
        gpu = gpu_named(args.gpu)
    else:
        raise RainError("rain plan needs --gpu NAME (or --peak-tflops and --memory-gb)")
    if args.tokens is not None and args.params is not None:
        raise RainError("give --tokens or --params, not both: the budget fixes the other")
    for name in ("tokens", "params", "vocab", "context"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise RainError(f"--{name} {getattr(args, name)}: give a positive number")
    plan = make_plan(gpu, args.hours, preset=args.preset, family=args.shape, tokens=args.tokens, params=args.params,
                     tokens_per_param=args.tokens_per_param, vocab=args.vocab, context=args.context, mfu=args.mfu)
    print(format_plan(plan))
    if args.write:
        print(f"wrote {write_config(plan, args.write)} (rain train --config {args.write})")


def _count(text: str) -> int:
    """10B, 124M, 2e9 or 2000000000 as an int (argparse type)."""
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}.get(text[-1:].upper(), 1)
    try:
        return int(float(text[:-1] if scale != 1 else text) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a count such as 2000000000, 2e9, 2B or 124M") from None


def register_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="from a GPU and hours to a model size, tokens, micro-batch and ETA", description=
                       "Plan a run before training: the compute budget (peak bf16 x MFU x hours), the Chinchilla-"
                       "optimal size for it, a rain shape with its exact parameter count, the micro-batch that fits "
                       "the GPU, steps, checkpoint disk and the ETA. Pure arithmetic: no data, no GPU.")
    p.add_argument("--gpu", help="a GPU of rain's table (h200, h100-sxm, h100-pcie, a100-80gb, a100-40gb, l40s, l4, "
                   "a10, rtx-5090, rtx-4090, rtx-4080, rtx-3090, rtx-3080), or a name for --peak-tflops")
    p.add_argument("--hours", type=float, required=True, help="GPU hours to spend")
    p.add_argument("--tokens", type=_count, help="train on this many tokens (the model is sized to the budget)")
    p.add_argument("--params", type=_count, help="a model of about this many parameters (tokens follow)")
    p.add_argument("--tokens-per-param", type=float, default=20, help="without --tokens/--params: the ratio to size "
                   "the model for (default: Chinchilla's %(default)s; more is smaller and cheaper to serve)")
    p.add_argument("--preset", default="rain-v2", help="preset for vocab, context, batch and training settings "
                   "(default: %(default)s)")
    p.add_argument("--shape", choices=("deep", "gpt2"), default="deep", help="deep and narrow like rain-v2 "
                   "(16 dims a layer) or GPT-2-like (64 dims a layer) (default: %(default)s)")
    p.add_argument("--vocab", type=int, help="vocabulary size (default: the preset's)")
    p.add_argument("--context", type=int, help="context length (default: the preset's)")
    p.add_argument("--mfu", type=float, help="MFU to assume (default: rain's measured one for this GPU, else 0.40)")
    p.add_argument("--peak-tflops", type=float, help="bf16 dense peak of a GPU not in the table")
    p.add_argument("--memory-gb", type=float, help="memory of a GPU not in the table")
    p.add_argument("--write", help="write the planned run as a preset TOML here")
    p.set_defaults(func=cmd_plan)


def register(sub: argparse._SubParsersAction) -> None:
    register_train(sub)
    register_plan(sub)
    p = sub.add_parser("bench", help="training-step speed vs transformers' model of the same shape", description=
                       "Time rain's training step on synthetic tokens (warm-up excluded): tokens/s, MFU (6N + 12·L·d·T "
                       "FLOPs per token against the GPU's bf16 dense peak), the step split (data, forward+backward, "
                       "optimizer) and peak memory; then the same for transformers' Qwen3ForCausalLM/LlamaForCausalLM "
                       "of identical shape with the same optimizer and settings, and the ratio.")
    p.add_argument("--preset", default="tiny", help="a preset in configs/ or a TOML file (default: %(default)s)")
    add_set_arg(p, help="override a config value (repeatable)")
    p.add_argument("--micro-batch", help="sequences per step, or auto: the largest that fits (CUDA; default: the "
                   "preset's micro_batch, or auto where it sets train.auto_micro_batch)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile both models (default: the preset's train.compile)")
    p.add_argument("--precision", choices=PRECISIONS, help="fp32, bf16 (autocast, fp32 weights) or bf16-master (bf16 "
                   "weights, fp32 master copies in the optimizer); default: the preset's train.precision")
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


def register_train(sub: argparse._SubParsersAction) -> None:
    """`rain train`, `rain sample` and `rain demo`."""
    p = sub.add_parser("train", help="pretrain a model on prepared shards", description=
                       "Train per the config on shards from `rain prepare`; writes checkpoints/, metrics.jsonl, "
                       "run_summary.json and loss.png into --out.")
    add_config_args(p)
    p.add_argument("--data", help="prepared data folder (from `rain prepare`); on --resume the run's own is used")
    p.add_argument("--out", help="run folder (required, except with --dry-run)")
    add_run_args(p, time_limit=True)
    p.add_argument("--init-from", help="start from this checkpoint's weights with a fresh optimizer and schedule")
    add_teacher_arg(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan (parameters, steps, tokens, checkpoints and "
                   "their projected disk) and train nothing; needs no prepared data and no GPU")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="complete prompts with a trained model", description=
                       "Generate continuations with a KV cache. CHECKPOINT is a checkpoint folder or a run folder: "
                       "its best checkpoint (the lowest validation loss), or its last before the first evaluation.")
    p.add_argument("checkpoint")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable; default: three demo prompts)")
    add_sampling_args(p)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("demo", help="prepare the built-in corpus, train `tiny`, evaluate and sample", description=
                       "Everything in a row on the built-in corpus: about 3 minutes on an idle 2-core CPU (300 "
                       "steps; it prints the time left after the first 10), about 1 minute with --quick.")
    p.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="100 training steps instead of 300, for a slow or busy machine")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    add_set_arg(p, help="override the tiny preset (repeatable)")
    add_sampling_args(p)
    p.set_defaults(func=cmd_demo)
