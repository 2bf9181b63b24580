"""`rain sft` (fine-tune a base checkpoint on conversations), `rain dpo` (tune it on preference pairs) and
`rain chat` (talk to the result)."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from rain.commands_common import (add_run_args, add_sampling_args, add_set_arg, add_teacher_arg, sampling_options,
                                  teacher_overrides)
from rain.errors import RainError


def cmd_sft(args) -> None:
    from rain.posttrain.sft import run_sft

    if args.epochs <= 0 or (args.steps is not None and args.steps <= 0) or args.batch <= 0:
        raise RainError("--epochs, --steps and --batch must be positive")
    run_sft(args.base, args.data, args.out, fmt=args.format, epochs=args.epochs, steps=args.steps, lr=args.lr,
            batch=args.batch, overflow=args.overflow, mask_prompt=not args.no_mask, val_fraction=args.val_fraction,
            overrides=args.set + teacher_overrides(args), resume=args.resume, overwrite=args.overwrite,
            stop_after=args.stop_after, time_limit=args.time_limit * 3600 if args.time_limit else None)


def cmd_dpo(args) -> None:
    from rain.posttrain.dpo import run_dpo

    if args.epochs <= 0 or (args.steps is not None and args.steps <= 0) or args.batch <= 0:
        raise RainError("--epochs, --steps and --batch must be positive")
    run_dpo(args.run, args.data, args.out, fmt=args.format, loss=args.loss, beta=args.beta, gamma=args.gamma,
            reference=args.reference, reference_logps=args.reference_logps, epochs=args.epochs, steps=args.steps,
            lr=args.lr, batch=args.batch, val_fraction=args.val_fraction, overrides=args.set, resume=args.resume,
            overwrite=args.overwrite, stop_after=args.stop_after,
            time_limit=args.time_limit * 3600 if args.time_limit else None)


def fit_history(tokenizer, system: list[dict], messages: list[dict], context: int, reserve: int):
    """(prompt ids, messages kept): the oldest user/assistant exchanges are dropped until the prompt leaves
    `reserve` tokens for the reply; (None, []) when even the newest message does not fit."""
    from rain.posttrain.chat import encode_prompt

    while True:
        ids = encode_prompt(tokenizer, system + messages)
        if len(ids) + reserve <= context:
            return ids, messages
        if len(messages) <= 1:
            return None, []
        messages = messages[2:]


def chat_loop(model, tokenizer, *, system: str | None = None, max_tokens: int = 256, temperature: float = 0.7,
              top_k: int = 50, top_p: float = 0.95, seed: int = 0, stdin: TextIO | None = None,
              stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
    """Read user lines, stream each reply; /reset clears the history, /exit (or end of input) quits."""
    from rain.data.tokenizer import EOT, IM_END, SPECIAL_TOKENS
    from rain.model.generate import stream

    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    context = model.cfg.context
    stops = tuple(tokenizer.token_id(t) for t in (IM_END, EOT))
    reserve = min(max_tokens, context // 4)
    system_turns = [{"role": "system", "content": system}] if system else []
    interactive = stdin.isatty()
    if interactive:
        print("type a message; /reset clears the history, /exit quits", file=stderr)
    history: list[dict] = []
    turn = 0
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        line = stdin.readline()
        if not line:
            break
        text = line.rstrip("\r\n")
        command = text.strip()
        if not command:
            continue
        if command == "/exit":
            break
        if command == "/reset":
            history = []
            print("(history cleared)", file=stderr)
            continue
        if command.startswith("/"):
            print(f"unknown command {command}: use /reset or /exit", file=stderr)
            continue
        if any(t in text for t in SPECIAL_TOKENS):
            print("the message contains a special token such as <|im_start|>; rephrase it", file=stderr)
            continue
        prompt, kept = fit_history(tokenizer, system_turns, history + [{"role": "user", "content": text}], context, reserve)
        if prompt is None:
            print(f"the message is too long for the model's context of {context} tokens; shorten it", file=stderr)
            continue
        if interactive:
            stdout.write("bot> ")
        reply, shown = [], ""
        for token in stream(model, prompt, max_new_tokens=max_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, stop_ids=stops, seed=seed + turn, vocab_limit=tokenizer.vocab_size):
            reply.append(token)
            decoded = tokenizer.decode(reply, skip_special=True)
            if not decoded.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                stdout.write(decoded[len(shown):])
                stdout.flush()
                shown = decoded
        decoded = tokenizer.decode(reply, skip_special=True)
        stdout.write(decoded[len(shown):] + "\n")
        stdout.flush()
        if len(reply) >= min(max_tokens, context - len(prompt)):
            print(f"(reply cut after {len(reply)} tokens: raise --max-tokens or /reset)", file=stderr)
        history = kept + [{"role": "assistant", "content": decoded}]
        turn += 1


def cmd_chat(args) -> None:
    from rain import checkpoint as ckpt
    from rain.runtime import pick_device

    checkpoint = ckpt.find(args.checkpoint)
    if checkpoint.chat_template is None:  # said before the weights load
        raise RainError(f"{checkpoint.folder} is a base model without a chat template: fine-tune it with `rain sft` "
                        "first, or complete text with `rain sample`")
    model, _ = ckpt.load_model(checkpoint, pick_device(args.device))
    tokenizer = ckpt.tokenizer(checkpoint)
    chat_loop(model, tokenizer, system=args.system, **sampling_options(args))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sft", help="fine-tune a checkpoint on conversations (chat SFT)", description=
                       "Supervised fine-tuning from BASE's weights (fresh optimizer and schedule) on chat data, with "
                       "the loss on assistant tokens only and several conversations packed per window. Writes the "
                       "same run folder as `rain train`; its checkpoints carry the chat template.")
    p.add_argument("base", help="the base checkpoint folder, or a run folder (its last checkpoint)")
    p.add_argument("--data", nargs="+", required=True, help="chat data files: messages jsonl, Alpaca json/jsonl, OASST trees; "
                   "builtin:safety adds rain's safety pack (refusals and answered look-alikes, its train split)")
    p.add_argument("--format", default="auto", choices=("auto", "messages", "alpaca", "oasst"),
                   help="the data format (default: detected per file)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--epochs", type=float, default=2.0, help="passes over the training conversations (default: %(default)s)")
    p.add_argument("--steps", type=int, help="optimizer steps (wins over --epochs)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: a tenth of the base run's)")
    p.add_argument("--batch", type=int, default=16, help="windows per optimizer step (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="conversations held out, by hash (default: %(default)s)")
    p.add_argument("--overflow", default="drop", choices=("drop", "truncate"), help="a conversation longer than the "
                   "context is dropped and counted, or cut after its last assistant turn that fits (default: %(default)s)")
    p.add_argument("--no-mask", action="store_true", help="train on every token, prompts and role headers included")
    add_teacher_arg(p)
    add_set_arg(p, help="override a config value of the run, e.g. --set train.eval_every=50 (repeatable)")
    add_run_args(p, time_limit=True)
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("dpo", help="tune a fine-tuned checkpoint on preference pairs (DPO, IPO, SimPO)", description=
                       "Direct Preference Optimisation from RUN's weights (fresh optimizer and schedule) on prompt / "
                       "chosen / rejected pairs, against RUN itself as the frozen reference (its log-probs computed "
                       "once and kept in the run folder). Loss on the compared reply only; pairs packed per window. "
                       "Held-out reward accuracy and margins go to metrics.jsonl. A base model without a chat "
                       "template is accepted with a warning.")
    p.add_argument("run", help="the checkpoint to tune: an SFT run folder (its last checkpoint) or a checkpoint folder")
    p.add_argument("--data", nargs="+", required=True, help="preference files: jsonl/JSON with chosen/rejected (strings "
                   "or message lists) and an optional prompt, or OpenAssistant trees (pairs from the replies' ranks); builtin:safety: "
                   "rain's safety pack as pairs (refusal over compliance, answer over over-refusal)")
    p.add_argument("--format", default="auto", choices=("auto", "pairs", "oasst"),
                   help="the data format (default: detected per file)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--loss", default="dpo", choices=("dpo", "ipo", "simpo"), help="the objective (default: %(default)s; "
                   "simpo uses no reference)")
    p.add_argument("--beta", type=float, help="the loss's beta (default: 0.1 for dpo and ipo, 2.0 for simpo)")
    p.add_argument("--gamma", type=float, default=0.5, help="SimPO's target reward margin (default: %(default)s)")
    p.add_argument("--reference", help="the frozen reference checkpoint (default: RUN itself); same shape and tokenizer")
    p.add_argument("--reference-logps", default="precompute", choices=("precompute", "online"), help="compute the "
                   "reference's log-probs once before training (kept in OUT) or at every step (default: %(default)s)")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the training pairs (default: %(default)s)")
    p.add_argument("--steps", type=int, help="optimizer steps (wins over --epochs)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: a tenth of RUN's)")
    p.add_argument("--batch", type=int, default=16, help="windows per optimizer step (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="prompts held out, by hash (default: %(default)s)")
    add_set_arg(p, help="override a config value of the run, e.g. --set train.eval_every=50 (repeatable)")
    add_run_args(p, time_limit=True)
    p.set_defaults(func=cmd_dpo)

    p = sub.add_parser("chat", help="chat with a fine-tuned checkpoint in the terminal", description=
                       "Multi-turn chat with streamed replies; the oldest turns are dropped when the context fills. "
                       "Reads lines from stdin (pipe them in to script it). /reset clears the history, /exit quits.")
    p.add_argument("checkpoint", help="a checkpoint folder or run folder from `rain sft`")
    p.add_argument("--system", help="a system prompt placed before the conversation")
    add_sampling_args(p)
    p.set_defaults(max_tokens=256, temperature=0.7)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_chat)
