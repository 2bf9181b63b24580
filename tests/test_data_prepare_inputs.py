"""What `rain prepare --data` accepts: text files of any name (README, copyright), gzipped text files, binary
files skipped and counted; its --help lists every kind and every preset; a failed prepare leaves no folder
behind that it created."""

import gzip
import random
from pathlib import Path

import pytest

from tests.conftest import decoded_documents, quick_config
from rain.cli import main as rain_main
from rain.data.prepare import prepare
from rain.data.sources import Location, Source, read_records
from rain.errors import RainError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(random.Random(0).randrange(256) for _ in range(3000))


def paragraph(seed: int, words: int = 400) -> str:
    rng = random.Random(seed)
    vocab = "the package is free software you can redistribute it under the terms of license version new release fixes".split()
    return " ".join(rng.choice(vocab) for _ in range(words)) + "\n"


def debian_doc_folder(root: Path) -> dict[str, str]:
    """A /usr/share/doc/<pkg>-like folder; returns the text each readable file holds."""
    root.mkdir(parents=True)
    texts = {"README": "README for pkg\n" + paragraph(1), "copyright": "Copyright 2024 someone\n" + paragraph(2),
             "changelog.gz": "pkg (1.0-1) unstable; urgency=low\n" + paragraph(3)}
    (root / "README").write_text(texts["README"])
    (root / "copyright").write_text(texts["copyright"])
    (root / "changelog.gz").write_bytes(gzip.compress(texts["changelog.gz"].encode()))
    (root / "logo").write_bytes(PNG)  # binary, no suffix
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\n\trepositoryformatversion = 0\n")  # version control: never read
    return texts


def test_package_docs_folder_reads_suffixless_and_gzipped_text_and_skips_binary(tmp_path):
    texts = debian_doc_folder(tmp_path / "pkg")
    logged = []
    manifest = prepare(quick_config(paths=[str(tmp_path / "pkg")], val_fraction=0.5), tmp_path / "out", log=logged.append)
    assert sorted(decoded_documents(tmp_path / "out", manifest)) == sorted(texts.values())  # gunzipped, whole
    counts = manifest["input"]["pkg"]
    assert counts["records"] == 4 and counts["binary"] == 1
    assert counts["skipped_files"] == [f"{tmp_path / 'pkg' / 'logo'} (it holds NUL bytes)"]
    assert any("skipped 1 binary file(s)" in line and "logo" in line for line in logged)
    assert "binary at " in (tmp_path / "out" / "report.md").read_text()


def test_files_are_read_by_content_or_inner_name(tmp_path):
    (tmp_path / "notes.md.gz").write_bytes(gzip.compress(b"first paragraph\n\nsecond paragraph\n"))
    (tmp_path / "LATIN1").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e with a few accents".encode("latin-1"))
    (tmp_path / "blob").write_bytes(PNG)
    notes = Source("s", [Location(str(tmp_path / "notes.md.gz"))], split="paragraph")
    assert [r.text for r in read_records(notes, seed=0)] == ["first paragraph\n", "second paragraph\n"]
    latin = list(read_records(Source("s", [Location(str(tmp_path / "LATIN1"))]), seed=0))
    assert latin[0].text.startswith("caf\ufffd cr\ufffdme") and latin[0].bad_bytes == 4  # text, not binary
    with pytest.raises(RainError, match=r"blob: unsupported file type: not text \(it holds NUL bytes\)"):
        list(read_records(Source("s", [Location(str(tmp_path / "blob"))]), seed=0))  # named alone: an error
    folder = Source("s", [Location(str(tmp_path))])
    records = list(read_records(folder, seed=0))
    assert sorted(r.issue or "text" for r in records) == ["binary", "text", "text"]  # in a folder: skipped, counted
    i = next(i for i, r in enumerate(records) if r.issue == "binary")
    after = (0, records[i].pos[1], 1)  # a stream restarted just past the binary file goes on from there
    assert [r.text for r in read_records(folder, seed=0, start=after)] == [r.text for r in records[i + 1 :]]


def test_prepare_help_lists_every_input_kind_and_every_preset(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one help line per option: no wrapping inside names
    presets = sorted(p.stem for p in CONFIGS.glob("*.toml"))
    assert {"tiny", "rain-v2", "gpt2-124m", "moe-150m"} <= set(presets)
    for command in ("prepare", "train"):
        with pytest.raises(SystemExit):
            rain_main([command, "--help"])
        config_help = next(line for line in capsys.readouterr().out.splitlines() if "--config" in line and "preset" in line)
        assert all(name in config_help for name in presets), (command, config_help)
    with pytest.raises(SystemExit):
        rain_main(["prepare", "--help"])
    options = capsys.readouterr().out.partition("options:")[2]
    data_help = options[options.index("--data") : options.index("--out")]
    for kind in (".txt", ".md", ".rst", ".py", "README", "binary files are skipped", ".gz", ".jsonl", ".jsonl.zst",
                 ".parquet", ".tar", ".tar.xz", "folders", "mixture .toml"):
        assert kind in data_help, kind


def test_failed_prepare_removes_only_the_folders_it_created(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "new" / "out"
    code = rain_main(["prepare", "--data", str(tmp_path / "empty"), "--out", str(out), "--set", "model.vocab_size=512"])
    assert code == 2 and "no files to read" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # it and its parent were made by the run
    (tmp_path / "one.txt").write_text(paragraph(4))  # one document: no validation split, after the tokenizer was written
    with pytest.raises(RainError, match="no validation documents"):
        prepare(quick_config(paths=[str(tmp_path / "one.txt")], val_fraction=0.01), out, log=lambda *_: None)
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    for data in ("empty", "one.txt"):
        with pytest.raises(RainError):
            prepare(quick_config(paths=[str(tmp_path / data)], val_fraction=0.01), existing, log=lambda *_: None)
        assert (existing / "notes.txt").read_text() == "mine"  # a folder that was there stays, with its files
