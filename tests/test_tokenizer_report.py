"""`rain tokenizer report`: bytes per token and tokens per word per source and language, byte-fallback and unknown
rates, two tokenizers compared on the same text; and the model card's languages from the data's measured shares
(issue 15, items 3 and 4)."""

import json
import random

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

from rain.cli import main
from rain.data import tokenizer_report as tr
from rain.data.tokenizer import EOT, Tokenizer, train_bpe
from tests.test_bad_input import one_line_error

ENGLISH = ["The river runs past the old mill and into the sea.", "A small model reads the text one token at a time.",
           "Every morning the baker opens the shop before the sun rises over the hills."]
KOREAN = ["강물은 오래된 방앗간을 지나 바다로 흘러갑니다.", "작은 모델은 글을 한 번에 한 토큰씩 읽습니다.",
          "제빵사는 매일 아침 해가 뜨기 전에 가게 문을 엽니다."]


@pytest.fixture(scope="module")
def english_bpe():
    """Byte-level BPE trained on English only: a Korean syllable (3 UTF-8 bytes) stays 3 byte tokens."""
    return train_bpe(ENGLISH * 20, 300)


@pytest.fixture(scope="module")
def larger_bpe():
    return train_bpe(ENGLISH * 20, 400)


def hand_built(byte_fallback: bool) -> Tokenizer:
    """A BPE of single letters and the space, no merges: byte fallback (`<0xNN>`) or an unknown token otherwise."""
    vocab = {EOT: 0, "<unk>": 1, " ": 2, **{c: 3 + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}}
    if byte_fallback:
        vocab.update({f"<0x{b:02X}>": len(vocab) + b for b in range(256)})
    return Tokenizer(HFTokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=byte_fallback)))


def test_bytes_per_token_and_tokens_per_word_by_hand(english_bpe):
    # 가나 다라마: 5 syllables of 3 bytes and one space = 16 bytes; none of its bytes were merged in training,
    # so 16 tokens; 2 words: 8 tokens a word.
    m = tr.measure(english_bpe, "A", {"ko": [("ko", "가나 다라마")]})
    row = tr.rows(m)[-1]
    assert (row["bytes"], row["tokens"], row["documents"]) == (16, 16, 1)
    assert row["bytes_per_token"] == 1.0 and row["tokens_per_unit"] == 8.0 and row["unit"] == "word"
    english = " ".join(ENGLISH)
    total = tr.rows(tr.measure(english_bpe, "A", {"en": [("en", english)]}))[-1]
    assert total["bytes_per_token"] == len(english.encode()) / len(english_bpe.encode(english)) > 1.5


def test_documents_split_by_detected_language_and_source(english_bpe):
    texts = {"web": ENGLISH + KOREAN, "notes": KOREAN[:1]}
    documents = tr.with_languages(texts)
    assert [lang for lang, _ in documents["web"]] == ["en"] * 3 + ["ko"] * 3
    m = tr.measure(english_bpe, "A", documents)
    assert m.by_language["ko"].documents == 4 and m.by_language["en"].documents == 3
    assert m.by_language["ko"].bytes == sum(len(t.encode()) for t in KOREAN + KOREAN[:1])
    assert m.by_source["notes"].tokens == len(english_bpe.encode(KOREAN[0]))
    assert m.total.tokens == m.by_language["ko"].tokens + m.by_language["en"].tokens
    ko, en = (r for r in tr.rows(m) if r["group"] == "language" and r["name"] in ("ko", "en"))
    assert ko["bytes_per_token"] < en["bytes_per_token"]  # an English vocabulary: Korean costs a token a byte
    assert tr.figures(m.by_language["ko"], "ja")["unit"] == "char"  # no spaces between words: per character
    japanese = "猫がマットの上に座った。"  # 12 characters
    source = tr.rows(tr.measure(english_bpe, "A", {"ja-notes": [("ja", japanese)]}))[0]
    assert source["unit"] == "char" and source["tokens_per_unit"] == source["tokens"] / 12


def test_report_md_lists_the_largest_languages_and_sums_the_rest(english_bpe):
    documents = {"mixed": [(f"l{i}", "word " * (i + 1)) for i in range(12)]}
    m = tr.measure(english_bpe, "A", documents)
    shown = [r["name"] for r in tr._shown(tr.rows(m)) if r["group"] == "language"]
    assert shown == [f"l{i}" for i in range(11, 3, -1)] + ["other (4 languages)"]
    md = tr.markdown({"text": "t", "language_id": "langid", "tokenizers": [{**m.tokenizer, "rows": tr.rows(m)}]})
    other = m.by_language["l0"].tokens + m.by_language["l1"].tokens + m.by_language["l2"].tokens + m.by_language["l3"].tokens
    assert f"| language | other (4 languages) | 4 | {5 * (1 + 2 + 3 + 4)} | {other} |" in md


def test_byte_fallback_and_unknown_rates():
    text = "abc 가"  # 4 tokens for "abc ", then 가: 3 bytes (fallback) or one unknown token
    fallback = tr.rows(tr.measure(hand_built(True), "A", {"s": [("ko", text)]}))[-1]
    unknown = tr.rows(tr.measure(hand_built(False), "B", {"s": [("ko", text)]}))[-1]
    assert (fallback["tokens"], fallback["byte_fallback_rate"], fallback["unknown_rate"]) == (7, 3 / 7, 0)
    assert (unknown["tokens"], unknown["byte_fallback_rate"], unknown["unknown_rate"]) == (5, 0, 1 / 5)


def test_two_tokenizers_compared_on_the_same_text(english_bpe, larger_bpe):
    documents = tr.with_languages({"web": ENGLISH + KOREAN})
    a, b = tr.measure(english_bpe, "A", documents), tr.measure(larger_bpe, "B", documents)
    rows = {(r["group"], r["name"]): r for r in tr.compare(a, b)}
    english_a = sum(len(english_bpe.encode(t)) for t in ENGLISH)
    english_b = sum(len(larger_bpe.encode(t)) for t in ENGLISH)
    assert rows[("language", "en")]["token_ratio"] == english_b / english_a < 1  # more merges, fewer tokens
    assert rows[("total", "all")]["tokens_a"] == a.total.tokens and rows[("total", "all")]["tokens_b"] == b.total.tokens


def test_cli_writes_the_report_and_refuses_bad_input(english_bpe, larger_bpe, tmp_path, capsys):
    english_bpe.save(tmp_path / "a.json")
    larger_bpe.save(tmp_path / "b.json")
    (tmp_path / "mixed.txt").write_text("\n\n".join(ENGLISH + KOREAN))
    (tmp_path / "web.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ENGLISH))
    out = tmp_path / "out"
    code = main(["tokenizer", "report", "--tokenizer", str(tmp_path / "a.json"), "--tokenizer", str(tmp_path / "b.json"),
                 "--text", str(tmp_path / "mixed.txt"), f"c4={tmp_path / 'web.jsonl'}", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    sources = {r["name"]: r for r in report["tokenizers"][0]["rows"] if r["group"] == "source"}
    assert sources["mixed"]["documents"] == 6 and sources["c4"]["documents"] == 3
    md = (out / "report.md").read_text()
    assert "| language | ko | 3 |" in md and "## Comparison" in md
    capsys.readouterr()
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    one_line_error(capsys, ["tokenizer", "report", "--tokenizer", tmp_path / "a.json", "--text", tmp_path / "latin1.txt",
                            "--out", out], "latin1.txt: not UTF-8 text")
    one_line_error(capsys, ["tokenizer", "report", "--tokenizer", tmp_path / "missing.json", "--text",
                            tmp_path / "mixed.txt", "--out", out], "missing.json: file not found")


def test_report_on_a_prepared_folder_reads_its_held_out_documents(tiny_data, english_bpe, tmp_path):
    texts = tr.texts_from_prepared(tiny_data, per_source=5)
    assert texts and all(1 <= len(docs) <= 5 for docs in texts.values())
    english_bpe.save(tmp_path / "a.json")
    result = tr.report([str(tiny_data), str(tmp_path / "a.json")], texts, tmp_path / "out", origin=str(tiny_data))
    assert [t["name"] for t in result["tokenizers"]] == [f"A: {tiny_data.name}", "B: a.json"]
    own = result["tokenizers"][0]["rows"][-1]
    assert own["documents"] == sum(len(docs) for docs in texts.values())


def test_model_card_lists_the_languages_the_data_measured(tmp_path):
    from rain.checkpoint import Checkpoint
    from rain.data.prepare import prepare
    from rain.export.card import model_card
    from tests.conftest import quick_config, tiny_run_config

    rng = random.Random(0)  # distinct documents: a split is chosen by each document's hash
    web = ([" ".join(rng.choices(ENGLISH, k=6)) for _ in range(30)] + [" ".join(rng.choices(KOREAN, k=6)) for _ in range(12)]
           + ["Das ist ein kurzer deutscher Satz über den Fluss."])
    (tmp_path / "web.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in web))
    (tmp_path / "mix.toml").write_text('[[source]]\nname = "web"\nlocation = "web.jsonl"\nlanguages = ["en", "ko", "de"]\n')
    data = tmp_path / "data"
    prepare(quick_config(mixture=str(tmp_path / "mix.toml"), val_fraction=0.2), data, log=lambda *_: None)
    # The checkpoint of a run on that data as state.json records it (training it would add seconds, not facts).
    last = Checkpoint(tmp_path / "run/checkpoints/last", "last", tiny_run_config(data), step=1, tokens=256,
                      data_dir=str(data), parent=None, chat_template=None, state={"step": 1, "tokens": 256})
    card = model_card(last, 1000, 500, Tokenizer.from_file(data / "tokenizer.json"), "tiny-ko")
    front = card.split("---")[1]
    assert "language:\n- en\n- ko\n" in front and "- de" not in front  # German: under 1% of the characters
    manifest = json.loads((data / "manifest.json").read_text())
    chars = {code: c["chars"] for code, c in manifest["languages"]["web"]["train"].items()}
    ko = chars["ko"] / sum(chars.values())
    assert f"ko {100 * ko:.1f}%" in card and "English-centred" not in card


@pytest.mark.parametrize("kind", ["bpe-byte-fallback", "unigram"])
def test_trained_byte_fallback_kinds_spell_unseen_korean_in_bytes(kind):
    from rain.data.tokenizer import train_tokenizer

    tok = train_tokenizer(ENGLISH * 20, 400, kind=kind)
    m = tr.measure(tok, "A", {"ko": [("ko", KOREAN[0])]})
    ids = tok.encode(KOREAN[0])
    assert m.total.byte_fallback == sum(i in tok.byte_fallback_ids for i in ids) > 0
    assert m.total.unknown == 0 and m.tokenizer["byte_fallback"]  # byte fallback never needs the unknown token
