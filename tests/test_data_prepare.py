"""prepare end to end: resumable and deterministic shards, document index, filter and dedup counts, bad input."""

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zstandard

from rain.cli import main as rain_main
from rain.config import RunConfig
from rain.data import encode
from rain.data.prepare import STATE, fingerprint, load_state, prepare, resolve_mixture
from rain.data.shards import ShardWriter, file_sha256, load_doc_index, verify_split
from rain.data.tokenizer import Tokenizer
from rain.errors import RainError

WORDS = ("the river of a stone and bridge with farmer that water have summer to winter be garden market village "
         "teacher student library number pattern method answer question reason season forest").split()


def prose(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def write_corpus(root: Path, seed: int = 0) -> Path:
    """Three sources with planted duplicates, near-duplicates, low-quality and tiny documents; returns the mixture."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    web = [prose(rng, rng.randint(60, 500)) for _ in range(300)]
    planted = [web[3].upper(), web[5] + "  ", " ".join(web[7].split()[:-2]) + " two changed", "- the river and the stone bridge with water\n" * 20, "tiny"]
    web[10:10] = planted  # early, so every budget reaches them
    (root / "web.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in web))
    code = root / "code"
    code.mkdir(exist_ok=True)
    for i in range(60):  # read whole (and re-read: upsampled)
        body = "\n".join(f"    x{j} = {rng.randint(0, 999)} * value" for j in range(rng.randint(3, 30)))
        (code / f"m{i:03d}.py").write_text(f"def f{i}(value):\n{body}\n    return value\n")
    (code / "copy.py").write_text((code / "m007.py").read_text())
    math = [{"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}. #### {a + b}"}
            for a, b in ((rng.randint(1, 999), rng.randint(1, 999)) for _ in range(150))]
    with gzip.open(root / "math.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(m) + "\n" for m in math))
    mix = root / "mix.toml"
    mix.write_text(f"""
[mixture]
budget = 100_000
on_exhausted = "upsample"
max_epochs = 5
[filters]
min_chars = 20
quality = true
exact_dedup = true
near_dedup = true
near_dedup_threshold = 0.7
[[source]]
name = "web"
weight = 0.5
location = "{root / 'web.jsonl'}"
[[source]]
name = "code"
weight = 0.3
kind = "code"
location = "{code}"
[[source]]
name = "math"
weight = 0.2
kind = "math"
location = "{root / 'math.jsonl.gz'}"
text = "Question: {{question}}\\nAnswer: {{answer}}"
""")
    return mix


def config(mix, **data) -> RunConfig:
    cfg = RunConfig()
    cfg.model.vocab_size = 512
    cfg.data.mixture = str(mix)
    cfg.data.val_fraction = 0.03
    cfg.data.shard_tokens = 4000
    cfg.data.tokenizer_sample_bytes = 200_000
    cfg.data.workers = 1
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def quiet(*_):
    pass


def fingerprints(out: Path, manifest: dict):
    stable = {k: manifest[k] for k in ("sources", "filters", "input", "mixture", "bytes_per_token")}
    files = sorted(p.name for p in out.iterdir())
    return [r["sha256"] for s in ("train", "val") for r in manifest["splits"][s]], stable, files


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    mix = write_corpus(root)
    out = root / "reference"
    return mix, out, prepare(config(mix), out, log=quiet)


def test_interrupted_prepare_resumes_to_identical_shards(reference, tmp_path, monkeypatch):
    mix, ref_out, ref = reference
    assert len(ref["splits"]["train"]) >= 10 and ref["mixture"]["epochs"]["math"] > 1  # checkpoints inside epoch 2+
    original = ShardWriter.add
    for kill_after in (300, 700):  # documents written before the "crash": mid-shard, after several checkpoints
        calls = {"n": 0}

        def crashing_add(self, ids, source=0):
            calls["n"] += 1
            if calls["n"] == kill_after:
                raise KeyboardInterrupt
            return original(self, ids, source)

        out = tmp_path / f"run{kill_after}"
        monkeypatch.setattr(ShardWriter, "add", crashing_add)
        with pytest.raises(KeyboardInterrupt):
            prepare(config(mix), out, log=quiet)
        monkeypatch.setattr(ShardWriter, "add", original)
        cfg = config(mix)
        assert load_state(out, fingerprint(cfg, resolve_mixture(cfg, None)))[0]["train"]["index"] >= 2
        with pytest.raises(RainError, match="unfinished prepare with a different configuration"):
            prepare(config(mix, seed=99), out, log=quiet)  # never mixes two settings in one corpus
        finished_before = {p.name: file_sha256(p) for p in out.glob("train_*.bin")}
        logged = []
        resumed = prepare(config(mix), out, log=logged.append)
        assert any(line.startswith("resuming") for line in logged)
        assert fingerprints(out, resumed) == fingerprints(ref_out, ref)
        assert all(file_sha256(out / name) == sha for name, sha in finished_before.items())  # never rewritten
        assert not (out / STATE).exists()


def test_killed_process_resumes_to_identical_shards(reference, tmp_path):
    mix, ref_out, ref = reference
    out = tmp_path / "killed"
    script = (f"from rain.data.prepare import prepare\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              f"from test_data_prepare import config\nprepare(config({str(mix)!r}), {str(out)!r}, log=lambda *_: None)\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 120
    while not (out / STATE).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "prepare finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / STATE).exists() and not (out / "manifest.json").exists()
    resumed = prepare(config(mix), out, log=quiet)
    assert fingerprints(out, resumed) == fingerprints(ref_out, ref)


def test_worker_processes_and_chunking_do_not_change_the_shards(reference, tmp_path, monkeypatch):
    mix, ref_out, ref = reference
    monkeypatch.setattr(encode, "CHUNK_RECORDS", 7)
    parallel = prepare(config(mix, workers=2), tmp_path / "parallel", log=quiet)
    assert fingerprints(tmp_path / "parallel", parallel) == fingerprints(ref_out, ref)


def test_shards_index_and_manifest_agree(reference):
    _, out, manifest = reference
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == 512
    assert manifest["tokenizer_sha256"] == file_sha256(out / "tokenizer.json")
    eot = manifest["eot_id"]
    for split in ("train", "val"):
        verify_split(out, split, manifest)
        tokens = np.concatenate([np.fromfile(out / r["file"], dtype=np.uint16) for r in manifest["splits"][split]])
        assert all(r["tokens"] == 4000 for r in manifest["splits"][split][:-1])
        assert tokens[-1] == eot and (tokens == eot).sum() == sum(s["documents"] for s in manifest["sources"][split].values())
        base = 0
        for rec in manifest["splits"][split]:
            for offset, length, _ in load_doc_index(out, rec):
                start = base + offset
                assert tokens[start + length] == eot and not (tokens[start : start + length] == eot).any()
            base += rec["tokens"]


def test_filters_and_dedup_are_counted_per_source(reference):
    _, _, manifest = reference
    web, code = manifest["filters"]["web"], manifest["filters"]["code"]
    assert web["exact_dup"]["documents"] == 2  # the upper-cased copy and the one with trailing spaces
    assert web["near_dup"]["documents"] == 1  # the copy with its last two words changed
    assert code["exact_dup"]["documents"] == 1  # copy.py
    assert web["quality"]["rules"]["bullet_lines"] == 1 and web["too_short"]["documents"] == 1
    assert all(b["tokens"] > 0 and b["bytes"] > 0 for b in (web["exact_dup"], web["near_dup"], web["quality"]))
    assert "quality" not in code  # Gopher rules are for prose only


def test_validation_documents_are_chosen_by_content_not_position(tmp_path):
    rng = random.Random(1)
    docs = [prose(rng, 80) for _ in range(300)]
    held_out = []
    for order in (0, 1):
        if order:
            rng.shuffle(docs)
        path = tmp_path / f"in{order}.jsonl"
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        cfg = config(None, paths=[str(path)], mixture="", val_fraction=0.1)
        manifest = prepare(cfg, tmp_path / f"out{order}", log=quiet)
        tok = Tokenizer.from_file(tmp_path / f"out{order}" / "tokenizer.json")
        val = np.concatenate([np.fromfile(tmp_path / f"out{order}" / r["file"], np.uint16) for r in manifest["splits"]["val"]])
        held_out.append(set(tok.decode(val.tolist()).split(tok.decode([tok.eot_id]))) - {""})
    assert held_out[0] == held_out[1] and 10 < len(held_out[0]) < 60


def test_literal_end_of_text_in_a_document_is_not_a_boundary(tmp_path):
    path = tmp_path / "quoted.jsonl"
    rows = [{"text": f"Models end a document with <|endoftext|> and start again. Example {i}." * 3} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = prepare(config(None, paths=[str(path)], mixture=""), tmp_path / "out", log=quiet)
    tokens = np.concatenate([np.fromfile(tmp_path / "out" / r["file"], np.uint16) for s in ("train", "val")
                             for r in manifest["splits"][s]])
    assert (tokens == manifest["eot_id"]).sum() == 40


def test_bad_input_is_counted_and_reported_not_fatal(tmp_path):
    good = [json.dumps({"text": prose(random.Random(i), 60)}).encode() for i in range(80)]
    lines = good[:20] + [b'{"text": "cut off', b"not json at all", b'{"body": "no text field"}', b'{"text": ""}',
                         b'{"text": "caf\xe9 au lait and the river with a stone bridge that we have"}'] + good[20:]
    path = tmp_path / "messy.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    manifest = prepare(config(None, paths=[str(path)], mixture=""), tmp_path / "out", log=quiet)
    counts = manifest["input"]["messy"]
    assert (counts["bad_json"], counts["missing_field"], counts["empty"], counts["bad_bytes"]) == (2, 1, 1, 1)
    assert counts["records"] == 85 and f"bad_json at {path}:21" in counts["examples"]
    kept = sum(manifest["sources"][s]["messy"]["documents"] for s in ("train", "val"))
    assert kept == 81
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| messy | 85 | 2 | 1 | 1 | 1 |" in report


def test_a_truncated_file_stops_with_one_line_and_leaves_finished_shards_intact(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(encode, "CHUNK_BYTES", 50_000)  # read ahead less than a.jsonl holds
    rng = random.Random(0)
    data = "".join(json.dumps({"text": prose(rng, 200)}) + "\n" for _ in range(400)).encode()
    zst = zstandard.ZstdCompressor().compress(data)
    (tmp_path / "a.jsonl").write_bytes(data)
    (tmp_path / "b.jsonl.zst").write_bytes(zst[: len(zst) * 2 // 3])
    mix = tmp_path / "mix.toml"
    mix.write_text(f'[[source]]\nname = "web"\nlocation = ["{tmp_path / "a.jsonl"}", "{tmp_path / "b.jsonl.zst"}"]\n')
    cfg = config(mix)
    with pytest.raises(RainError, match=r"b.jsonl.zst: truncated zstd file"):
        prepare(cfg, tmp_path / "out", log=quiet)
    state, _ = load_state(tmp_path / "out", fingerprint(cfg, resolve_mixture(cfg, None)))
    assert state["train"]["records"]
    for rec in state["train"]["records"]:
        assert file_sha256(tmp_path / "out" / rec["file"]) == rec["sha256"]
    code = rain_main(["prepare", "--data", str(mix), "--out", str(tmp_path / "cli"), "--set", "model.vocab_size=512"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "truncated zstd file" in err and "Traceback" not in err


def test_finished_data_needs_overwrite_and_overwrite_keeps_other_files(tmp_path):
    for i in range(40):
        (tmp_path / f"note{i}.md").write_text(prose(random.Random(i), 100))
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_notes.md").write_text("mine")
    cfg = config(None, paths=[str(tmp_path)], mixture="", val_fraction=0.2)
    prepare(cfg, out, log=quiet)
    with pytest.raises(RainError, match="already holds prepared data; pass --overwrite"):
        prepare(cfg, out, log=quiet)
    (out / "decontamination.json").write_text("{}")  # `rain decontaminate`'s report of the shards being replaced
    (out / "scores").mkdir()
    (out / "scores" / "ppl.npy").write_bytes(b"")  # `rain score`'s scores of the documents being replaced
    prepare(cfg, out, log=quiet, overwrite=True)
    assert (out / "train_notes.md").read_text() == "mine"
    assert not (out / "decontamination.json").exists()  # stale reports must not describe the new shards
    assert not (out / "scores").exists()


def test_weights_not_summing_to_one_fail_before_any_work(tmp_path):
    mix = tmp_path / "mix.toml"
    mix.write_text('[[source]]\nname = "a"\nlocation = "x.jsonl"\nweight = 0.7\n[[source]]\nname = "b"\nlocation = "y.jsonl"\nweight = 0.2\n')
    with pytest.raises(RainError, match="weights sum to 0.9"):
        prepare(config(mix), tmp_path / "out", log=quiet)
    assert not (tmp_path / "out").exists()
