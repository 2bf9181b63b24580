"""Reweighting the mixture by validation loss (issue 14, item 3): the rule on numbers, a tiny run whose realised
windows follow the new weights, resume exact across a reweighting, bad input in one line each."""

import json
from functools import partialmethod

import numpy as np
import pytest

from rain.config import ReweightConfig, config_from_dict, load_config
from rain.data.reweight import Reweighting, excess_losses, update, within_bounds
from rain.data.schedule import MixtureSchedule
from rain.errors import RainError
from rain.train import trainer as trainer_module
from rain.train.metrics import read_metrics
from rain.train.trainer import train
from tests.conftest import assert_same_run, small_toml, tiny_run_config
from tests.test_bad_input import one_line_error

ZERO, ONE = np.zeros(3), np.ones(3)


def test_the_worse_source_gains_weight_by_the_exponentiated_excess():
    w = np.array([0.5, 0.3, 0.2])
    new = update(w, np.array([0.4, 0.0, 0.0]), w, eta=1.0, smoothing=0.0, floor=ZERO, cap=ONE)
    expected = w * np.exp([0.4, 0, 0]) / (w * np.exp([0.4, 0, 0])).sum()
    assert np.allclose(new, expected) and new[0] > w[0] and np.isclose(new.sum(), 1)
    assert new[1] / new[2] == pytest.approx(0.3 / 0.2)  # the others keep their ratio


def test_zero_excess_leaves_the_weights_and_smoothing_pulls_towards_the_base():
    w, base = np.array([0.7, 0.2, 0.1]), np.array([0.4, 0.4, 0.2])
    assert np.allclose(update(w, ZERO, base, eta=5.0, smoothing=0.0, floor=ZERO, cap=ONE), w)
    assert np.allclose(update(w, ZERO, base, eta=5.0, smoothing=0.5, floor=ZERO, cap=ONE), [0.55, 0.3, 0.15])


def test_floors_and_caps_hold_and_the_free_sources_keep_their_ratio():
    out = within_bounds(np.array([0.9, 0.05, 0.05]), np.full(3, 0.1), np.full(3, 0.6))
    assert np.allclose(out, [0.6, 0.2, 0.2])  # capped; the two others scaled up together
    out = within_bounds(np.array([0.98, 0.015, 0.005]), np.array([0.0, 0.0, 0.05]), np.array([0.9, 1.0, 1.0]))
    assert np.allclose(out, [0.9, 0.05, 0.05])  # c is exact between breakpoints: 0.015 c = 0.05
    out = within_bounds(np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.2, 0.2]), ONE)
    assert np.allclose(out, [0.6, 0.2, 0.2])  # a floor lifts a source of weight 0
    with pytest.raises(ValueError, match="caps of the sources with weight sum to 0.5"):
        within_bounds(np.array([1.0, 0.0, 0.0]), ZERO, np.full(3, 0.5))
    rng = np.random.default_rng(0)
    for _ in range(200):  # any weights, feasible bounds: inside them and summing to 1
        w, floor = rng.dirichlet(np.ones(4)), rng.uniform(0, 0.25, 4)
        cap = np.maximum(floor, rng.uniform(0.25, 1, 4))
        out = within_bounds(w, floor, cap)
        assert np.isclose(out.sum(), 1) and (out >= floor - 1e-12).all() and (out <= cap + 1e-12).all()


def test_excess_against_a_run_or_the_runs_own_early_losses():
    losses, used = np.array([3.0, 2.5, 2.0]), np.array([True, True, True])
    assert excess_losses(losses, np.array([2.8, 2.6, 2.0]), False, used).round(6).tolist() == [0.2, 0.0, 0.0]
    # early: the change since then (-1, -1.5, -2) over the mean change (-1.5): the one that improved least
    assert excess_losses(losses, np.full(3, 4.0), True, used).tolist() == [0.5, 0.0, 0.0]
    assert excess_losses(losses, np.full(3, 4.0), True, np.array([False, True, True])).tolist() == [0.0, 0.25, 0.0]


def reweight_config(data, **reweight):
    cfg = tiny_run_config(data, max_steps=8, batch_size=8, micro_batch=4, log_every=1, eval_every=2, checkpoints=0,
                          eval_batches=3)
    cfg.data.weights = {"math": 0.5, "prose": 0.5}  # the tiny data's code has no validation tokens
    cfg.data.reweight = ReweightConfig(**{"reference": "early", "eta": 1000.0, "smoothing": 0.0, "cap": 0.8,
                                          "floor": {"math": 0.2, "prose": 0.2}, "start": 0.25, **reweight})
    return cfg


def test_a_reweighted_run_draws_by_the_new_weights(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(reweight_config(tiny_data), run, stop_after=4, log=lambda *_: None)
    at4 = json.loads((run / "checkpoints/last/state.json").read_text())["loader"]
    summary = train(reweight_config(tiny_data), run, resume=True, log=lambda *_: None)
    records = read_metrics(run)
    mixes = [r for r in records if r["kind"] == "mixture"]
    assert [m["step"] for m in mixes] == [4, 6]  # the validation at step 2 is the reference; none at the end
    first = mixes[0]
    worst = max(first["excess"], key=first["excess"].get)
    assert first["excess"][worst] > 0 and first["weights"][worst] == 0.8  # eta 1000: to its cap, the other floored
    assert sorted(first["weights"].values()) == [0.0, 0.2, 0.8]
    val2 = next(r for r in records if r["kind"] == "val" and r["step"] == 2)
    assert first["reference"] == {n: val2[f"val_loss/{n}"] for n in first["reference"]}
    trained = {r["step"]: r["mixture"] for r in records if r["kind"] == "train"}
    assert trained[2] == trained[4] != first["weights"]  # the prepared token shares until then
    assert trained[5] == first["weights"] and trained[7] == mixes[1]["weights"]
    assert at4["reweight"]["history"][0][0] == 4
    after = {n: summary["source_windows"][n] - at4["source_windows"][n] for n in at4["source_windows"]}
    favoured = [max(m["weights"], key=m["weights"].get) for m in mixes]
    assert sum(after.values()) == 32 and after["code"] == 0 and all(after[f] >= 8 for f in favoured), after
    if favoured[0] == favoured[1]:
        assert after[favoured[0]] > 0.6 * 32, after


def test_resume_is_exact_across_a_reweighting_and_a_batch_read_ahead(tiny_data, tmp_path, monkeypatch):
    cfg = reweight_config(tiny_data, eta=5.0, smoothing=0.2, floor=0.0, cap=1.0)
    cfg.train.max_steps = 6  # the validation at step 2 is the reference, the one at 4 reweights
    ahead = partialmethod(trainer_module.Prefetcher.__init__, ahead=True)  # as on CUDA: a batch in flight
    with monkeypatch.context() as m:
        m.setattr(trainer_module.Prefetcher, "__init__", ahead)
        train(cfg, tmp_path / "straight", log=lambda *_: None)
    train(cfg, tmp_path / "broken", stop_after=3, log=lambda *_: None)
    train(cfg, tmp_path / "broken", resume=True, log=lambda *_: None)
    assert_same_run(tmp_path / "broken", tmp_path / "straight")
    mixes = [[r for r in read_metrics(tmp_path / run) if r["kind"] == "mixture"] for run in ("broken", "straight")]
    assert mixes[0] == mixes[1] and len(mixes[0]) == 1


def test_a_reference_runs_losses_are_the_reference(tmp_path):
    cfg = tiny_run_config(None, max_steps=8, eval_every=2)  # 4 x 64 = 256 tokens a step
    vals = [{"kind": "val", "step": s, "tokens": s * 256, "val_loss/a": 9.0, "val_loss/b": 1.0, "val_loss/c": 9.0 - s}
            for s in (0, 4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(v) + "\n" for v in vals))
    cfg.data.reweight = ReweightConfig(reference=str(tmp_path), eta=1000.0, smoothing=0.0, cap=0.8, start=0.5)
    schedule = MixtureSchedule(["a", "b", "c"], np.array([0.4, 0.4, 0.2]), [], [], [], 8)
    rw = Reweighting(cfg, schedule)
    report = {"val_loss/a": 3.0, "val_loss/b": 3.0, "val_loss/c": 5.5}
    assert rw.validated(2, report) is None  # before start (step 4)
    record = rw.validated(4, report)
    assert record["reference"] == {"a": 9.0, "b": 1.0, "c": 5.0}  # the reference's validation at the same tokens
    assert record["excess"] == {"a": 0.0, "b": 2.0, "c": 0.5}
    assert record["weights"]["b"] == 0.8 and schedule.weights_at(3).tolist() == [0.4, 0.4, 0.2]
    assert schedule.weights_at(4).tolist() == schedule.weights_at(7).tolist() == rw.weights().tolist()
    cfg.data.reweight.reference_at = "final"
    assert Reweighting(cfg, schedule)._reference_at(0).tolist() == [9.0, 1.0, 5.0]
    state = json.loads(json.dumps(rw.state_dict()))
    again = Reweighting(cfg, MixtureSchedule(["a", "b", "c"], np.array([0.4, 0.4, 0.2]), [], [], [], 8))
    again.load_state_dict(state)
    assert again.weights().tolist() == rw.weights().tolist() and again.seen == rw.seen


def test_reweight_reads_from_toml_and_survives_config_json(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(small_toml() + '\n[data.reweight]\nreference = "early"\neta = 2\nfloor = { code = 0.05 }\n')
    cfg = load_config(path)
    assert cfg.data.reweight == ReweightConfig(reference="early", eta=2.0, floor={"code": 0.05})
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("settings, fragment", [
    (["data.reweight={reference = 'early', eta = -1}"], "data.reweight.eta = -1.0 must be a finite number >= 0"),
    (["data.reweight={reference = 'early', floor = 0.5, cap = 0.4}"], "data.reweight.floor (0.5) is above"),
    (["data.reweight={reference = 'early', floor = {math = 0.3}, cap = {math = 0.2}}"],
     "data.reweight: the floor of math is above its cap"),
    (["data.reweight={reference = 'early', floor = {math = 0.5, prose = 0.4, code = 0.3}}"],
     "the floors sum to 1.2; they must leave room"),
    (["data.reweight={reference = 'early', cap = 0.3}"], "the caps of the sources in the mixture sum to 0.9"),
    (["data.reweight={reference = 'early', cap = {maths = 0.3}}"], "data.reweight.cap names 'maths', not a source"),
    (["data.reweight={reference = 'early'}", "train.eval_every=100"],
     "0 validation(s) between its start (step 2) and the end (step 12) and it needs 2"),
    (["data.reweight={reference = 'early'}", "data.stage=[{start = 0.5, weights = {math = 1}}]"],
     "data.reweight and [[data.stage]] together: choose one"),
    (["data.reweight={reference = 'nowhere/run'}"], "data.reweight.reference nowhere/run: no such run folder"),
    (["data.reweight={reference = 'early'}", "train.eval_every=2"],
     "source code has no validation tokens, so data.reweight cannot"),
])
def test_bad_reweight_settings_are_one_line(settings, fragment, tiny_data, tmp_path, capsys):
    args = ["train", "--data", tiny_data, "--out", tmp_path / "run", "--set", "train.max_steps=12"]
    one_line_error(capsys, args + [a for s in settings for a in ("--set", s)], fragment)
    assert not (tmp_path / "run").exists()


def test_a_reference_run_on_other_sources_is_one_line(tiny_data, tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"kind": "val", "step": 0, "tokens": 0, "val_loss": 5.0,
                                                        "val_loss/math": 5.0, "val_loss/prose": 5.0}) + "\n")
    args = ["train", "--data", tiny_data, "--out", tmp_path / "run", "--set", "train.max_steps=12",
            "--set", f"data.reweight={{reference = '{tmp_path / 'metrics.jsonl'}'}}"]
    one_line_error(capsys, args, "its validation has no loss for source 'code' (it has: math, prose)")


def test_one_source_cannot_be_reweighted():
    cfg = tiny_run_config(None, max_steps=12)
    cfg.data.reweight = ReweightConfig(reference="early")
    schedule = MixtureSchedule(["web"], np.ones(1), [], [], [], 12)
    with pytest.raises(RainError, match="has one source; reweighting needs the validation loss of several"):
        Reweighting(cfg, schedule)
