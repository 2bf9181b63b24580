from collections import Counter

import pytest
import torch

from conftest import tiny_run_config
from rain.data.tokenizer import Tokenizer
from rain.errors import RainError
from rain.eval.probes import (
    completion_checks, corpus_word_counts, distinct_2, expected_ok, load_suite, longest_repeated_ngram,
    overused_words, probe_checkpoints, render_report, run_prompt_suite,
)
from rain.checkpoint import load_model
from rain.train.trainer import train


def quiet(*_):
    pass


@pytest.fixture
def one_thread():
    """Token-by-token decoding of a tiny model: one thread is several times faster on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_suite_has_every_category_and_expected_answers():
    suite = {e["id"]: e for e in load_suite()}
    assert {e["category"] for e in suite.values()} == {"basic", "facts", "code", "bias", "absurd"}
    assert suite["powers-of-two"]["prompt"] == "1, 2, 4, 8, 16, 32," and suite["powers-of-two"]["expected"] == ["64"]
    assert suite["pangram"]["expected"] == ["lazy dog"]
    assert suite["capital-france"]["expected"] == ["Paris"]
    assert all("expected" not in e for e in suite.values() if e["category"] in ("bias", "absurd"))


def test_suite_errors_name_the_line(tmp_path):
    bad = tmp_path / "suite.jsonl"
    bad.write_text('{"id": "a", "category": "x", "prompt": "p"}\n{"id": "a", "category": "x", "prompt": "q"}\n')
    with pytest.raises(RainError, match=":2: duplicate id"):
        load_suite(bad)
    bad.write_text('{"id": "a", "category": "x", "prompt": "p", "expected": "1", "match": "fuzzy"}\n')
    with pytest.raises(RainError, match=":1: match 'fuzzy'"):
        load_suite(bad)
    bad.write_text('{"id": "a", "category": "x", "prompt": "p", "expected": "1"}\n')
    assert load_suite(bad)[0]["expected"] == ["1"] and load_suite(bad)[0]["match"] == "prefix"


@pytest.mark.parametrize("completion, expected, match, ok", [
    (" 64, 128, 256", ["64"], "prefix", True),
    (" 640, 6400", ["64"], "prefix", False),
    (" 63, 64", ["64"], "prefix", False),
    (" lazy dog. The end.", ["lazy dog"], "prefix", True),
    (" sleepy cat.", ["lazy dog"], "prefix", False),
    (" the city of Paris. It is big.", ["Paris"], "sentence", True),
    (" a big city. Paris is nearby.", ["Paris"], "sentence", False),
    (" Parisian.", ["Paris"], "sentence", False),
    ("    return a+b\n\n\nprint(add(1, 2))", ["return a + b"], "code", True),
    ("    pass\n", ["return a + b"], "code", False),
    (" anything", None, "prefix", None),
])
def test_expected_answer_detection(completion, expected, match, ok):
    assert expected_ok(completion, expected, match) is ok


def test_repetition_signals():
    assert distinct_2("one two three four") == 1.0
    assert distinct_2("the cat the cat the cat") == pytest.approx(2 / 5)
    assert distinct_2("alone") is None
    assert longest_repeated_ngram("a b c d") == 0
    assert longest_repeated_ngram("the icy wind and the icy sea") == 2
    assert longest_repeated_ngram("la la la la la") == 4  # overlapping occurrences count
    checks = completion_checks(" 64, 128, 256", {"expected": ["64"], "match": "prefix"})
    assert checks == {"expected_ok": True, "distinct_2": 1.0, "longest_repeated_ngram": 1}


def test_overused_words_flags_a_pet_word():
    reference = Counter({"the": 5000, "a": 3000, "and": 2500, "cold": 400, "wind": 300, "sea": 400, "dog": 500,
                         "icy": 2})
    completions = ["The icy wind and the icy sea.", "A dog, icy and cold.", "The icy dog and the sea.",
                   "The wind and a dog.", "Zyzzyva zyzzyva zyzzyva."]
    over = dict(overused_words(completions, reference, min_ratio=10, min_completions=3))
    assert list(over) == ["icy"] and over["icy"] > 100
    assert "zyzzyva" not in over  # frequent, but in one completion only
    assert overused_words(completions, Counter()) == []


def test_corpus_word_counts_reads_a_bounded_sample(tiny_data):
    tok = Tokenizer.from_file(tiny_data / "tokenizer.json")
    full = corpus_word_counts(tiny_data, tok, sample_tokens=10**9)
    assert full["apples"] > 0 and full["return"] > 0 and "endoftext" not in full
    small = corpus_word_counts(tiny_data, tok, sample_tokens=2_000, pieces=8)
    assert 0 < sum(small.values()) < sum(full.values()) / 5


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    train(tiny_run_config(tiny_data, max_steps=2, checkpoints=2), run, log=quiet)
    return run


def test_report_for_a_tiny_trained_model_is_reproducible(tiny_run, tiny_data, one_thread):
    folders = [tiny_run / "checkpoints" / "step_0000002", tiny_run / "checkpoints" / "step_0000001"]
    settings = dict(seed=3, max_new_tokens=12, temperature=1.0, top_k=50, top_p=0.95)
    results, tokens = probe_checkpoints(folders, **settings)
    again, _ = probe_checkpoints(folders, **settings)
    assert list(results) == ["step_0000002", "step_0000001"] and tokens["step_0000001"] < tokens["step_0000002"]
    suite = load_suite()
    for label in results:
        assert [r["id"] for r in results[label]] == [e["id"] for e in suite]
        assert [r["completion"] for r in results[label]] == [r["completion"] for r in again[label]]
        assert all(0 < len(r["completion_ids"]) <= 12 for r in results[label])
    other_seed, _ = probe_checkpoints(folders[:1], **{**settings, "seed": 4})
    assert [r["completion"] for r in other_seed["step_0000002"]] != [r["completion"] for r in results["step_0000002"]]

    tok = Tokenizer.from_file(tiny_data / "tokenizer.json")
    report = render_report(results, tokens, reference_counts=corpus_word_counts(tiny_data, tok))
    assert report == render_report(again, tokens, reference_counts=corpus_word_counts(tiny_data, tok))
    assert "| step_0000001 |" in report and "temperature 1.0, top-k 50, top-p 0.95" in report
    for entry in suite:
        section = report.split(f"### {entry['id']}\n", 1)[1].split("\n### ", 1)[0]
        assert section.index("**step_0000001**") < section.index("**step_0000002**")  # in order of tokens seen
        assert results["step_0000001"][suite.index(entry)]["completion"] in section
    assert "Expected: `64` (prefix)" in report and "## bias" in report and "## absurd" in report


def test_suite_runs_with_a_custom_suite_and_greedy_decoding(tiny_run, tiny_data, one_thread):
    model, _ = load_model(tiny_run / "checkpoints" / "last")
    tok = Tokenizer.from_file(tiny_data / "tokenizer.json")
    suite = [{"id": "sum", "category": "basic", "prompt": "Q: What is 3 + 4?\nA:", "expected": ["7"],
              "match": "prefix"},
             {"id": "long", "category": "basic", "prompt": "alice has apples. " * 40}]
    results = run_prompt_suite(model, tok, suite, max_new_tokens=6, temperature=0)
    assert results[0]["checks"]["expected_ok"] in (True, False) and results[1]["checks"]["expected_ok"] is None
    assert results[1]["truncated"] and not results[0]["truncated"]
    assert results == run_prompt_suite(model, tok, suite, max_new_tokens=6, temperature=0)
