"""Every tokenizer kind (byte-level BPE, Unigram and BPE with byte fallback), with NFKC and the CJK / Korean
pre-tokenisations: exact round trips on real sentences of several languages, the same ids from transformers'
loader of the saved tokenizer.json, Korean tokens that never cross a morpheme, the morpheme setting travelling
with tokenizer.json (prepared folder, checkpoint, same-tokenizer checks), and one-line errors for a missing
analyser, text that is not UTF-8 and contradicting settings."""

import json
import sys
import unicodedata

import numpy as np
import pytest

from rain import checkpoint as ckpt
from rain.data import morphemes
from rain.data.encode import Job, process
from rain.data.filters import FilterConfig
from rain.data.mixture import mixture_from_dict
from rain.data.prepare import prepare
from rain.data.sources import Location, Source, read_records
from rain.data.tokenizer import BYTE_TOKENS, KINDS, SIDECAR, Tokenizer, load_tokenizer, train_tokenizer
from rain.errors import RainError
from tests.conftest import decoded_documents, quick_config, small_model_config

ENGLISH = ["The committee postponed its decision until the budget figures were released on Friday.",
           "It wasn't the first time she'd crossed the river at night, but it was the coldest."]
CODE = [("def mean(values):\n\tif not values:\n\t\treturn 0.0\n    total = sum(values)  # spaces, then a tab\n"
         "    return total / len(values)\n\n\nprint(mean([1, 2, 3]))\n")]
KOREAN = ["저는 어제 친구와 함께 학교에 갔다.", "서울은 대한민국의 수도이며 인구가 가장 많은 도시입니다.",
          "날씨가 좋아서 우리는 한강 공원에서 자전거를 탔어요!"]
CHINESE = ["北京是中华人民共和国的首都，也是全国的政治和文化中心。", "我们明天早上八点在学校门口见面。"]
JAPANESE = ["東京は日本の首都で、世界でも有数の大都市です。", "昨日は雨が降っていたので、家で本を読みました。"]
EMOJI = ["Great job 🎉🎉 see you tomorrow 😀 👍🏽", "家族 👨‍👩‍👧 と 🍣 を食べた"]
TEXTS = ENGLISH + CODE + KOREAN + CHINESE + JAPANESE + EMOJI
# Text the training corpus never showed: unseen characters (byte fallback), a literal byte-token spelling,
# compatibility characters, whitespace only, nothing.
UNSEEN = ["龘靐齉 and ᚠᛇᚻ runes", "<0x41> is not the letter A", "ﬁne ＡＢＣ ｶﾀｶﾅ", " \t\n  ", ""]
CORPUS = TEXTS * 8
SETTINGS = [(kind, pre) for kind in KINDS for pre in ("none", "cjk-chars", "korean-morphemes")]


@pytest.fixture(scope="module")
def tokenizers():
    return {(kind, pre): train_tokenizer(CORPUS, 700, kind, pretokenize=pre) for kind, pre in SETTINGS}


@pytest.mark.parametrize("kind,pre", SETTINGS)
def test_every_kind_round_trips_exactly_and_never_says_unk(tokenizers, kind, pre):
    tok = tokenizers[kind, pre]
    assert tok.kind == kind and tok.pretokenize == pre and tok.vocab_size <= 700
    for text in TEXTS + UNSEEN:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.unk_id is None or tok.unk_id not in ids
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]
    fallback = tok.byte_fallback_ids
    assert len(fallback) == (0 if kind == "bytelevel-bpe" else 256)
    if fallback:  # unseen characters are spelled in byte tokens, seen ones never are
        assert set(tok.encode("龘")) <= fallback and len(tok.encode("龘")) == 3
        assert not fallback & set(tok.encode(KOREAN[0] + CHINESE[0] + JAPANESE[0]))


@pytest.mark.parametrize("kind", KINDS)
def test_nfkc_round_trip_is_exact_on_the_normalised_text(kind):
    tok = train_tokenizer(CORPUS, 700, kind, normalization="nfkc")
    for text in TEXTS + UNSEEN:
        assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFKC", text)
    assert tok.decode(tok.encode("ﬁne ＡＢＣ")) == "fine ABC"  # the documented loss: compatibility forms fold


@pytest.mark.parametrize("kind,pre", SETTINGS)
def test_transformers_loads_the_saved_tokenizer_with_the_same_ids(tokenizers, tmp_path, kind, pre):
    from transformers import PreTrainedTokenizerFast

    tokenizers[kind, pre].save(tmp_path / "tokenizer.json")
    assert (tmp_path / SIDECAR).is_file() == (pre == "korean-morphemes")
    ours = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert ours.pretokenize == pre and ours.kind == kind
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for text in TEXTS + UNSEEN[:3]:
        if pre == "korean-morphemes":  # rain's morpheme pieces, handed over as words
            theirs = hf(morphemes.split_morphemes(text), is_split_into_words=True, add_special_tokens=False).input_ids
        else:
            theirs = hf(text, add_special_tokens=False).input_ids
        assert theirs == ours.encode(text) == tokenizers[kind, pre].encode(text)
        assert hf.decode(theirs) == text


def test_korean_tokens_never_cross_a_morpheme(tokenizers):
    assert morphemes.split_morphemes("저는 어제 학교에 갔다.") == ["저", "는", " 어제", " 학교", "에", " 갔", "다", "."]
    for kind in KINDS:
        tok = tokenizers[kind, "korean-morphemes"]
        for text in KOREAN + EMOJI:
            pieces = morphemes.split_morphemes(text)
            assert "".join(pieces) == text
            enc = tok.hf.encode(pieces, is_pretokenized=True, add_special_tokens=False)
            assert enc.ids == tok.encode(text)
            by_piece: dict[int, list[int]] = {}
            for token, piece in zip(enc.ids, enc.word_ids):
                by_piece.setdefault(piece, []).append(token)
            # each token belongs to one piece, and each piece's tokens spell exactly that piece
            assert [tok.decode(ids) for _, ids in sorted(by_piece.items())] == pieces
    # without the morpheme step, tokens do cross morphemes (a stem and its particle: 학교에 is one word)
    plain = tokenizers["bytelevel-bpe", "none"]
    crossing = 0
    for text in KOREAN:
        cuts = np.cumsum([len(p) for p in morphemes.split_morphemes(text)])
        crossing += sum(any(s < c < e for c in cuts) for s, e in plain.hf.encode(text, add_special_tokens=False).offsets)
    assert crossing > 0


def test_cjk_chars_gives_every_han_and_kana_character_its_own_token(tokenizers):
    for kind in KINDS:
        tok = tokenizers[kind, "cjk-chars"]
        for text in CHINESE + JAPANESE:
            cjk = [c for c in text if unicodedata.name(c).startswith(("CJK UNIFIED", "HIRAGANA", "KATAKANA"))]
            pieces = [tok.decode([i]) for i in tok.encode(text)]
            assert [p for p in pieces if p in cjk] == cjk  # each such character is one whole token


def test_morpheme_cuts_touch_korean_only():
    code = "def area(r):\n    return 3.14 * r ** 2  # 원의 넓이\n"
    assert morphemes.split_morphemes(code) == ["def area(r):\n    return 3.14 * r ** 2  #", " 원", "의", " 넓이\n"]
    assert morphemes.split_morphemes("plain English, no Hangul.") == ["plain English, no Hangul."]
    assert morphemes.split_morphemes("학교에서Python을 배웠다") == ["학교", "에서", "Python", "을", " 배", "웠", "다"]


def test_the_morpheme_setting_travels_with_tokenizer_json(tokenizers, tmp_path):
    import torch

    from rain.model.transformer import Transformer

    korean, plain = tmp_path / "korean", tmp_path / "plain"
    korean.mkdir()
    plain.mkdir()
    tokenizers["bytelevel-bpe", "korean-morphemes"].save(korean / "tokenizer.json")
    # the same tokenizer.json without its sidecar: only the sidecar tells them apart, and the checks see it
    (plain / "tokenizer.json").write_bytes((korean / "tokenizer.json").read_bytes())
    assert load_tokenizer(plain).pretokenize == "none"
    assert not ckpt.same_tokenizer(korean / "tokenizer.json", plain / "tokenizer.json")
    assert load_tokenizer(korean).pretokenize == "korean-morphemes"
    with pytest.raises(RainError, match="must be tokenised with the parent's tokenizer"):
        ckpt.check_same_tokenizer(korean / "tokenizer.json", plain / "tokenizer.json")
    # tokenizers saved side by side in one folder keep their own settings
    tokenizers["bytelevel-bpe", "korean-morphemes"].save(tmp_path / "ko.json")
    tokenizers["bytelevel-bpe", "none"].save(tmp_path / "plain.json")
    assert (Tokenizer.from_file(tmp_path / "ko.json").pretokenize, Tokenizer.from_file(tmp_path / "plain.json").pretokenize) \
        == ("korean-morphemes", "none") and (tmp_path / "ko.pretokenize.json").is_file()
    # a checkpoint keeps it
    cfg = quick_config()
    cfg.model = small_model_config(vocab_size=768)
    torch.manual_seed(0)
    saved = ckpt.save_checkpoint(tmp_path / "run" / "checkpoints" / "last", Transformer(cfg.model), None,
                                 {"step": 1, "tokens": 1}, cfg, korean / "tokenizer.json")
    assert json.loads((saved / SIDECAR).read_text())["pretokenize"] == "korean-morphemes"
    assert ckpt.same_tokenizer(saved / "tokenizer.json", korean / "tokenizer.json")
    assert Tokenizer.from_file(saved / "tokenizer.json").encode(KOREAN[0]) == tokenizers["bytelevel-bpe", "korean-morphemes"].encode(KOREAN[0])
    # prepare's worker processes load it by path too
    job = Job(FilterConfig(), True, 0, 0.0, str(korean / "tokenizer.json"))
    out = process(KOREAN, job)
    expected = tokenizers["bytelevel-bpe", "korean-morphemes"].encode_batch(KOREAN)
    assert out.tokens.tolist() == [i for ids in expected for i in ids]


def test_prepare_trains_the_configured_kind_and_keeps_every_document(tmp_path):
    docs = [("ko", f"{t} {i}번") for i in range(30) for t in KOREAN] + [("en", f"{t} ({i})") for i in range(30) for t in ENGLISH]
    cfg = quick_config(tokenizer_kind="unigram", normalization="nfkc", pretokenize="korean-morphemes")
    cfg.model = small_model_config(vocab_size=768)
    manifest = prepare(cfg, tmp_path / "out", documents=lambda: iter(docs), log=lambda _: None)
    tok = Tokenizer.from_file(tmp_path / "out" / "tokenizer.json")
    assert (tok.kind, tok.pretokenize) == ("unigram", "korean-morphemes") and (tmp_path / "out" / SIDECAR).is_file()
    assert sorted(decoded_documents(tmp_path / "out", manifest)) == sorted(t for _, t in docs)
    # an existing tokenizer brings its own settings: contradicting ones are refused, not ignored
    with pytest.raises(RainError, match="was trained with pretokenize 'none'"):
        prepare(quick_config(tokenizer=str(_plain_copy(tmp_path)), pretokenize="korean-morphemes"), tmp_path / "again",
                documents=lambda: iter(docs))


def _plain_copy(tmp_path):
    folder = tmp_path / "plain-tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes((tmp_path / "out" / "tokenizer.json").read_bytes())
    return folder / "tokenizer.json"


def test_a_missing_analyser_is_one_line_naming_the_extra(tokenizers, tmp_path, monkeypatch):
    tokenizers["bytelevel-bpe", "korean-morphemes"].save(tmp_path / "tokenizer.json")
    monkeypatch.setitem(sys.modules, "kiwipiepy", None)  # import kiwipiepy now raises ImportError
    monkeypatch.setattr(morphemes, "_kiwi", None)
    for attempt in (lambda: Tokenizer.from_file(tmp_path / "tokenizer.json"),
                    lambda: train_tokenizer(KOREAN, 500, pretokenize="korean-morphemes")):
        with pytest.raises(RainError) as err:
            attempt()
        assert "pip install 'rain[korean]'" in str(err.value) and "\n" not in str(err.value)


def test_text_in_a_legacy_encoding_is_skipped_and_named_with_what_to_do(tmp_path):
    (tmp_path / "news_euckr.txt").write_bytes(("\n".join(KOREAN) + "\n").encode("euc-kr") * 5)
    (tmp_path / "ok.txt").write_text(KOREAN[0] + "\n", encoding="utf-8")
    records = list(read_records(Source("s", [Location(str(tmp_path))]), seed=0))
    assert sorted(r.issue or r.text for r in records) == ["binary", KOREAN[0] + "\n"]  # skipped, counted, not mojibake
    where = next(r.where for r in records if r.issue)
    assert where.startswith(f"{tmp_path / 'news_euckr.txt'} (") and "\n" not in where
    assert "not UTF-8; it reads as text in a legacy encoding such as EUC-KR" in where and "re-save it as UTF-8" in where
    # ... or read as what it is, once the source says so
    legacy = Source("s", [Location(str(tmp_path / "news_euckr.txt"))], split="line", encoding="euc-kr")
    assert [r.text for r in read_records(legacy, seed=0)] == KOREAN * 5
    with pytest.raises(RainError, match="source ko: encoding 'euc-xx' is not a codec"):
        mixture_from_dict({"source": [{"name": "ko", "location": str(tmp_path), "encoding": "euc-xx"}]}, "m.toml")


def test_byte_tokens_are_ordinary_vocabulary_not_special_tokens(tokenizers):
    tok = tokenizers["unigram", "none"]
    ids = [tok.token_id(t) for t in BYTE_TOKENS]
    assert None not in ids and len(set(ids)) == 256
    assert tok.decode(ids[0xE9:0xEA] + tok.encode(" ok"), skip_special=True) == "\ufffd ok"  # kept, not skipped
    assert np.array_equal(sorted(tok.byte_fallback_ids), sorted(ids))


def test_chat_turns_and_special_tokens_survive_the_morpheme_split(tokenizers):
    from rain.posttrain.chat import encode_chat, render_text

    tok = tokenizers["bytelevel-bpe", "korean-morphemes"]
    assert morphemes.split_morphemes("학교<|im_end|>에") == ["학교", "<|im_end|>", "에"]
    messages = [{"role": "user", "content": KOREAN[0]}, {"role": "assistant", "content": KOREAN[1]}]
    ids, mask, turn_ends = encode_chat(tok, messages)
    assert ids == tok.encode(render_text(messages))  # morpheme-split like pretraining text
    assert ids.count(tok.token_id("<|im_start|>")) == 2 and len(turn_ends) == 2
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == KOREAN[1] + "<|im_end|>"  # exactly the assistant's content and its closing token
    text = KOREAN[2]
    ids, offsets = tok.encode_with_offsets(text)
    cuts = set(np.cumsum([0] + [len(p) for p in morphemes.split_morphemes(text)])[:-1].tolist())
    assert cuts <= {s for s, _ in offsets} and max(e for _, e in offsets) == len(text)
