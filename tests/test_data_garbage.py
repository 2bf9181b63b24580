"""Nothing lost, nothing silent: binary data is never training data, whatever the file is called (skipped,
counted and named in the manifest and report.md); UTF-16/UTF-32/UTF-8 files with a byte-order mark are read
as the text they are; a record longer than data.max_doc_chars is cut into pieces and read in bounded memory,
and a prepare interrupted inside such a record resumes to the same shards."""

import json
import random
import tracemalloc

import numpy as np
import pytest

from tests.conftest import decoded_documents, quick_config
from rain.data import sources
from rain.data.encode import DocStream, Job, Pool
from rain.data.filters import FilterConfig
from rain.data.prepare import prepare
from rain.data.shards import ShardWriter
from rain.data.sources import Location, Source, read_records

WORDS = "the river stone bridge water farmer summer winter garden market village teacher library forest".split()


def prose(seed: int, words: int = 300) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + ".\n"


def random_bytes(seed: int, n: int, low: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(low, 256, n, dtype=np.uint8).tobytes()


def quiet(*_):
    pass


def test_binary_content_is_skipped_counted_and_named_whatever_the_file_is_called(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    good = {f"notes{i}.txt": prose(i) for i in range(6)}
    for name, text in good.items():
        (folder / name).write_text(text)
    (folder / "dump.txt").write_bytes(random_bytes(0, 200_000))  # once 61% of the training tokens
    (folder / "zeros.md").write_bytes(b"\0" * 5000)
    rows = [{"text": prose(10 + i)} for i in range(4)]
    rows.insert(2, {"text": random_bytes(1, 3000).decode("latin-1")})  # binary data smuggled into a JSON string
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    logged = []
    manifest = prepare(quick_config(paths=[str(folder)], val_fraction=0.3), tmp_path / "out", log=logged.append)
    want = sorted([*good.values(), *(r["text"] for i, r in enumerate(rows) if i != 2)])
    assert sorted(decoded_documents(tmp_path / "out", manifest)) == want  # no garbage among the documents
    counts = manifest["input"]["corpus"]
    assert counts["binary"] == 3 and counts["records"] == 6 + 2 + 5
    named = counts["skipped_files"]
    assert sorted(n.split(" (")[0] for n in named) == sorted([f"{folder / 'dump.txt'}", f"{folder / 'zeros.md'}",
                                                             f"{folder / 'rows.jsonl'}:3"])
    assert any("zeros.md (it holds NUL bytes)" in n for n in named)
    report = (tmp_path / "out" / "report.md").read_text()
    for name in ("dump.txt", "zeros.md", "rows.jsonl:3"):
        assert name in report, name
    assert "| corpus | 13 | 0 | 0 | 0 | 0 | 3 |" in report  # the binary column of the input-problems table


def test_every_record_is_checked_for_binary_content(tmp_path):
    rows = [{"text": "an ordinary line of text"},
            {"text": random_bytes(2, 2000).decode("latin-1")},  # NUL characters
            {"text": random_bytes(3, 2000, low=1).decode("latin-1")},  # no NUL, but ~11% control characters
            {"text": random_bytes(4, 2000, low=0x80).decode("utf-8", "replace")},  # mostly U+FFFD
            {"text": "caf\ufffd au lait, one replaced character"},  # a few: still text
            {"text": "a log line \x1b[31mred\x1b[0m with a colour code and a form feed\f"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = list(read_records(Source("s", [Location(str(path))]), seed=0))
    assert [r.issue for r in records] == [None, "binary", "binary", "binary", None, None]
    assert "NUL" in records[1].where and "control characters" in records[2].where and "U+FFFD" in records[3].where
    lines = tmp_path / "lines.txt"
    head = b"".join(b"line %d of ordinary text\n" % i for i in range(400))  # past the 8 kB the file is judged by
    lines.write_bytes(head + random_bytes(5, 500, low=1).replace(b"\n", b" ") + b"\nlast line\n")
    records = list(read_records(Source("s", [Location(str(lines))], split="line"), seed=0))
    assert [r.text for r in records[-3:]] == ["line 399 of ordinary text", None, "last line"]
    assert records[-2].issue == "binary" and records[-2].where.startswith(f"{lines}:401 (")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-8-sig"])
def test_files_with_a_byte_order_mark_are_read_in_their_encoding(tmp_path, encoding):
    text = "Größe café ünïcode line one\nline two € 😀\n"
    data = text.encode(encoding) if encoding != "utf-16-be" else b"\xfe\xff" + text.encode("utf-16-be")
    (tmp_path / "doc.txt").write_bytes(data)
    (tmp_path / "README").write_bytes(data)  # no suffix: judged by content, a BOM says text
    for name in ("doc.txt", "README"):
        source = Source("s", [Location(str(tmp_path / name))])
        assert [(r.text, r.bad_bytes) for r in read_records(source, seed=0)] == [(text, 0)]  # no BOM character
    by_line = Source("s", [Location(str(tmp_path / "doc.txt"))], split="line")
    assert [r.text for r in read_records(by_line, seed=0)] == ["Größe café ünïcode line one", "line two € 😀"]


def test_a_utf16_text_file_becomes_the_words_it_holds(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(4):
        (folder / f"notes{i}.txt").write_text(prose(i))
    wide = "Windows notepad saved this file " + prose(9)
    (folder / "wide.txt").write_bytes(wide.encode("utf-16"))  # BOM + UTF-16-LE
    manifest = prepare(quick_config(paths=[str(folder)], val_fraction=0.4), tmp_path / "out", log=quiet)
    assert wide in decoded_documents(tmp_path / "out", manifest)
    assert manifest["input"]["corpus"]["bad_bytes"] == 0 and manifest["input"]["corpus"]["binary"] == 0


def one_long_line(chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(chars // 6)]
    return " ".join(words)[:chars]


def test_a_long_record_is_cut_at_whitespace_and_read_in_bounded_memory(tmp_path, monkeypatch):
    text = one_long_line(3_000_000)
    path = tmp_path / "one_line.txt"
    path.write_text(text)  # 3 MB, no newline
    monkeypatch.setattr(sources, "BLOCK", 1 << 16)  # read 64 kB at a time
    source = Source("s", [Location(str(path))])
    tracemalloc.start()
    pieces = 0
    for record in read_records(source, seed=0, max_chars=50_000):  # held one at a time
        assert record.text and len(record.text) <= 50_000 and record.pos == (0, 0, 0, pieces)
        pieces += 1
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1_000_000, f"reading a 3 MB line held {peak:,} bytes"  # the whole line would be 3 MB at least
    records = list(read_records(source, seed=0, max_chars=50_000))
    assert "".join(r.text for r in records) == text and len(records) == pieces >= 60  # nothing lost
    assert all(r.text.endswith(" ") for r in records[:-1])  # cut between words
    assert [r.text for r in read_records(source, seed=0, start=records[7].pos, max_chars=50_000)] == [r.text for r in records[7:]]
    by_line = list(read_records(Source("s", [Location(str(path))], split="line"), seed=0, max_chars=50_000))
    assert [r.text for r in by_line] == [r.text for r in records]


def test_long_json_records_are_cut_and_a_line_too_long_to_parse_is_counted(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"text": "short"}, {"text": one_long_line(5_000)}, {"text": one_long_line(20_000, seed=1)}, {"text": "end"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = list(read_records(Source("s", [Location(str(path))]), seed=0, max_chars=1_000))
    cut = [r for r in records if r.pos[2] == 1]
    assert "".join(r.text for r in cut) == rows[1]["text"] and all(len(r.text) <= 1_000 and r.split for r in cut)
    assert [r.pos[3] for r in cut] == list(range(len(cut))) and len(cut) >= 5
    skipped = [r for r in records if r.pos[2] == 2]  # 20,000 bytes: over 12 x 1,000, whatever the escaping
    assert [r.issue for r in skipped] == ["too_long"] and f"rows.jsonl:3 (a line of {len(json.dumps(rows[2])) + 1:,} bytes" in skipped[0].where
    assert records[0].text == "short" and records[-1].text == "end"


def test_the_pieces_of_a_record_the_length_filter_drops_are_all_dropped(tmp_path):
    path = tmp_path / "rows.jsonl"
    lengths = [500, 1_500, 5_000]
    path.write_text("".join(json.dumps({"text": one_long_line(n, seed=n)}) + "\n" for n in lengths))
    job = Job(FilterConfig(max_chars=2_000), prose=True, val_seed=0, val_fraction=0, tokenizer=None)
    with Pool(1) as pool:
        stream = DocStream(Source("s", [Location(str(path))]), 0, pool, job, max_chars=1_000)
        docs = list(iter(stream.next, None))
    # 1,500 characters: within the filter, so not cut (the cap rises to the filter's maximum); 5,000: cut, and
    # no piece may slip through as a short document
    assert [(d.record.pos[2], d.reason) for d in docs if d.record.pos[2] < 2] == [(0, None), (1, None)]
    dropped = [d for d in docs if d.record.pos[2] == 2]
    assert len(dropped) >= 3 and {d.reason for d in dropped} == {"too_long"}
    assert sum(d.nbytes for d in dropped) == 5_000


def test_prepare_cuts_a_3mb_line_into_documents_and_says_so(tmp_path):
    text = one_long_line(3_000_000)
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "one_line.txt").write_text(text)
    manifest = prepare(quick_config(paths=[str(folder)], max_doc_chars=100_000, val_fraction=0.1, shard_tokens=500_000),
                       tmp_path / "out", log=quiet)
    counts = manifest["input"]["corpus"]
    docs = sum(manifest["sources"][s]["corpus"]["documents"] for s in ("train", "val"))
    assert counts["records"] == 1 and counts["split"] == 1 and 30 <= docs <= 60
    assert sorted(decoded_documents(tmp_path / "out", manifest)) == sorted(  # every piece, each one document
        r.text for r in read_records(Source("s", [Location(str(folder))]), seed=0, max_chars=100_000))
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| corpus | 1 | 0 | 0 | 0 | 0 | 0 | 0 | 1 |" in report  # the split column


def test_prepare_interrupted_inside_a_long_record_resumes_to_identical_shards(tmp_path, monkeypatch):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "long.txt").write_text(one_long_line(200_000, seed=2))
    for i in range(3):
        (folder / f"short{i}.txt").write_text(prose(i))
    cfg = quick_config(paths=[str(folder)], max_doc_chars=5_000, val_fraction=0.2, shard_tokens=3_000)
    reference = prepare(cfg, tmp_path / "reference", log=quiet)
    assert reference["input"]["corpus"]["split"] == 1 and len(reference["splits"]["train"]) >= 5
    original, calls = ShardWriter.add, {"n": 0}

    def crashing_add(self, ids, source=0):
        calls["n"] += 1
        if calls["n"] == 25:  # after a few checkpoints, each inside the long record
            raise KeyboardInterrupt
        return original(self, ids, source)

    monkeypatch.setattr(ShardWriter, "add", crashing_add)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, tmp_path / "run", log=quiet)
    monkeypatch.setattr(ShardWriter, "add", original)
    logged = []
    resumed = prepare(cfg, tmp_path / "run", log=logged.append)
    assert any(line.startswith("resuming") for line in logged)
    assert [r["sha256"] for s in ("train", "val") for r in resumed["splits"][s]] == \
           [r["sha256"] for s in ("train", "val") for r in reference["splits"][s]]
    assert resumed["input"] == reference["input"]
