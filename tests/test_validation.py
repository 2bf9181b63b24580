"""Validation during training: windows spread over the whole split, every source scored and reported, the same
windows at every validation, and an error instead of a meaningless number when the split is too small."""

import json

import numpy as np
import pytest

from rain.data.prepare import prepare
from rain.data.prepared import PreparedData, validation_windows
from rain.errors import RainError
from rain.train.batches import PretrainData
from rain.train.trainer import train
from tests.conftest import synthetic_documents, tiny_run_config


def quiet(*_):
    pass


def test_windows_cover_the_whole_split_evenly_and_repeat():
    starts = validation_windows(100_000, 64, 20, seed=0)
    assert len(starts) == 20 and np.all(np.diff(starts) > 0)
    assert starts[0] < 5_000 and starts[-1] > 95_000 - 64  # from the first twentieth to the last
    strata = np.linspace(0, 100_000 - 64, 21)
    assert np.all((starts >= strata[:-1]) & (starts < strata[1:]))  # one window in each stratum
    assert np.array_equal(starts, validation_windows(100_000, 64, 20, seed=0))
    assert np.all(starts + 65 <= 100_000)


def test_a_short_split_gives_all_its_windows_and_a_too_short_one_an_error():
    assert validation_windows(64 * 3 + 1, 64, 50).tolist() == [0, 64, 128]
    with pytest.raises(ValueError, match="needs 65"):
        validation_windows(64, 64, 1)


@pytest.fixture(scope="module")
def sorted_sources(tmp_path_factory):
    """Prepared data whose documents come source after source (all code, then all math, then all prose): the
    first windows of the validation split are one source only."""
    docs = sorted(synthetic_documents(600), key=lambda d: d[0])
    out = tmp_path_factory.mktemp("sorted")
    cfg = tiny_run_config()
    cfg.data.val_fraction = 0.2
    prepare(cfg, out, documents=lambda: iter(docs), log=quiet)
    return out


def test_validation_windows_score_every_source_in_proportion(sorted_sources):
    cfg = tiny_run_config(sorted_sources, eval_batches=4, micro_batch=2)
    data = PretrainData(cfg)
    names = data.val_sources()
    assert sorted(names) == ["code", "math", "prose"]
    counts = {}
    for *_, src in data.val_batches():
        for s, n in zip(*np.unique(src.numpy(), return_counts=True)):
            counts[names[s]] = counts.get(names[s], 0) + int(n)
    split = {n: PreparedData(sorted_sources).counts("val", n)[0] for n in names}
    assert set(counts) == set(names)  # the old first-windows slice saw only the first source
    for n in names:
        assert counts[n] / sum(counts.values()) == pytest.approx(split[n] / sum(split.values()), abs=0.2)


def test_training_records_and_prints_each_validation_per_source(sorted_sources, tmp_path):
    cfg = tiny_run_config(sorted_sources, max_steps=4, eval_every=2, eval_batches=4)
    lines = []
    train(cfg, tmp_path / "run", log=lines.append)
    vals = [json.loads(r) for r in (tmp_path / "run/metrics.jsonl").read_text().splitlines() if '"val"' in r]
    assert [v["step"] for v in vals] == [0, 2, 4]
    for v in vals:
        assert {f"val_loss/{s}" for s in ("code", "math", "prose")} <= set(v)
        assert {f"val_bpb/{s}" for s in ("code", "math", "prose")} <= set(v)
    printed = [line for line in lines if "validation loss" in line and line.startswith("step ")]
    assert len(printed) == 3 and all("code" in p and "prose" in p for p in printed), lines
    assert f"{vals[-1]['val_loss']:.4f}" in printed[-1]
    state = json.loads((tmp_path / "run/checkpoints/last/state.json").read_text())
    assert state["val_loss/math"] == vals[-1]["val_loss/math"]


def test_a_validation_split_shorter_than_the_context_is_refused(tiny_data):
    cfg = tiny_run_config(tiny_data)
    cfg.model.context = PreparedData(tiny_data).split_tokens("val")
    with pytest.raises(RainError, match="validation split has .* tokens"):
        PretrainData(cfg)
