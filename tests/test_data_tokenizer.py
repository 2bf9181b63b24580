"""The tokenizer: byte-level BPE that splits digits and keeps indentation, chat specials, existing tokenizers
(tokenizer.json, GPT-2's vocab.json + merges.txt) and the shard dtype that follows the vocabulary."""

import json
import random

import numpy as np
import pytest

from rain.config import RunConfig
from rain.data.prepare import prepare
from rain.data.tokenizer import EOT, IM_END, IM_START, SPECIAL_TOKENS, Tokenizer, load_tokenizer, train_bpe
from rain.errors import RainError

CODE = "def area(r):\n    if r > 0:\n        return 3.14159 * r ** 2\n    return 0\n"
TEXTS = [f"In {1900 + i} the town counted {i * 12345} people and {i} rivers. " * 3 for i in range(200)] + [CODE] * 50


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(TEXTS, 600)


def pieces(tok: Tokenizer, text: str) -> list[str]:
    return [p for p, _ in tok.hf.pre_tokenizer.pre_tokenize_str(text)]


def test_digits_split_in_groups_of_at_most_three_and_indentation_is_kept(tokenizer):
    assert pieces(tokenizer, "1234567")[:3] == ["123", "456", "7"]
    indent = [p for p in pieces(tokenizer, CODE) if set(p) == {"Ġ"}]
    assert "ĠĠĠĠĠĠĠ" in indent  # eight spaces: a run of seven, the eighth joins "return"
    for text in TEXTS[:5] + [CODE, "tab\tand\r\nwindows\u00a0nbsp é 日本語 🙂"]:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_tokens_come_first_and_are_single_ids(tokenizer):
    assert [tokenizer.token_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tokenizer.eot_id == 0
    assert tokenizer.encode(f"{IM_START}user\nhi{IM_END}")[0] == tokenizer.token_id(IM_START)


def test_gpt2_vocab_and_merges_load_like_transformers(tokenizer, tmp_path):
    from transformers import GPT2TokenizerFast

    tokenizer.hf.model.save(str(tmp_path))  # writes GPT-2-format vocab.json and merges.txt
    ours = load_tokenizer(tmp_path / "vocab.json")
    theirs = GPT2TokenizerFast.from_pretrained(str(tmp_path))
    assert ours.eot_id == json.loads((tmp_path / "vocab.json").read_text())[EOT]
    for text in TEXTS[::20] + [CODE, " leading space and 12345"]:
        assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]
        assert ours.decode(ours.encode(text)) == text
    assert load_tokenizer(tmp_path).encode(CODE) == ours.encode(CODE)  # the folder works too
    (tmp_path / "other-vocab.json").write_text((tmp_path / "vocab.json").read_text())
    with pytest.raises(RainError, match="other-merges.txt: file not found"):
        load_tokenizer(tmp_path / "other-vocab.json")


def test_prepare_uses_an_existing_tokenizer_and_picks_the_shard_dtype(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "given.json")
    path = tmp_path / "text.jsonl"
    rng = random.Random(0)
    path.write_text("".join(json.dumps({"text": rng.choice(TEXTS)}) + "\n" for _ in range(300)))
    cfg = RunConfig()
    cfg.data.paths, cfg.data.tokenizer, cfg.data.val_fraction = [str(path)], str(tmp_path / "given.json"), 0.1
    cfg.model.vocab_size = 70_000  # more ids than uint16 holds
    manifest = prepare(cfg, tmp_path / "out", log=lambda *_: None)
    assert manifest["dtype"] == "uint32" and manifest["tokenizer_vocab"] == tokenizer.vocab_size
    assert Tokenizer.from_file(tmp_path / "out" / "tokenizer.json").encode(CODE) == tokenizer.encode(CODE)
    shard = np.fromfile(tmp_path / "out" / manifest["splits"]["train"][0]["file"], dtype=np.uint32)
    assert shard.max() < tokenizer.vocab_size and shard[-1] == tokenizer.eot_id
    cfg.model.vocab_size = 300
    with pytest.raises(RainError, match="tokenizer has 600 tokens but model.vocab_size is 300"):
        prepare(cfg, tmp_path / "small", log=lambda *_: None)
