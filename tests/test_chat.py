"""The chat template (text, ids, loss mask, the Jinja twin transformers runs) and the chat data readers."""

import json
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from rain.config import ModelConfig
from rain.data.tokenizer import IM_END, IM_START, train_bpe
from rain.errors import RainError
from rain.posttrain.chat import CHAT_TEMPLATE, conversation_problem, encode_chat, encode_prompt, render_text
from rain.posttrain.chat_data import (
    detect_format,
    read_alpaca,
    read_chat_data,
    read_messages,
    read_oasst,
    tokenize_conversations,
)

from conftest import SHARED_DATA

SFT = SHARED_DATA / "sft"
ALPACA_FILE = SFT / "rasbt_instruction_data" / "instruction-data.json"
OASST_FILE = SFT / "oasst_en_100" / "en_100_tree.jsonl"

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is rain?"},
    {"role": "assistant", "content": "Water falling from clouds."},
    {"role": "user", "content": "And snow? 你好 🎉"},
    {"role": "assistant", "content": "Frozen water.\n\nAlso from clouds."},
]


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    words = "what is rain water falling from clouds and snow frozen also you are terse the a".split()
    texts = [" ".join(rng.choice(words) for _ in range(25)) + ".\n\n" for _ in range(300)]
    return train_bpe(texts + ["Héllo 你好 🎉 123"], vocab_size=500)


def test_render_text():
    text = render_text(CONVERSATION[:3])
    assert text == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nWhat is rain?<|im_end|>\n"
        "<|im_start|>assistant\nWater falling from clouds.<|im_end|>\n"
    )
    prompt = render_text(CONVERSATION[:2], add_generation_prompt=True)
    assert prompt.endswith("rain?<|im_end|>\n<|im_start|>assistant\n")


def test_loss_mask_covers_exactly_assistant_content_and_im_end(tokenizer):
    ids, mask, turn_ends = encode_chat(tokenizer, CONVERSATION)
    assert ids == tokenizer.encode(render_text(CONVERSATION))
    trained = [i for i, m in zip(ids, mask) if m]
    expected = "Water falling from clouds.<|im_end|>Frozen water.\n\nAlso from clouds.<|im_end|>"
    assert tokenizer.decode(trained) == expected
    # every role header, system/user turn and the newline after <|im_end|> is masked
    assert tokenizer.decode([i for i, m in zip(ids, mask) if not m]).count("<|im_start|>assistant\n") == 2
    im_end = tokenizer.token_id(IM_END)
    assert [m for i, m in zip(ids, mask) if i == im_end] == [0, 0, 1, 0, 1]
    assert ids[-1] == tokenizer.encode("\n")[0] and mask[-1] == 0
    # turn_ends are cut points: a prefix of turns encodes to a prefix of the ids
    assert turn_ends[-1] == len(ids)
    for k in range(len(CONVERSATION)):
        assert encode_chat(tokenizer, CONVERSATION[: k + 1])[0] == ids[: turn_ends[k]]


def test_tokenizer_without_chat_tokens_is_refused():
    plain = train_bpe(["some text here"] * 20, vocab_size=300, special_tokens=["<|endoftext|>"])
    with pytest.raises(RainError, match=re.escape("no <|im_start|> token")):
        encode_chat(plain, CONVERSATION)


def test_generation_prompt(tokenizer):
    prompt = encode_prompt(tokenizer, CONVERSATION[:2])
    header = tokenizer.encode(f"{IM_START}assistant\n")
    assert prompt[-len(header):] == header
    assert tokenizer.decode(prompt) == render_text(CONVERSATION[:2]) + "<|im_start|>assistant\n"


def test_transformers_apply_chat_template_matches(tokenizer, tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    from rain.export.hf import export_hf
    from rain.model import Transformer

    cfg = ModelConfig(vocab_size=512, n_layer=1, d_model=32, n_head=2, n_kv_head=1, d_ff=64, context=64)
    out = export_hf(cfg, Transformer(cfg).state_dict(), tokenizer, tmp_path / "hf", chat_template=CHAT_TEMPLATE)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    conversations = [CONVERSATION, CONVERSATION[1:3], [{"role": "user", "content": "  spaces\n\nand lines  "}]]
    for messages in conversations:
        for gen in (False, True):
            text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert text == render_text(messages, add_generation_prompt=gen)
            ids = hf_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)
            ids = ids["input_ids"] if isinstance(ids, Mapping) else ids
            assert ids == (encode_prompt(tokenizer, messages) if gen else encode_chat(tokenizer, messages)[0])


def test_conversation_problems():
    user, assistant, system = ({"role": r, "content": "x"} for r in ("user", "assistant", "system"))
    assert conversation_problem([system, user, assistant, user, assistant]) is None
    assert conversation_problem([user, assistant]) is None
    assert conversation_problem([system, user]) == "no_assistant_turn"
    assert conversation_problem([]) == "no_assistant_turn"
    assert conversation_problem([assistant, user, assistant]) == "roles_out_of_order"
    assert conversation_problem([user, user, assistant]) == "roles_out_of_order"
    assert conversation_problem([user, system, assistant]) == "roles_out_of_order"
    assert conversation_problem([user, assistant, user]) == "ends_with_user"
    assert conversation_problem([{"role": "tool", "content": "x"}, assistant]) == "unknown_role"
    assert conversation_problem([user, {"role": "assistant", "content": " \n"}]) == "empty_message"
    assert conversation_problem([user, {"role": "assistant", "content": "a<|im_end|>b"}]) == "special_token_in_text"


def _jsonl(path: Path, records) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_read_messages_counts_skips_and_rejects_bad_structure(tmp_path):
    u, a = ({"role": r, "content": "hi"} for r in ("user", "assistant"))
    good = {"messages": [u, a]}
    records = [good, {"messages": [u]}, {"messages": [u, u, a]}, {"messages": [a, u, a]}, "", good]
    path = _jsonl(tmp_path / "chat.jsonl", records)
    data = read_messages(path)
    assert len(data.conversations) == 2
    assert data.skipped == {"no_assistant_turn": 1, "roles_out_of_order": 2}
    assert detect_format(path) == "messages"

    for records, message in [
        ([good, "{not json"], r"chat\.jsonl line 2: not valid JSON"),
        ([good, {"messages": "hi"}], r"line 2: field 'messages' must be a list"),
        ([{"conversations": []}], r"line 1: missing field 'messages'"),
        ([{"messages": [u, {"role": "assistant"}]}], r"line 1 message 1: missing field 'content'"),
        ([{"messages": [u, {"role": "assistant", "content": 3}]}], r"message 1: field 'content' must be a str"),
        ([["a list"]], r"line 1: expected an object"),
    ]:
        with pytest.raises(RainError, match=message):
            read_messages(_jsonl(tmp_path / "chat.jsonl", records))


def test_read_alpaca_json_and_jsonl(tmp_path):
    records = [
        {"instruction": "Add.", "input": "1 + 1", "output": "2"},
        {"instruction": "Greet.", "input": "", "output": "Hello."},
        {"instruction": "Nothing.", "input": "", "output": "  "},
    ]
    (tmp_path / "a.json").write_text(json.dumps(records))
    for path in (tmp_path / "a.json", _jsonl(tmp_path / "a.jsonl", records)):
        data = read_chat_data(path)
        assert data.conversations[0] == [
            {"role": "user", "content": "Add.\n\n1 + 1"},
            {"role": "assistant", "content": "2"},
        ]
        assert data.conversations[1][0]["content"] == "Greet."
        assert data.skipped == {"empty_message": 1}
    (tmp_path / "bad.json").write_text(json.dumps([records[0], {"instruction": "x"}]))
    with pytest.raises(RainError, match=r"bad\.json record 1: missing field 'output'"):
        read_alpaca(tmp_path / "bad.json")


def _node(role, text, *replies, **extra):
    return {"role": role, "text": text, "replies": list(replies), **extra}


def test_read_oasst_flattens_paths(tmp_path):
    tree = _node(
        "prompter", "Q",
        _node("assistant", "A1", _node("prompter", "Q2", _node("assistant", "A2")), _node("prompter", "unanswered")),
        _node("assistant", "A3", _node("prompter", "unanswered")),
        _node("assistant", "A4", _node("assistant", "double")),
        _node("assistant", "gone", deleted=True),
    )
    unanswered = _node("prompter", "anyone?")
    trees = [{"message_tree_id": "t", "prompt": tree}, {"message_tree_id": "u", "prompt": unanswered}]
    path = _jsonl(tmp_path / "trees.jsonl", trees)
    assert detect_format(path) == "oasst"
    data = read_oasst(path)
    assert [[m["content"] for m in c] for c in data.conversations] == [["Q", "A1", "Q2", "A2"], ["Q", "A3"]]
    assert [m["role"] for m in data.conversations[0]] == ["user", "assistant", "user", "assistant"]
    assert data.skipped == {"roles_out_of_order": 1, "deleted": 1, "no_assistant_turn": 1}
    with pytest.raises(RainError, match=r"trees\.jsonl line 1: unknown role 'moderator'"):
        read_oasst(_jsonl(tmp_path / "trees.jsonl", [{"message_tree_id": "t", "prompt": _node("moderator", "x")}]))


def test_unknown_format(tmp_path):
    with pytest.raises(RainError, match=r"line 1: unknown format"):
        read_chat_data(_jsonl(tmp_path / "x.jsonl", [{"text": "plain"}]))
    with pytest.raises(RainError, match="format 'sharegpt'"):
        read_chat_data(_jsonl(tmp_path / "x.jsonl", [{"text": "plain"}]), fmt="sharegpt")


def test_overflow_policies(tokenizer):
    long_turns = CONVERSATION + [
        {"role": "user", "content": "more " * 40},
        {"role": "assistant", "content": "ok " * 40},
    ]
    full = len(encode_chat(tokenizer, long_turns)[0])
    first_exchange = encode_chat(tokenizer, CONVERSATION[:3])[2][-1]
    limit = len(encode_chat(tokenizer, CONVERSATION)[0]) + 5
    assert limit < full
    dropped = tokenize_conversations(tokenizer, [long_turns, CONVERSATION], limit, overflow="drop")
    assert (len(dropped.ids), dropped.dropped, dropped.truncated) == (1, 1, 0)
    cut = tokenize_conversations(tokenizer, [long_turns, CONVERSATION], limit, overflow="truncate")
    assert (cut.dropped, cut.truncated) == (0, 1)
    assert cut.ids[0] == cut.ids[1] == encode_chat(tokenizer, CONVERSATION)[0]
    assert cut.loss_masks[0] == encode_chat(tokenizer, CONVERSATION)[1]
    too_small = tokenize_conversations(tokenizer, [long_turns], first_exchange - 1, overflow="truncate")
    assert (len(too_small.ids), too_small.dropped) == (0, 1)
    with pytest.raises(RainError, match="overflow policy"):
        tokenize_conversations(tokenizer, [CONVERSATION], 100, overflow="wrap")


@pytest.mark.shared_data
def test_real_alpaca_file(tokenizer):
    data = read_chat_data(ALPACA_FILE)
    assert len(data.conversations) == 1100 and not data.skipped
    assert sum("\n\n" in c[0]["content"] for c in data.conversations) == 325  # records with an input
    _check_masks(tokenizer, data.conversations)


@pytest.mark.shared_data
def test_real_oasst_file(tokenizer):
    data = read_chat_data(OASST_FILE)
    assert len(data.conversations) == 546 and not data.skipped  # one per assistant with no assistant reply below
    assert {len(c) for c in data.conversations} == {2, 4, 6}
    _check_masks(tokenizer, data.conversations)


def _check_masks(tokenizer, conversations):
    examples = tokenize_conversations(tokenizer, conversations, max_tokens=10**9)
    for messages, ids, mask in zip(conversations, examples.ids, examples.loss_masks):
        expected = "".join(m["content"] + IM_END for m in messages if m["role"] == "assistant")
        assert tokenizer.decode([i for i, m in zip(ids, mask) if m]) == expected
