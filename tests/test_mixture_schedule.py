"""Mixing at training time (issue 14, items 1 and 2): windows drawn by source as data.weights and [[data.stage]]
say, from one prepared folder; the realised counts follow the stages; resume stays exact; bad input is one line."""

import json
import math

import numpy as np
import pytest
import torch

from rain.config import StageConfig, config_from_dict, load_config, stage_start_steps
from rain.data.loader import MixtureLoader, WindowLoader
from rain.data.prepared import TokenStream, source_tokens
from rain.data.schedule import MixtureSchedule
from rain.errors import RainError
from rain.train.batches import PretrainData
from rain.train.metrics import read_metrics
from rain.train.trainer import train
from tests.conftest import assert_same_run, small_toml, tiny_run_config
from tests.test_bad_input import one_line_error

SEQ = 8


def numbered_stream():
    """Token value = position; documents of three sources, interleaved, one running from a shard into the next."""
    shards = [np.arange(0, 400, dtype=np.uint32), np.arange(400, 1000, dtype=np.uint32)]
    starts = np.array([0, 50, 130, 170, 300, 390, 560, 600, 700, 880])
    sources = np.array([0, 0, 1, 2, 0, 1, 1, 2, 0, 2])
    return TokenStream(shards, starts, sources), starts, sources


def owner(starts, sources, tokens):
    return sources[np.searchsorted(starts, tokens, "right") - 1]


def loader(weights_at, batch=4, world=1, rank=0, per_step=4, seed=5):
    stream, *_ = numbered_stream()
    return MixtureLoader(source_tokens(stream, 3), ["a", "b", "c"], SEQ, batch, weights_at, per_step, seed=seed,
                         rank=rank, world=world)


def test_source_tokens_are_the_runs_of_each_source_in_order():
    stream, starts, sources = numbered_stream()
    per_source = source_tokens(stream, 3)
    for s, tokens in enumerate(per_source):
        whole = tokens.read(0, len(tokens))
        assert np.array_equal(whole, np.flatnonzero(owner(starts, sources, np.arange(1000)) == s))
        assert np.array_equal(tokens.read(17, 45), whole[17:45])  # a read across runs (and a shard boundary)
    assert sum(len(t) for t in per_source) == 1000


def test_windows_come_from_their_source_in_the_configured_shares():
    weights = np.array([0.6, 0.3, 0.1])
    mix = loader(lambda step: weights, batch=50)
    _, starts, sources = numbered_stream()
    for _ in range(100):  # 5,000 windows
        x, y = mix.next_batch()
        assert torch.equal(x[:, 1:], y[:, :-1])
        owners = owner(starts, sources, x.numpy())
        assert (owners == owners[:, :1]).all()  # every token of a window from one source
    realised = mix.drawn / mix.drawn.sum()
    assert np.abs(realised - weights).max() < 0.02, realised
    assert mix.state_dict()["source_windows"] == dict(zip("abc", mix.drawn.tolist()))


def test_a_source_is_read_whole_before_a_window_repeats():
    mix = loader(lambda step: np.array([0.0, 1.0, 0.0]), batch=1)  # source b only
    per_epoch = mix.windows[1]
    first = [int(mix.next_batch()[0][0, 0]) for _ in range(per_epoch)]
    assert len(set(first)) == per_epoch  # one epoch of b: every window once


def test_ranks_split_the_same_samples_and_resume_exactly_under_another_world():
    def weights_at(step):
        return np.array([0.5, 0.5, 0.0]) if step < 3 else np.array([0.0, 0.2, 0.8])

    one = loader(weights_at, batch=4)
    ranks = [loader(weights_at, batch=2, world=2, rank=r) for r in range(2)]
    for _ in range(6):
        x = one.next_batch()[0]
        halves = [r.next_batch()[0] for r in ranks]
        assert torch.equal(x[0::2], halves[0]) and torch.equal(x[1::2], halves[1])
    assert ranks[0].state_dict()["source_windows"] == one.state_dict()["source_windows"]
    again = loader(weights_at, batch=3)  # one process resumes the two ranks' run (6 x 2 x 2 = 24 samples)
    again.load_state_dict(ranks[1].state_dict())
    odd = loader(weights_at, batch=1, world=5)  # 24 is not a multiple of 5: it counts its way to sample 20
    odd.load_state_dict(ranks[1].state_dict())
    assert odd.drawn.tolist() == one._drawn_until(20).tolist()
    rest = loader(weights_at, batch=4)
    rest.load_state_dict(one.state_dict())
    assert torch.equal(torch.cat([again.next_batch()[0] for _ in range(4)]),
                       torch.cat([rest.next_batch()[0] for _ in range(3)]))


def test_a_loader_state_of_the_other_kind_is_refused():
    mix = loader(lambda step: np.array([1.0, 0.0, 0.0]))
    mix.next_batch()
    stream, *_ = numbered_stream()
    uniform = WindowLoader(stream.shards, SEQ, 4)
    with pytest.raises(RainError, match="drew its windows by source"):
        uniform.load_state_dict(mix.state_dict())
    with pytest.raises(RainError, match="drew its windows uniformly"):
        mix.load_state_dict(uniform.state_dict())


def schedule(stages, total=10, base=(0.5, 0.5, 0.0), **weights):
    cfg = tiny_run_config(max_steps=total)
    cfg.data.weights = dict(weights)
    cfg.data.stage = stages
    cfg.data.dir = "data"
    names = ["a", "b", "c"]
    return MixtureSchedule.from_config(cfg, names, dict(zip(names, [int(1000 * b) for b in base])), total)


def test_stages_start_where_the_fraction_or_tokens_say_and_blend_linearly():
    cfg = tiny_run_config(max_steps=10)  # 4 x 64 = 256 tokens a step
    cfg.data.stage = [StageConfig(start=0.8), StageConfig(start=0.25), StageConfig(start_tokens=257)]
    assert stage_start_steps(cfg, 10) == [8, 3, 2]  # the first step at or past 80% (0.8 x 10 is 8.000000000000002)
    s = schedule([StageConfig(start=0.4, weights={"c": 1.0}, blend=True), StageConfig(start=0.8, weights={"a": 1.0})])
    at = [s.weights_at(step).round(6).tolist() for step in range(10)]
    assert at[:4] == [[0.5, 0.5, 0.0]] * 4  # the prepared token shares until the first stage
    assert at[4:8] == [[0.375, 0.375, 0.25], [0.25, 0.25, 0.5], [0.125, 0.125, 0.75], [0.0, 0.0, 1.0]]
    assert at[8:] == [[1.0, 0.0, 0.0]] * 2
    assert schedule([StageConfig(start=0.5, weights={"b": 1.0})], a=0.2, c=0.8).weights_at(0).tolist() == [0.2, 0, 0.8]


def staged_config(data, **train):
    cfg = tiny_run_config(data, **{"max_steps": 8, "log_every": 2, "eval_every": 4, "checkpoints": 0, **train})
    cfg.data.weights = {"math": 0.5, "prose": 0.5}
    cfg.data.stage = [StageConfig(start=0.5, weights={"code": 0.9, "math": 0.1})]
    return cfg


def test_a_staged_run_changes_the_realised_counts_at_its_boundary(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(staged_config(tiny_data), run, stop_after=4, log=lambda *_: None)
    halfway = json.loads((run / "checkpoints/last/state.json").read_text())["loader"]["source_windows"]
    assert halfway["code"] == 0 and halfway["math"] + halfway["prose"] == 16  # 4 steps x 4 windows
    lines = []
    summary = train(staged_config(tiny_data), run, resume=True, log=lines.append)
    assert any(line.startswith("  windows by source: math ") and line.endswith("(of 32)")
               for line in "\n".join(lines).splitlines()), lines
    second = {k: summary["source_windows"][k] - halfway[k] for k in halfway}
    assert second["prose"] == 0 and second["code"] > second["math"] and sum(second.values()) == 16
    records = read_metrics(run)
    mixtures = {r["step"]: r["mixture"] for r in records if r["kind"] == "train"}
    assert mixtures[4] == {"math": 0.5, "prose": 0.5, "code": 0.0}
    assert mixtures[6] == {"math": 0.1, "prose": 0.0, "code": 0.9}
    assert [(r["step"], r["stage"]) for r in records if r["kind"] == "stage"] == [(4, 1)]
    vals = [r for r in records if r["kind"] == "val"]
    assert all(math.isfinite(v["val_loss/math"]) and math.isfinite(v["val_loss/prose"]) for v in vals), vals[-1]
    assert (run / "loss.png").is_file() and summary["mixture_stages"][1]["step"] == 4


def test_a_staged_run_resumes_exactly(tiny_data, tmp_path):
    cfg = staged_config(tiny_data, log_every=1)
    cfg.data.stage[0].blend = True
    train(cfg, tmp_path / "straight", log=lambda *_: None)
    train(cfg, tmp_path / "broken", stop_after=5, log=lambda *_: None)
    train(cfg, tmp_path / "broken", resume=True, log=lambda *_: None)
    assert_same_run(tmp_path / "broken", tmp_path / "straight")


def test_no_weights_draws_as_before(tiny_data):
    data = PretrainData(tiny_run_config(tiny_data))
    assert isinstance(data.loader, WindowLoader) and "source_windows" not in data.state_dict()
    assert data.describe() == {"data_dir": str(tiny_data)} and data.mixture_in_force(data.state_dict()) == {}


def test_stages_read_from_toml_and_survive_config_json(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(small_toml() + '\n[data.weights]\nweb = 0.7\ncode = 0.3\n\n[[data.stage]]\nstart = 0.8\n'
                    'weights = { math = 0.5, code = 0.5 }\nblend = true\n')
    cfg = load_config(path)
    assert cfg.data.weights == {"web": 0.7, "code": 0.3}
    assert cfg.data.stage == [StageConfig(start=0.8, weights={"math": 0.5, "code": 0.5}, blend=True)]
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(RainError, match=r"unknown key 'stat' \(known: start, start_tokens, weights, blend\)"):
        load_config(None, ["data.stage=[{stat = 0.5, weights = {a = 1}}]", "train.max_steps=10"])


@pytest.mark.parametrize("settings, fragment", [
    (["data.weights={math = 0.5, prose = 0.4}"], "data.weights: the weights must sum to 1 (these sum to 0.9)"),
    (["data.weights={math = 1.5, prose = -0.5}"], "the weight of prose is -0.5; a weight must be a finite number >= 0"),
    (["data.weights={math = 0.5, poetry = 0.5}"], "data.weights names 'poetry', not a source of"),
    (["data.stage=[{start = 0.5, weights = {maths = 1}}]"], "(its sources: math, prose, code)"),
    (["data.stage=[{start = 1.0, weights = {math = 1}}]"], "data.stage[1].start = 1.0 must be in [0, 1)"),
    (["data.stage=[{start_tokens = 1_000_000_000, weights = {math = 1}}]"], "past the end of training (12 steps, "),
    (["data.stage=[{start = 0.5, weights = {math = 1}}, {start = 0.25, weights = {code = 1}}]"],
     "data.stage[2] (start = 0.25) starts at step 3, not after data.stage[1] (step 6)"),
    (["data.stage=[{start = 0.5, start_tokens = 100, weights = {math = 1}}]"], "give start (a fraction of training) or"),
    (["data.stage=[{start = 0.5}]"], "data.stage[1].weights: no weights"),
])
def test_bad_mixture_settings_are_one_line(settings, fragment, tiny_data, tmp_path, capsys):
    args = ["train", "--data", tiny_data, "--out", tmp_path / "run", "--set", "train.max_steps=12"]
    one_line_error(capsys, args + [a for s in settings for a in ("--set", s)], fragment)
    assert not (tmp_path / "run").exists()


def test_a_stage_past_the_end_of_an_epochs_run_is_found_when_the_data_opens(tiny_data):
    cfg = tiny_run_config(tiny_data, max_steps=0, epochs=1.0)  # 55 steps of the tiny data's 221 windows
    cfg.data.stage = [StageConfig(start_tokens=60 * 4 * 64, weights={"math": 1.0})]
    with pytest.raises(RainError, match="starts at step 60, past the end of training"):
        PretrainData(cfg)
