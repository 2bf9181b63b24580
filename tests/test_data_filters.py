"""Filters: length, Gopher quality heuristics, exact and MinHash near-duplicate detection."""

import random

import pytest

from rain.data.filters import Deduper, FilterConfig, Signer, gopher_reason, length_reason, normalized_hash, word_hashes
from rain.errors import RainError

PROSE = (
    "The river rises in the hills to the north of the town and flows south through a wide valley. "
    "Farmers have worked the land along its banks for centuries, and the old stone bridge that crosses it "
    "was built with the help of the people who lived there. In spring the water is high and fast, while "
    "in late summer it is slow and clear enough to see the fish that move between the reeds. Visitors come "
    "to walk the path that follows the river, to look at the birds, and to have lunch at the small inn that "
    "stands beside the bridge. The town has grown over the years, but the valley is still quiet."
)


def gopher(text):
    return gopher_reason(text, *word_hashes(text))


def words(n, seed):
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(2000)]
    return [rng.choice(vocab) for _ in range(n)]


def test_length_filter():
    cfg = FilterConfig(min_chars=10, max_chars=20)
    assert length_reason("short", cfg) == "too_short"
    assert length_reason("x" * 21, cfg) == "too_long"
    assert length_reason("just right", cfg) is None
    assert length_reason("", FilterConfig()) is None  # 0 means no limit


def test_gopher_keeps_ordinary_prose_and_names_the_rule_it_breaks():
    assert gopher(PROSE) is None
    assert gopher("the cat and the dog") == "quality:word_count"
    assert gopher("\n".join(f"- bullet number {i} describes the kitchen with care" for i in range(60))) == "quality:bullet_lines"
    no_stop = " ".join(["Large rivers carry sediment downstream toward coastal plains"] * 2 + words(60, 0))
    assert gopher(no_stop) == "quality:stop_words"
    assert gopher(" ".join(["## ###"] * 40 + PROSE.split())) == "quality:symbol_ratio"
    assert gopher("\n".join([PROSE] + ["Buy now and have the best deal of the year!"] * 12)) == "quality:repeated_lines"
    looped = PROSE + " " + " ".join(PROSE.split()[:40]) * 3
    assert gopher(looped) in {"quality:repeated_ngrams", "quality:top_ngram"}
    assert gopher(" ".join(["1234 5678 90"] * 40 + PROSE.split()[:30])) == "quality:alphabetic_words"


def test_exact_dedup_ignores_case_and_whitespace():
    assert normalized_hash("Hello  World\n") == normalized_hash("hello world")
    assert normalized_hash("hello world") != normalized_hash("hello world!")
    d = Deduper(FilterConfig(exact_dedup=True))
    h = normalized_hash(PROSE)
    assert d.check(h, None, exact=True, near=False) is None
    d.add(h, None)
    assert d.check(normalized_hash(PROSE.upper()), None, exact=True, near=False) == "exact_dup"
    assert d.check(h, None, exact=False, near=False) is None  # a source that opts out is not checked


def test_near_dedup_finds_light_edits_not_other_documents():
    cfg = FilterConfig(near_dedup=True, near_dedup_threshold=0.7)
    signer = Signer(cfg.num_perm, cfg.shingle_words)
    base = words(400, 1)
    edited = list(base)
    for i in range(0, 400, 80):  # five single-word edits
        edited[i] = "changed"
    other = words(400, 2)
    d = Deduper(cfg)
    d.add(1, signer.signature(word_hashes(" ".join(base))[0]))
    assert d.check(2, signer.signature(word_hashes(" ".join(edited))[0]), exact=True, near=True) == "near_dup"
    assert d.check(3, signer.signature(word_hashes(" ".join(other))[0]), exact=True, near=True) is None


def test_dedup_index_is_restored_from_its_files(tmp_path):
    cfg = FilterConfig(exact_dedup=True, near_dedup=True)
    signer = Signer(cfg.num_perm, cfg.shingle_words)
    docs = [" ".join(words(200, s)) for s in range(6)]
    d = Deduper(cfg, tmp_path)
    for text in docs[:3]:
        d.add(normalized_hash(text), signer.signature(word_hashes(text)[0]))
    counts = d.checkpoint()
    d.add(normalized_hash(docs[3]), signer.signature(word_hashes(docs[3])[0]))  # after the checkpoint: dropped
    d.checkpoint()
    d.close()
    again = Deduper(cfg, tmp_path)
    again.restore(counts)
    for text, seen in zip(docs[:5], [True, True, True, False, False]):
        assert (again.check(normalized_hash(text), signer.signature(word_hashes(text)[0]), True, True) is not None) == seen


def test_filter_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(RainError, match="unknown filter 'min_len'"):
        FilterConfig.from_dict({"min_len": 3}, "x")
    with pytest.raises(RainError, match="near_dedup_threshold"):
        FilterConfig.from_dict({"near_dedup_threshold": 1.5}, "x")
