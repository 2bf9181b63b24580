"""Fault injection: the N-th filesystem operation of a training run's saves and record rewrites (a write, an
fsync, a rename, a deletion) fails, as a kill -9 or a full disk would make it, for every N of a short run. After
each, `--resume` must finish the run exactly as an uninterrupted one did, with every checkpoint and record of
that run present and bit-identical. docs/reliability.md says what this guarantees."""

import errno
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rain.checkpoint
from rain.errors import RainError
from rain.train.trainer import train
from tests.conftest import tiny_run_config

TIMING = {"tokens_per_s", "flops_per_s", "mfu", "wall_seconds"}
WRITES = {"save_file", "write_text", "copyfile", "fsync"}


class Killed(BaseException):
    """A simulated kill -9: not an Exception, so no `except` in rain can tidy up after it (a `finally` still runs,
    as the kernel's own clean-up does: the run-folder lock is released)."""


class FaultInjector:
    """Counts filesystem operations on paths under `root` (fsyncs have no path and always count) and makes the
    `fail_at`-th fail: `kill` stops before it happens, `disk-full` raises ENOSPC instead of doing it."""

    def __init__(self, monkeypatch, root: Path, fail_at: int | None = None, mode: str = "kill"):
        self.root, self.fail_at, self.mode, self.ops = str(root), fail_at, mode, []
        for owner, name in ((os, "replace"), (os, "rename"), (os, "fsync"), (shutil, "copyfile"),
                            (shutil, "rmtree"), (rain.checkpoint, "save_file"), (Path, "write_text")):
            monkeypatch.setattr(owner, name, self._wrap(name, getattr(owner, name)))

    def _wrap(self, name, real):
        def op(*args, **kwargs):
            paths = [str(a) for a in args if isinstance(a, (str, Path)) and str(a).startswith(self.root)]
            if name == "fsync" or paths:
                self.ops.append((name, paths[-1].removeprefix(self.root) if paths else ""))
                if len(self.ops) == self.fail_at:
                    if self.mode == "kill":
                        raise Killed(self.ops[-1])
                    if name in WRITES:  # a full disk fails what takes space; renames and deletions still work
                        raise OSError(errno.ENOSPC, "No space left on device")
            # fsync is counted, not done: durability is the kernel's part, and skipping it keeps 50 runs fast.
            return None if name == "fsync" else real(*args, **kwargs)
        return op


@pytest.fixture(autouse=True)
def _no_loss_plot(monkeypatch):
    """loss.png is drawn at the end of every run (half of a tiny run's time) and is not what these tests check:
    the sweeps below run a hundred runs."""
    monkeypatch.setattr("rain.train.trainer.plot_losses", lambda run_dir: None)


def config(data):
    # Two validations, two kept step_N, best and last at the same steps: every kind of save, twice.
    return tiny_run_config(data, max_steps=4, eval_every=2, checkpoints=2, log_every=2)


def records(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING}
            for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same(reference: Path, run: Path, what: str) -> None:
    assert records(run) == records(reference), what
    for folder in (reference / "checkpoints").iterdir():
        mine = run / "checkpoints" / folder.name
        assert mine.is_dir(), f"{what}: checkpoints/{folder.name} was lost"
        ref, got = weights(folder), weights(mine)
        assert all(torch.equal(ref[k], got[k]) for k in ref), f"{what}: checkpoints/{folder.name} differs"
        state = json.loads((mine / "state.json").read_text())
        assert state["step"] == json.loads((folder / "state.json").read_text())["step"], what
    assert not list((run / "checkpoints").glob(".tmp-*")), f"{what}: a temporary folder was left"


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    """The uninterrupted run, and the list of its filesystem operations."""
    run = tmp_path_factory.mktemp("faults") / "reference"
    with pytest.MonkeyPatch.context() as mp:
        injector = FaultInjector(mp, run)
        train(config(tiny_data), run, log=lambda *_: None)
    return run, injector.ops


def distinct_phases(ops: list[tuple[str, str]]) -> list[int]:
    """The operation numbers worth failing: one for each distinct (previous, this) pair of operations, with step
    numbers ignored, so each phase of each kind of save is hit once (the second save of `best` or `last`, which
    swaps the old folder out, has phases the first has not)."""
    seen, chosen = set(), []
    signature = [(name, re.sub(r"\d+", "N", path)) for name, path in ops]
    for n, pair in enumerate(zip([None] + signature, signature), 1):
        if pair not in seen:
            seen.add(pair)
            chosen.append(n)
    return chosen


def interrupted_then_resumed(data, run: Path, fail_at: int, mode: str) -> None:
    with pytest.MonkeyPatch.context() as mp:
        FaultInjector(mp, run, fail_at, mode)
        with pytest.raises((Killed, RainError)):
            train(config(data), run, log=lambda *_: None)
    train(config(data), run, resume=True, log=lambda *_: None)


def test_the_reference_run_saves_every_kind_of_checkpoint(reference):
    run, ops = reference
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "last", "step_0000002", "step_0000004"]
    kinds = {name for name, _ in ops}
    assert {"save_file", "write_text", "copyfile", "fsync", "replace", "rmtree"} <= kinds
    assert len(ops) > 50


def test_a_kill_at_any_filesystem_operation_resumes_exactly(reference, tiny_data, tmp_path):
    ref, ops = reference
    for n in distinct_phases(ops):
        run = tmp_path / f"kill-{n}"
        interrupted_then_resumed(tiny_data, run, n, "kill")
        assert_same(ref, run, f"killed at operation {n} {ops[n - 1]}")
        shutil.rmtree(run)


def test_a_full_disk_at_any_save_is_one_line_and_resumes_exactly(reference, tiny_data, tmp_path):
    ref, ops = reference
    writes = {}  # the first write of each file of each kind of save: where a full disk bites
    for n, (name, path) in enumerate(ops, 1):
        if name in WRITES and name != "fsync":
            writes.setdefault(re.sub(r"\d+", "N", path), n)
    for n in writes.values():
        run = tmp_path / f"full-{n}"
        interrupted_then_resumed(tiny_data, run, n, "disk-full")
        assert_same(ref, run, f"disk full at operation {n} {ops[n - 1]}")
        shutil.rmtree(run)


def test_distinct_phases_cover_each_kind_of_save_once(reference):
    _, ops = reference
    chosen = distinct_phases(ops)
    assert len(chosen) < len(ops) and chosen[0] == 1
    names = {ops[n - 1][1] for n in chosen}
    assert {"/checkpoints/.old-last", "/checkpoints/.tmp-step_0000002", "/checkpoints/best"} <= names


def prepare_config():
    cfg = tiny_run_config()
    cfg.data.workers = 1  # in this process, where the faults are injected
    cfg.data.shard_tokens = 4_000  # several shards, so several checkpoints of the shard pass
    return cfg


def prepared(out: Path) -> dict:
    """What a prepared folder holds that must not depend on interruptions: the shards and the tokenizer."""
    manifest = json.loads((out / "manifest.json").read_text())
    return {"splits": manifest["splits"], "tokenizer": (out / "tokenizer.json").read_bytes(),
            "bins": {p.name: p.read_bytes() for p in sorted(out.glob("*.bin"))}}


def test_a_kill_at_any_operation_of_prepare_resumes_to_the_same_shards(tmp_path):
    from rain.data.prepare import prepare
    from tests.conftest import synthetic_documents

    docs = synthetic_documents(600)
    with pytest.MonkeyPatch.context() as mp:
        injector = FaultInjector(mp, tmp_path / "reference")
        prepare(prepare_config(), tmp_path / "reference", documents=lambda: iter(docs), log=lambda *_: None)
    reference = prepared(tmp_path / "reference")
    assert len(reference["bins"]) > 3
    for n in distinct_phases(injector.ops):
        out = tmp_path / f"kill-{n}"
        with pytest.MonkeyPatch.context() as mp:
            FaultInjector(mp, out, n, "kill")
            with pytest.raises(Killed):
                prepare(prepare_config(), out, documents=lambda: iter(docs), log=lambda *_: None)
        if not (out / "manifest.json").exists():  # with the manifest written the data is complete (the report
            prepare(prepare_config(), out, documents=lambda: iter(docs), log=lambda *_: None)  # is `rain data report`)
        assert prepared(out) == reference, f"killed at operation {n} {injector.ops[n - 1]}"
        shutil.rmtree(out)
