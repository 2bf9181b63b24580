"""`builtin:safety`: rain's safety pack as training data, given wherever `rain sft --data` or `rain dpo --data`
takes a file. SFT gets its conversations (refusals and supportive safe completions for harmful requests, helpful
answers for their benign look-alikes); DPO gets pairs: the same reply chosen, against a compliance opener with no
instructions in it (harmful) or an over-refusal (benign). Only the pack's train split: its eval split is what
`rain eval --safety` asks (rain.eval.safety), so the rates it reports are on prompts the model never saw.

Mix it with your own chat data by listing both: `rain sft BASE --data chat.jsonl builtin:safety`."""

from __future__ import annotations

from pathlib import Path

from rain.errors import RainError
from rain.eval.safety import load_pack
from rain.posttrain.chat import Message
from rain.posttrain.chat_data import ChatData

BUILTIN_PREFIX = "builtin:"
SAFETY = "builtin:safety"


def is_builtin(path: str | Path) -> bool:
    """A data spec that names built-in data rather than a file; only SAFETY exists."""
    spec = str(path)
    if not spec.startswith(BUILTIN_PREFIX):
        return False
    if spec != SAFETY:
        raise RainError(f"unknown built-in data {spec!r}: the one built in is {SAFETY}")
    return True


def safety_chat_data() -> ChatData:
    data = ChatData()
    for record in load_pack("train"):
        data.add(record["messages"])
    return data


def safety_pairs() -> list[tuple[list[Message], str, str]]:
    """(prompt turns, chosen reply, rejected reply) for each training record."""
    return [(r["messages"][:-1], r["messages"][-1]["content"], r["rejected"]) for r in load_pack("train")]
