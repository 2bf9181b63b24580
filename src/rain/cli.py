"""The `rain` command: one entry for every stage of the pipeline."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rain.errors import RainError

if TYPE_CHECKING:
    from rain.config import RunConfig

COMMAND_MODULES = ["rain.data.commands", "rain.eval.commands", "rain.posttrain.commands", "rain.export.commands", "rain.train.commands"]
# `rain demo --quick`: a third of the steps, for a slow or busy machine (the loss still falls clearly).
QUICK_DEMO = ["train.max_steps=100", "train.eval_every=50", "train.warmup=10", "train.checkpoints=2"]
DEMO_PROMPTS = ["def fibonacci(n):", "The Python standard library", "Q: What is 12 + 30?\nA:"]


def _config(args) -> "RunConfig":
    from rain.config import load_config

    return load_config(args.config, args.set)


def _add_config_args(p: argparse.ArgumentParser, default: str | None = "tiny") -> None:
    from rain.config import PRESET_DIR  # standard library only: `rain --help` stays fast

    presets = ", ".join(sorted(path.stem for path in PRESET_DIR.glob("*.toml"))) or "none found"
    p.add_argument("--config", default=default, help=f"a preset name in configs/ ({presets}) or a TOML file (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set train.lr=1e-3 (repeatable)")


def cmd_prepare(args) -> None:
    from rain.data.prepare import prepare

    cfg = _config(args)
    if args.data:
        cfg.data.paths = args.data
    manifest = prepare(cfg, args.out, overwrite=args.overwrite)
    for split, stats in manifest["sources"].items():
        tokens = sum(s["tokens"] for s in stats.values())
        docs = sum(s["documents"] for s in stats.values())
        print(f"{split}: {docs:,} documents, {tokens:,} tokens in {len(manifest['splits'][split])} shard(s)")
    print(f"wrote {args.out}/manifest.json and tokenizer.json")


def _train_config(args):
    from rain.config import config_from_dict, parse_override, _apply, validate

    run_config = Path(args.out) / "config.json"
    if args.resume and run_config.is_file():
        cfg = config_from_dict(json.loads(run_config.read_text()), str(run_config))
        for text in args.set:
            _apply(cfg, *parse_override(text), origin=f"--set {text}")
        validate(cfg)
    else:
        cfg = _config(args)
    if args.data:
        cfg.data.dir = args.data
    return cfg


def cmd_train(args) -> None:
    from rain.train.trainer import train

    cfg = _train_config(args)
    train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, init_from=args.init_from, stop_after=args.stop_after)


def load_checkpoint(path: str, device: str):
    from rain.data.tokenizer import Tokenizer
    from rain.train import checkpoint as ckpt
    from rain.runtime import pick_device

    folder = ckpt.find_checkpoint(Path(path))
    model, cfg = ckpt.load_weights(folder, pick_device(device))
    return model, cfg, Tokenizer.from_file(folder / "tokenizer.json"), folder


def cmd_sample(args) -> None:
    from rain.model.generate import generate

    model, cfg, tok, folder = load_checkpoint(args.checkpoint, args.device)
    prompts = args.prompt or DEMO_PROMPTS
    for i, prompt in enumerate(prompts):
        ids = tok.encode(prompt)
        if len(ids) >= cfg.model.context:
            raise RainError(f"prompt {i + 1} has {len(ids)} tokens; the model's context is {cfg.model.context}: shorten it")
        out = generate(model, ids, max_new_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, stop_ids=(tok.eot_id,), seed=args.seed + i, vocab_limit=tok.vocab_size)
        print(f"--- {prompt!r}\n{prompt}{tok.decode(out)}\n")


def demo_config(quick: bool, overrides: list[str]) -> "RunConfig":
    from rain.config import load_config

    return load_config("tiny", QUICK_DEMO + overrides if quick else overrides)


def cmd_demo(args) -> None:
    import time

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
    args.checkpoint, args.prompt, args.device = str(out / "run"), None, "auto"
    print("\nsamples from the trained model:")
    cmd_sample(args)
    print(f"demo finished in {time.time() - t0:.0f} s; outputs in {out}/ (run/loss.png, run/metrics.jsonl, run/checkpoints/)")
    if summary.get("final_val_loss") is not None and summary["final_val_loss"] >= summary["first_val_loss"]:
        raise RainError("validation loss did not fall during the demo; something is wrong with this install")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=80, help="new tokens per prompt (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 for greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=50, help="0 disables (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling; 1 disables (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rain", description="Pretrain a small language model on one GPU: "
                                     "corpus -> tokenizer -> shards -> model -> checkpoints -> evaluation -> samples.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="corpus -> BPE tokenizer + token shards", description=
                       "Read text, train a byte-level BPE tokenizer and write uint16/uint32 token shards plus a held-out "
                       "validation split and manifest.json into --out. With no --data, the built-in corpus is used.")
    _add_config_args(p)
    p.add_argument("--data", nargs="+", help=(
        "files, folders (read recursively, e.g. a code repository) or globs: text files of any name (.txt, .md, "
        ".rst, .py, README, copyright, ...; binary files are skipped and counted), .gz text files (changelog.gz), "
        ".jsonl/.jsonl.gz/.jsonl.zst and .parquet (field `text`), .tar/.tar.gz/.tar.xz/.tar.bz2 archives of text "
        "files; or one mixture .toml (default: the built-in corpus)"))
    p.add_argument("--out", required=True, help="output folder for shards, manifest.json, tokenizer.json")
    p.add_argument("--overwrite", action="store_true", help="replace data already prepared in --out")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="pretrain a model on prepared shards", description=
                       "Train per the config on shards from `rain prepare`; writes checkpoints/, metrics.jsonl, "
                       "run_summary.json and loss.png into --out.")
    _add_config_args(p)
    p.add_argument("--data", help="prepared data folder (from `rain prepare`); on --resume the run's own is used")
    p.add_argument("--out", required=True, help="run folder")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    group.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--init-from", help="start from this checkpoint's weights with a fresh optimizer and schedule")
    p.add_argument("--stop-after", type=int, help="save and stop after this step (continue later with --resume)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="complete prompts with a trained model", description=
                       "Generate continuations with a KV cache. CHECKPOINT is a checkpoint folder or a run folder (its best checkpoint).")
    p.add_argument("checkpoint")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable; default: three demo prompts)")
    _add_sampling_args(p)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("demo", help="prepare the built-in corpus, train `tiny`, evaluate and sample", description=
                       "Everything in a row on the built-in corpus: about 3 minutes on an idle 2-core CPU (300 "
                       "steps; it prints the time left after the first 10), about 1 minute with --quick.")
    p.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="100 training steps instead of 300, for a slow or busy machine")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override the tiny preset")
    _add_sampling_args(p)
    p.set_defaults(func=cmd_demo)

    # Each stage's own commands live beside its code and register themselves here.
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RainError as exc:
        print(f"rain: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
