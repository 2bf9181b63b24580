import tracemalloc

import numpy as np
import pytest

from rain.data.shards import ShardWriter, open_split
from rain.files import write_json_atomic
from rain.data.tokenizer import Tokenizer
from rain.errors import RainError
from rain.eval.memorisation import (
    INDEX_FILE, audit, bucket_bits, build_index, load_index, longest_verbatim_span, stride_for, window_hashes,
)

EOT = 0


def random_corpus(path, n_tokens=600_000, vocab=50_000, shard_tokens=250_000, seed=0):
    """A prepared-data folder of random documents over three shards (documents run across shard ends)."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(path, "train", np.dtype(np.uint16), shard_tokens, EOT)
    written = 0
    while written < n_tokens:
        doc = rng.integers(1, vocab, int(rng.integers(50, 3000)))
        writer.add(doc)
        written += len(doc) + 1
    write_json_atomic(path / "manifest.json", {"dtype": "uint16", "eot_id": EOT, "splits": {"train": writer.close()}})
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return random_corpus(tmp_path_factory.mktemp("random_corpus"))


@pytest.fixture(scope="module")
def exact_index(corpus, tmp_path_factory):
    return build_index(corpus, tmp_path_factory.mktemp("index") / "exact", k=32)


def stream_tokens(data_dir) -> np.ndarray:
    return np.concatenate([np.asarray(s, dtype=np.int64) for s in open_split(data_dir, "train")])


def unused_tokens(tokens: np.ndarray, vocab: int) -> np.ndarray:
    return np.setdiff1d(np.arange(vocab), tokens)


def planted(tokens, start, length, filler, rng, before=40, after=40) -> list[int]:
    """A completion: tokens that occur nowhere in the corpus around a verbatim passage."""
    return (list(rng.choice(filler, before)) + [int(t) for t in tokens[start: start + length]]
            + list(rng.choice(filler, after)))


def test_window_hashes_match_a_direct_computation():
    tokens = np.random.default_rng(1).integers(0, 70_000, 500)
    full = window_hashes(tokens, 32)
    assert len(full) == 469 and len(np.unique(full)) == 469
    assert np.array_equal(window_hashes(tokens, 32, stride=7), full[::7])
    assert window_hashes(tokens[100:132], 32)[0] == full[100]
    assert len(window_hashes(tokens[:31], 32)) == 0


def test_planted_passage_is_found_with_its_exact_length(corpus, exact_index):
    tokens = stream_tokens(corpus)
    filler = np.arange(50_000, 65_000)  # never in the corpus
    rng = np.random.default_rng(2)
    boundary = exact_index.stream.starts[1]
    for start in (0, 12_345, int(boundary) - 30, len(tokens) - 60):  # incl. across a shard end and at the very end
        span = longest_verbatim_span(exact_index, planted(tokens, start, 60, filler, rng))
        assert span == (60, 40, 100)


def test_fresh_text_has_no_verbatim_span(corpus, exact_index):
    rng = np.random.default_rng(3)
    fresh = [list(rng.integers(1, 50_000, n)) for n in (20, 100, 400)]
    assert all(longest_verbatim_span(exact_index, ids) == (0, 0, 0) for ids in fresh)


def test_audit_reports_the_share_and_the_spans(corpus, exact_index):
    tokens = stream_tokens(corpus)
    rng = np.random.default_rng(4)
    filler = np.arange(50_000, 65_000)
    completions = [planted(tokens, 1000, 75, filler, rng), list(rng.integers(1, 50_000, 200)),
                   planted(tokens, 400_000, 40, filler, rng), []]
    report = audit(completions, exact_index, min_span=50)
    assert report["completions"] == 4 and report["with_span"] == 1 and report["share"] == 0.25
    assert report["longest"] == [75, 0, 40, 0]
    (span,) = report["spans"]
    assert span["completion"] == 0 and (span["start"], span["end"], span["length"]) == (40, 115, 75)
    assert span["token_ids"] == [int(t) for t in tokens[1000:1075]]
    source = span["source"]
    shard = exact_index.stream.shards[[r["file"] for r in exact_index.meta["shards"]].index(source["file"])]
    assert list(shard[source["offset"]: source["offset"] + 75]) == span["token_ids"]
    assert "warning" not in report


def test_strided_index_still_finds_every_long_passage(corpus, tmp_path):
    tokens = stream_tokens(corpus)
    index = build_index(corpus, tmp_path / "strided", k=32, stride=stride_for(60, 32))
    assert index.stride == 29 and index.guaranteed_span == 60
    assert len(index) == -(-(len(tokens) - 31) // 29)
    filler = np.arange(50_000, 65_000)
    rng = np.random.default_rng(5)
    for start in rng.integers(0, len(tokens) - 60, 40):
        assert longest_verbatim_span(index, planted(tokens, int(start), 60, filler, rng)) == (60, 40, 100)
    assert longest_verbatim_span(index, list(rng.integers(1, 50_000, 300))) == (0, 0, 0)
    assert "warning" in audit([], index, min_span=50)


def test_index_file_round_trips_and_is_deterministic(corpus, exact_index, tmp_path):
    again = build_index(corpus, tmp_path / "again", k=32, memory_bytes=1 << 20)  # many buckets, same result
    assert again.meta["buckets"] > 1 and exact_index.meta["buckets"] == 1
    assert (again.path / INDEX_FILE).read_bytes() == (exact_index.path / INDEX_FILE).read_bytes()
    loaded = load_index(exact_index.path)
    assert loaded.meta == exact_index.meta
    assert np.array_equal(loaded.hashes, exact_index.hashes) and np.array_equal(loaded.positions, exact_index.positions)
    assert np.all(np.diff(loaded.hashes.astype(np.float64)) >= 0)
    tokens = stream_tokens(corpus)
    assert np.array_equal(loaded.hashes, np.sort(window_hashes(tokens, 32)))


def test_index_refuses_other_shards(corpus, exact_index, tmp_path):
    other = random_corpus(tmp_path / "other", n_tokens=50_000, seed=9)
    with pytest.raises(RainError, match="other shards"):
        load_index(exact_index.path, other)
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(RainError, match="not a finished"):
        load_index(tmp_path / "unfinished")


def test_index_memory_is_bounded_as_configured(corpus, exact_index, tmp_path):
    n_windows = exact_index.meta["tokens"] - 31
    assert len(exact_index) == n_windows and exact_index.nbytes == 16 * n_windows
    strided = build_index(corpus, tmp_path / "strided", k=32, stride=19)
    assert len(strided) == -(-n_windows // 19) and strided.nbytes == 16 * len(strided)
    assert bucket_bits(10_000_000_000 // 19, 4 << 30) == 3  # 10B tokens at stride 19: 8 buckets of ~2.6 GB
    memory = 1 << 20  # ~9.6 MB would be needed to sort all entries at once
    tracemalloc.start()
    try:
        build_index(corpus, tmp_path / "bounded", k=32, memory_bytes=memory, chunk_tokens=1 << 14)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * memory


def test_real_tokenizer_data(tiny_data, tmp_path):
    index = build_index(tiny_data, tmp_path / "index")
    tokens = stream_tokens(tiny_data)
    tok = Tokenizer.from_file(tiny_data / "tokenizer.json")
    never = unused_tokens(tokens, tok.vocab_size)  # e.g. the reserved special tokens
    assert len(never)
    rng = np.random.default_rng(6)
    start = len(tokens) // 3
    assert longest_verbatim_span(index, planted(tokens, start, 64, never, rng, 5, 5)) == (64, 5, 69)
    fresh = tok.encode("A violet hippopotamus recited seventeen sonnets to a bewildered lighthouse keeper.")
    assert longest_verbatim_span(index, fresh).length < 50
