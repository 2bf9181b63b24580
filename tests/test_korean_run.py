"""A Korean run end to end on CPU (issue "Every language"): prepare with the morpheme option -> train a tiny model
-> sample -> export -> transformers loads the tokenizer and the model, gives rain's ids and rain's logits, and the
card says the model is Korean and how to tokenise for it."""

import json
import random

import torch
import transformers

from rain import checkpoint as ckpt
from rain.cli import main as rain
from rain.data import morphemes
from rain.data.prepare import prepare
from rain.train.commands import sample
from rain.train.trainer import train
from tests.conftest import small_model_config, tiny_run_config

SUBJECTS = ["민수는", "지영이는", "우리 어머니는", "그 학생은", "옆집 할아버지는", "선생님께서는"]
PLACES = ["도서관에서", "시장에서", "학교 운동장에서", "바닷가에서", "회사 근처 식당에서"]
ACTS = ["책을 읽었다", "친구를 만났습니다", "점심을 먹었어요", "사진을 찍었다", "오래 기다렸습니다"]
TAILS = ["날씨가 무척 맑았다.", "모두 즐거워 보였다.", "저녁에는 비가 내렸다.", "내일 다시 가기로 했다."]


def korean_documents(n: int = 240, seed: int = 0) -> list[tuple[str, str]]:
    """Short Korean prose: subject, place, action and an afterthought, in real sentences."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sentences = [f"{rng.choice(SUBJECTS)} 오늘 {rng.choice(PLACES)} {rng.choice(ACTS)}. {rng.choice(TAILS)}"
                     for _ in range(4)]
        docs.append(("ko_web", " ".join(sentences)))
    return docs


MIXTURE = """
[filters]
min_chars = 50
quality = true          # Gopher's rules: English only, so Korean prose passes to the language keep-list
near_dedup = false      # templated sentences: near-duplicates by construction

[[source]]
name = "ko_web"
kind = "prose"
languages = ["ko"]
location = "ko_web.jsonl"
"""


def test_a_korean_run_prepares_trains_samples_and_exports_to_transformers(tmp_path, capsys):
    cfg = tiny_run_config(max_steps=6, eval_every=3, checkpoints=0)
    cfg.model = small_model_config(context=64)
    cfg.data.tokenizer_kind, cfg.data.normalization, cfg.data.pretokenize = "unigram", "nfkc", "korean-morphemes"
    docs = korean_documents()
    (tmp_path / "ko_web.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for _, t in docs))
    (tmp_path / "mix.toml").write_text(MIXTURE)
    cfg.data.mixture = str(tmp_path / "mix.toml")
    manifest = prepare(cfg, tmp_path / "data", log=lambda *_: None)
    assert (tmp_path / "data/pretokenize.json").is_file()
    shares = manifest["languages"]["ko_web"]["train"]
    assert list(shares) == ["ko"] and shares["ko"]["documents"] > 200, shares  # langid: every document Korean

    cfg.data.dir = str(tmp_path / "data")
    train(cfg, tmp_path / "run", log=lambda *_: None)
    last = tmp_path / "run/checkpoints/last"
    tok = ckpt.tokenizer(ckpt.find(last))
    assert tok.pretokenize == "korean-morphemes"
    text = docs[0][1]
    assert tok.decode(tok.encode(text)) == text  # NFKC leaves Hangul syllables as they are: exact round trip
    [(prompt, completion)] = sample(last, ["민수는 오늘"], max_tokens=12, seed=1)
    assert prompt == "민수는 오늘" and completion and "\ufffd" not in completion

    export = tmp_path / "export"
    assert rain(["export", str(tmp_path / "run"), str(export), "--format", "hf"]) == 0
    assert "is_split_into_words=True" in capsys.readouterr().out
    hf_tok = transformers.AutoTokenizer.from_pretrained(export)
    pieces = morphemes.split_morphemes(text)
    ids = hf_tok(pieces, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    assert ids == tok.encode(text) and hf_tok.decode(ids) == text
    hf = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    model, _ = ckpt.load_model(last)
    x = torch.tensor([ids[:60]])
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max().item() < 1e-4
    card = (export / "README.md").read_text()
    assert "language:\n- ko\n" in card and "kiwipiepy" in card and "is_split_into_words" in card
