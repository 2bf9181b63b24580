"""The files every stage rewrites or appends: atomic rewrites, and JSON Lines read with one clear rule."""

import pytest

from rain.errors import RainError
from rain.files import read_jsonl, write_atomic
from rain.train.metrics import read_metrics


def test_a_torn_last_line_is_dropped_with_a_warning_but_a_bad_middle_line_is_an_error(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"st')  # a write cut off by a full disk
    assert read_metrics(tmp_path) == [{"step": 1}, {"step": 2}]
    assert "dropped an unfinished last line" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(RainError, match=r"metrics.jsonl:2: not valid JSON"):
        read_metrics(tmp_path)
    with pytest.raises(RainError, match=r"x.jsonl:1: not valid JSON"):  # without torn_tail, no line is dropped
        (tmp_path / "x.jsonl").write_text('{"a"')
        read_jsonl(tmp_path / "x.jsonl")


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    write_atomic(target, b"old")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", broken_fsync)
    with pytest.raises(RainError, match="could not write .*config.json: No space left on device"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["config.json"]
