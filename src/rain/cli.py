"""The `rain` command: builds the parser from the stages' command modules and runs the command chosen.

Each module in COMMANDS defines its commands beside the code they run: plain functions doing the work, and
`register(sub)` adding their subparsers (each sets `func`). Nothing under a stage imports this module; the
arguments several stages share live in rain.commands_common."""

from __future__ import annotations

import argparse
import importlib
import sys

from rain.errors import RainError

# The stages in pipeline order, which is the order `rain --help` lists their commands in.
COMMANDS = [
    "rain.data.commands",  # prepare, data report
    "rain.train.commands",  # train, sample, demo, bench
    "rain.eval.commands",  # eval
    "rain.posttrain.commands",  # sft, chat
    "rain.export.commands",  # export, publish
]


class OneLineErrors(argparse.ArgumentParser):
    """A usage mistake is one line, like every other rain error (argparse prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"rain: error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="rain", description="Pretrain a small language model on one GPU: "
                                     "corpus -> tokenizer -> shards -> model -> checkpoints -> evaluation -> samples.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
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
