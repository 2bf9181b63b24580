"""Chat/instruction data readers -> conversations (lists of {"role", "content"}), and their tokenisation
with a policy for conversations longer than the context.

Formats: OpenAI-style jsonl `{"messages": [{"role", "content"}, ...]}`; Alpaca `instruction`/`input`/`output`
(a JSON array or jsonl); OpenAssistant tree jsonl (each root-to-leaf path is a conversation).
A record that cannot be trained on (no assistant turn, roles out of order, ...) is skipped and counted
under a reason; a file whose structure is wrong raises a RainError naming the file and the record."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rain.data.tokenizer import Tokenizer
from rain.errors import RainError
from rain.files import jsonl_records
from rain.posttrain.chat import Message, conversation_problem, encode_chat

FORMATS = ("messages", "alpaca", "oasst")
OVERFLOW_POLICIES = ("drop", "truncate")


@dataclass
class ChatData:
    conversations: list[list[Message]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> number of conversations

    def add(self, messages: list[Message]) -> None:
        problem = conversation_problem(messages)
        if problem:
            self.skipped[problem] += 1
        else:
            self.conversations.append(messages)


def _records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for a JSON array file or a jsonl file (by suffix, else by a leading `[`);
    `where` names the file and the record."""
    if not path.is_file():
        raise RainError(f"chat data {path}: file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".jsonl" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RainError(f"chat data {path}: not valid JSON ({exc})") from None
        for i, record in enumerate(records):
            yield f"{path} record {i}", record
        return
    for at, record in jsonl_records(text, lambda n: f"chat data {path} line {n}"):
        yield at.removeprefix("chat data "), record


def _field(where: str, record: Any, key: str, kind: type, default: Any = ...) -> Any:
    if not isinstance(record, dict):
        raise RainError(f"chat data {where}: expected an object, got {type(record).__name__}")
    if key not in record:
        if default is not ...:
            return default
        raise RainError(f"chat data {where}: missing field {key!r} (has {', '.join(map(repr, record)) or 'none'})")
    if not isinstance(record[key], kind):
        raise RainError(f"chat data {where}: field {key!r} must be a {kind.__name__}, got {type(record[key]).__name__}")
    return record[key]


def read_messages(path: str | Path) -> ChatData:
    data = ChatData()
    for where, record in _records(Path(path)):
        messages = _field(where, record, "messages", list)
        conversation = []
        for i, message in enumerate(messages):
            at = f"{where} message {i}"
            role, content = _field(at, message, "role", str), _field(at, message, "content", str)
            conversation.append({"role": role, "content": content})
        data.add(conversation)
    return data


def read_alpaca(path: str | Path) -> ChatData:
    data = ChatData()
    for where, record in _records(Path(path)):
        instruction = _field(where, record, "instruction", str)
        extra = _field(where, record, "input", str, default="")
        output = _field(where, record, "output", str)
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        data.add([{"role": "user", "content": prompt}, {"role": "assistant", "content": output}])
    return data


OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def read_oasst(path: str | Path) -> ChatData:
    """One conversation per assistant message with no assistant reply below it, i.e. every root-to-leaf path,
    cut before a final prompter message (a question nobody answered); deleted messages prune their subtree."""
    data = ChatData()

    def walk(node: Any, path: list[Message], where: str) -> int:
        text, role = _field(where, node, "text", str), _field(where, node, "role", str)
        replies = _field(where, node, "replies", list, default=[])
        if node.get("deleted"):
            data.skipped["deleted"] += 1
            return 0
        if role not in OASST_ROLES:
            raise RainError(f"chat data {where}: unknown role {role!r} (expected prompter or assistant)")
        path = path + [{"role": OASST_ROLES[role], "content": text}]
        emitted = sum(walk(reply, path, where) for reply in replies)
        if emitted == 0 and role == "assistant":
            data.add(path)
            return 1
        return emitted

    for where, record in _records(Path(path)):
        skipped_before = data.skipped.total()
        if walk(_field(where, record, "prompt", dict), [], where) == 0 and data.skipped.total() == skipped_before:
            data.skipped["no_assistant_turn"] += 1  # an unanswered prompt
    return data


def detect_format(path: str | Path) -> str:
    """The format of a chat data file from its first record's fields."""
    for where, record in _records(Path(path)):
        if isinstance(record, dict):
            if "messages" in record:
                return "messages"
            if "instruction" in record and "output" in record:
                return "alpaca"
            if "prompt" in record and "message_tree_id" in record:
                return "oasst"
        raise RainError(
            f"chat data {where}: unknown format (expected a 'messages' list, Alpaca instruction/output, "
            "or an OpenAssistant tree with message_tree_id/prompt)"
        )
    raise RainError(f"chat data {path}: the file has no records")


def read_chat_data(path: str | Path, fmt: str = "auto") -> ChatData:
    if fmt == "auto":
        fmt = detect_format(path)
    readers = {"messages": read_messages, "alpaca": read_alpaca, "oasst": read_oasst}
    if fmt not in readers:
        raise RainError(f"chat data format {fmt!r}: expected auto or one of {', '.join(FORMATS)}")
    return readers[fmt](path)


@dataclass
class ChatExamples:
    ids: list[list[int]] = field(default_factory=list)
    loss_masks: list[list[int]] = field(default_factory=list)  # 1 where the token is a training target
    truncated: int = 0  # kept, cut at a turn boundary
    dropped: int = 0  # too long (even its first exchange, under "truncate")


def tokenize_conversations(
    tokenizer: Tokenizer, conversations: list[list[Message]], max_tokens: int, overflow: str = "drop"
) -> ChatExamples:
    """Encode conversations; one longer than max_tokens is dropped ("drop") or cut after the last assistant
    turn that fits ("truncate"). For next-token training, max_tokens = context + 1 lets ids[:-1] fill it."""
    if overflow not in OVERFLOW_POLICIES:
        raise RainError(f"overflow policy {overflow!r}: expected one of {', '.join(OVERFLOW_POLICIES)}")
    out = ChatExamples()
    for messages in conversations:
        ids, mask, turn_ends = encode_chat(tokenizer, messages)
        if len(ids) > max_tokens:
            cuts = [end for end, m in zip(turn_ends, messages) if m["role"] == "assistant" and end <= max_tokens]
            if overflow == "drop" or not cuts:
                out.dropped += 1
                continue
            ids, mask = ids[: cuts[-1]], mask[: cuts[-1]]
            out.truncated += 1
        out.ids.append(ids)
        out.loss_masks.append(mask)
    return out
