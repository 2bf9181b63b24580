"""Reading sources: every supported format, exact restarts from a position, and bad input that is either
skipped and counted or stopped with a one-line RainError naming the file."""

import gzip
import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from rain.data.sources import Location, Source, read_records
from rain.errors import RainError


def texts(source, start=(0, 0, 0)):
    return [r.text for r in read_records(source, seed=0, start=start) if r.text is not None]


def src(*paths, text="text", **kw):
    return Source(name="s", locations=[Location(str(p), text) for p in paths], **kw)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_every_format_yields_its_documents(tmp_path):
    rows = [{"text": f"document number {i}"} for i in range(5)]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    write_jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    pq.write_table(pa.table({"text": [r["text"] for r in rows]}), tmp_path / "d.parquet", row_group_size=2)
    want = [r["text"] for r in rows]
    for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst", "d.parquet"):
        assert texts(src(tmp_path / name)) == want, name


def test_text_files_folders_globs_and_archives(tmp_path):
    code = tmp_path / "code"
    (code / "pkg" / "tests").mkdir(parents=True)
    (code / "pkg" / "a.py").write_text("def a():\n    return 1\n")
    (code / "pkg" / "b.py").write_text("def b():\n    return 2\n")
    (code / "pkg" / "tests" / "test_a.py").write_text("assert True\n")
    (code / "notes.md").write_text("# not code\n")
    got = texts(src(code, kind="code", exclude=["tests"]))
    assert sorted(got) == ["def a():\n    return 1\n", "def b():\n    return 2\n"]  # *.py by default, tests left out
    assert len(texts(src(f"{code}/**/*.md"))) == 1
    lines = tmp_path / "wiki.txt"
    lines.write_text("first article\n\nsecond article\n")
    assert texts(src(lines, split="line")) == ["first article", "second article"]  # the blank line is counted empty
    assert texts(src(lines, split="paragraph")) == ["first article\n", "second article\n"]
    archive = tmp_path / "docs.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        for name, body in (("docs/a.rst.txt", "alpha"), ("docs/b.bin", "skip me"), ("docs/c.txt", "gamma")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body.encode()))
    assert sorted(texts(src(archive))) == ["alpha", "gamma"]


def test_text_templates_join_fields(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "1+1?", "answer": "2"}, {"question": "no answer"}])
    records = list(read_records(src(path, text="Q: {question}\nA: {answer}"), seed=0))
    assert records[0].text == "Q: 1+1?\nA: 2"
    assert records[1].issue == "missing_field"


def test_restart_from_any_position_gives_the_same_tail(tmp_path):
    for i in range(3):
        write_jsonl(tmp_path / f"part{i}.jsonl", [{"text": f"file {i} doc {j}"} for j in range(4)])
    pq.write_table(pa.table({"text": [f"row {j}" for j in range(7)]}), tmp_path / "rows.parquet", row_group_size=3)
    source = src(tmp_path / "*.jsonl", tmp_path / "rows.parquet")
    records = list(read_records(source, seed=3))
    assert len(records) == 19
    for k in range(len(records)):
        assert [r.text for r in read_records(source, seed=3, start=records[k].pos)] == [r.text for r in records[k:]]


def test_file_order_is_shuffled_by_seed_and_reproducible(tmp_path):
    for i in range(8):
        (tmp_path / f"{i}.txt").write_text(f"doc {i}")
    source = src(tmp_path)
    assert texts(source) == texts(source)
    orders = {tuple(r.text for r in read_records(source, seed=s)) for s in range(4)}
    assert len(orders) > 1


def test_bad_lines_bad_bytes_and_empty_documents_are_counted_not_fatal(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"text": "good one"}\n'
                     b'{"text": "truncated\n'
                     b'[1, 2, 3]\n'
                     b'{"text": "caf\xe9 latin-1 byte"}\n'
                     b'{"text": "   "}\n'
                     b'{"other": "no text field"}\n'
                     b'{"text": "lone \\ud800 surrogate"}\n'
                     b'{"text": "good two"}\n')
    records = list(read_records(src(path), seed=0))
    issues = [r.issue for r in records]
    assert issues == [None, "bad_json", "bad_json", None, "empty", "missing_field", None, None]
    assert records[3].text == "caf\ufffd latin-1 byte" and records[3].bad_bytes == 1
    assert records[6].text == "lone \ufffd surrogate" and records[6].bad_bytes == 1
    assert records[1].where == f"{path}:2"


def test_a_file_with_the_wrong_text_field_is_a_structure_error(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}] * 3)
    with pytest.raises(RainError, match=r"qa.jsonl:3: .*text field 'text' \(fields: question, answer\)"):
        list(read_records(src(path), seed=0))
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "t.parquet")
    with pytest.raises(RainError, match=r"t.parquet: no column 'text' \(columns: body\)"):
        list(read_records(src(tmp_path / "t.parquet"), seed=0))


def test_truncated_compressed_and_parquet_files_name_the_file(tmp_path):
    data = "".join(json.dumps({"text": f"doc {i} " * 40}) + "\n" for i in range(2000)).encode()
    zst = zstandard.ZstdCompressor().compress(data)
    (tmp_path / "cut.jsonl.zst").write_bytes(zst[: len(zst) // 2])
    with pytest.raises(RainError, match=r"cut.jsonl.zst: truncated zstd file"):
        list(read_records(src(tmp_path / "cut.jsonl.zst"), seed=0))
    gz = gzip.compress(data)
    (tmp_path / "cut.jsonl.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(RainError, match=r"cut.jsonl.gz: truncated or corrupt gzip"):
        list(read_records(src(tmp_path / "cut.jsonl.gz"), seed=0))
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": ["x" * 100] * 100}), buf)
    (tmp_path / "cut.parquet").write_bytes(buf.getvalue()[:-20])
    with pytest.raises(RainError, match=r"cut.parquet: not a readable parquet file"):
        list(read_records(src(tmp_path / "cut.parquet"), seed=0))


def test_unknown_schemes_missing_paths_and_unsupported_files(tmp_path):
    with pytest.raises(RainError, match=r"unknown scheme 's3://'"):
        list(read_records(src("s3://bucket/data.jsonl"), seed=0))
    with pytest.raises(RainError, match=r"no such file or folder \(for a Hugging Face dataset write hf://org/name\)"):
        list(read_records(src("HuggingFaceFW/fineweb-edu"), seed=0))
    (tmp_path / "table.bin").write_bytes(b"\x00\x01 binary")
    with pytest.raises(RainError, match="unsupported file type"):
        list(read_records(src(tmp_path / "table.bin"), seed=0))


def test_hf_source_reads_a_local_mirror_in_the_hub_layout(tmp_path):
    repo = tmp_path / "mirror" / "HuggingFaceFW" / "fineweb-edu"
    (repo / "sample" / "10BT").mkdir(parents=True)
    (repo / "data").mkdir()
    for i in range(2):
        pq.write_table(pa.table({"text": [f"sample {i}-{j}" for j in range(3)], "score": [3.0] * 3}),
                       repo / "sample" / "10BT" / f"{i:03d}_00000.parquet")
    pq.write_table(pa.table({"text": ["full dump doc"], "score": [2.0]}), repo / "data" / "000.parquet")
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files: data/*\n"
                                    "- config_name: sample-10BT\n  data_files: sample/10BT/*\n---\n")
    source = src("hf://HuggingFaceFW/fineweb-edu?name=sample-10BT", hf_mirror=str(tmp_path / "mirror"))
    records = list(read_records(source, seed=0))
    assert [r.text for r in records] == [f"sample {i}-{j}" for i in range(2) for j in range(3)]
    assert [r.text for r in read_records(source, seed=0, start=records[4].pos)] == ["sample 1-1", "sample 1-2"]
    wrong = src("hf://HuggingFaceFW/fineweb-edu?name=nope", hf_mirror=str(tmp_path / "mirror"))
    with pytest.raises(RainError, match=r"cannot open hf://HuggingFaceFW/fineweb-edu\?name=nope .*'nope' not found"):
        list(read_records(wrong, seed=0))


def test_hf_source_offline_is_one_clear_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("RAIN_HF_MIRROR", raising=False)
    with pytest.raises(RainError, match=r"source s: hf://HuggingFaceTB/finemath\?name=finemath-4plus: the Hugging Face hub is not reachable"):
        list(read_records(src("hf://HuggingFaceTB/finemath?name=finemath-4plus"), seed=0))
