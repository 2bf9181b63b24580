"""Arguments more than one stage's commands take, defined once: the run config (--config, --set) and the sampling
settings. Any stage's commands module may import this (never rain.cli). Standard library and rain.config only,
so building the parser (`rain --help`) stays fast and never imports torch."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rain.config import RunConfig


def add_set_arg(p: argparse.ArgumentParser, help: str = "override one config value, e.g. --set train.lr=1e-3 "
                "(repeatable)") -> None:
    """The one `--set SECTION.KEY=VALUE` option; rain.config.load_config applies the list in order."""
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help=help)


def add_teacher_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", metavar="PATH", help="distil from this frozen model (train.teacher): a rain run or "
                   "checkpoint folder, or a Hugging Face folder, with the same tokenizer; a KL term joins the loss "
                   "(--set train.distill_weight=1.0, train.distill_temperature=1.0, train.distill_top_k=0: all logits)")


def teacher_overrides(args: argparse.Namespace) -> list[str]:
    """--teacher PATH as the --set override it stands for (a TOML string, whatever the path looks like)."""
    return [f"train.teacher={json.dumps(args.teacher)}"] if args.teacher else []


def add_config_args(p: argparse.ArgumentParser, default: str | None = "tiny") -> None:
    from rain.config import preset_names  # standard library only: `rain --help` stays fast

    presets = preset_names()
    p.add_argument("--config", default=default, help=f"a preset name in configs/ ({presets}), a TOML file, or a run's config.json to start from "
                   "its settings (default: %(default)s)")
    add_set_arg(p)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The config that --config and --set name (see add_config_args)."""
    from rain.config import load_config

    return load_config(args.config, args.set)


def number(kind: type, allowed: str):
    """An argparse `type` that accepts a finite `kind` (int or float) in the interval `allowed`, written as in
    rain.config.RANGES (e.g. "[1, inf)"), so a bad number is a one-line error naming the option."""
    from rain.config import _out_of_range  # standard library only

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        problem = _out_of_range("", value, allowed)
        if problem:
            raise argparse.ArgumentTypeError(f"{text} is {'not a finite number' if 'finite' in problem else 'outside ' + allowed}")
        return value

    return convert


def add_run_args(p: argparse.ArgumentParser, time_limit: bool = False) -> None:
    """What a command that writes a run folder takes (rain train, rain sft): --resume or --overwrite, --stop-after;
    --time-limit where the command passes it on (time_limit=True)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    group.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--stop-after", type=number(int, "[1, inf)"), metavar="STEP",
                   help="save and stop after this step (continue later with --resume)")
    if time_limit:
        p.add_argument("--time-limit", type=number(float, "(0, inf)"), metavar="HOURS",
                       help="save and stop before this many hours have passed, leaving time for the save (estimated "
                       "from the measured step, validation and save times); continue later with --resume")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=number(int, "[1, inf)"), default=80,
                   help="new tokens per prompt (default: %(default)s)")
    p.add_argument("--temperature", type=number(float, "[0, inf)"), default=0.8, help="0 for greedy (default: %(default)s)")
    p.add_argument("--top-k", type=number(int, "[0, inf)"), default=50, help="0 disables (default: %(default)s)")
    p.add_argument("--top-p", type=number(float, "(0, 1]"), default=0.95,
                   help="nucleus sampling; 1 disables (default: %(default)s)")
    p.add_argument("--seed", type=number(int, f"[0, {2**32 - 1}]"), default=0, help="sampling seed (default: %(default)s)")


def sampling_options(args: argparse.Namespace) -> dict:
    """The values of add_sampling_args' options, as keyword arguments of rain.train.commands.sample and chat_loop."""
    return {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "seed": args.seed}
