"""Mixtures: config checks, presets, realised token shares, running out of a source."""

import json
import random

import numpy as np
import pytest

from rain.config import RunConfig
from rain.data.mixture import load_mixture, pick_source
from rain.data.prepare import prepare
from rain.data.shards import load_doc_index
from rain.errors import RainError

WORDS = ("river valley stone bridge farmer water summer winter garden market village teacher student library "
         "number pattern method answer question reason season forest mountain window kitchen letter").split()


def corpus(path, n_docs, seed, min_words=30, max_words=400):
    """A jsonl file of distinct random-word documents of varied length."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n_docs):
            body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))
            f.write(json.dumps({"text": f"doc {seed}-{i}. {body}"}) + "\n")
    return path


def mixture_toml(tmp_path, sources, **mixture):
    lines = ["[mixture]"] + [f"{k} = {json.dumps(v)}" for k, v in mixture.items()]
    for name, (path, weight) in sources.items():
        lines += ["[[source]]", f'name = "{name}"', f'location = "{path}"', f"weight = {weight}"]
    path = tmp_path / "mix.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_config(mix=None, vocab=512, **data) -> RunConfig:
    cfg = RunConfig()
    cfg.model.vocab_size = vocab
    cfg.data.val_fraction = 0.02
    cfg.data.shard_tokens = 50_000
    cfg.data.tokenizer_sample_bytes = 300_000
    if mix is not None:
        cfg.data.mixture = str(mix)
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def quiet(*_):
    pass


def documents_of(out, manifest, name):
    """Every training document of one source, as a tuple of token ids, read back through the shard index."""
    shards = np.concatenate([np.fromfile(out / r["file"], dtype=manifest["dtype"]) for r in manifest["splits"]["train"]])
    docs, base = [], 0
    for rec in manifest["splits"]["train"]:
        for offset, length, sid in load_doc_index(out, rec):
            if manifest["source_names"][sid] == name:
                docs.append(tuple(shards[base + offset : base + offset + length].tolist()))
        base += rec["tokens"]
    return docs


def test_presets_are_token_share_mixtures_of_hub_sources():
    v2 = load_mixture("rain-v2")
    assert {s.name: s.weight for s in v2.sources} == {"fineweb_edu": 0.6, "stack_edu_python": 0.3, "finemath": 0.1}
    assert v2.budget == 10_000_000_000
    assert v2.sources[0].locations[0].path == "hf://HuggingFaceFW/fineweb-edu?name=sample-10BT"
    cpt = load_mixture("data/cpt-mix.toml")
    assert [s.weight for s in cpt.sources] == [0.5, 0.3, 0.15, 0.05]
    assert cpt.sources[-1].locations[0].path == "hf://HuggingFaceTB/smollm-corpus?name=cosmopedia-v2"


@pytest.mark.parametrize("body, message", [
    ('[[source]]\nname = "a"\nlocation = "x"\nweight = 0.5\n[[source]]\nname = "b"\nlocation = "y"\nweight = 0.4\n',
     r"weights sum to 0.9, not 1 \(a 0.5, b 0.4\)"),
    ('[[source]]\nname = "a"\nlocation = "x"\nweight = 1\n[[source]]\nname = "b"\nlocation = "y"\n', "give every source a weight, or none"),
    ('[[source]]\nname = "a"\nlocaton = "x"\n', "unknown key 'locaton'"),
    ('[mixture]\non_exhausted = "wrap"\n[[source]]\nname = "a"\nlocation = "x"\n', "on_exhausted 'wrap'"),
    ('[[source]]\nname = "a"\nlocation = "ftp://host/x"\n', r"unknown scheme 'ftp://'"),
    ('[[source]]\nname = "a"\nlocation = "x"\nkind = "poetry"\n', "kind 'poetry'"),
    ('[filters]\nnear_dedup_threshold = 2\n[[source]]\nname = "a"\nlocation = "x"\n', "near_dedup_threshold"),
])
def test_bad_mixture_configs_are_one_line_errors(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(RainError, match=message):
        load_mixture(path)


def test_fair_queueing_keeps_every_source_within_one_document_of_its_share():
    rng = np.random.default_rng(0)
    weights, taken = [0.6, 0.3, 0.1], [0, 0, 0]
    sizes = [lambda: int(rng.integers(50, 3000)), lambda: int(rng.integers(100, 8000)), lambda: int(rng.integers(20, 300))]
    heads = [f() for f in sizes]
    for _ in range(5000):
        i = pick_source(taken, weights, heads)
        taken[i] += heads[i]
        heads[i] = sizes[i]()
        total = sum(taken)
        for j in range(3):
            assert abs(taken[j] - weights[j] * total) <= 8000
    assert np.allclose(np.array(taken) / sum(taken), weights, atol=0.002)


def test_prepare_realises_token_shares_and_reports_them(tmp_path):
    mix = mixture_toml(tmp_path, {"web": (corpus(tmp_path / "web.jsonl", 400, 1), 0.6),
                                  "code": (corpus(tmp_path / "code.jsonl", 300, 2), 0.3),
                                  "math": (corpus(tmp_path / "math.jsonl", 300, 3, 10, 80), 0.1)}, budget=120_000)
    manifest = prepare(run_config(mix), tmp_path / "out", log=quiet)
    realised = manifest["mixture"]["realised"]
    assert realised == pytest.approx({"web": 0.6, "code": 0.3, "math": 0.1}, abs=0.01)
    assert 120_000 <= manifest["mixture"]["train_tokens"] < 121_000
    assert manifest["mixture"]["ended"]["reason"] == "budget"
    train = manifest["sources"]["train"]
    assert sum(s["tokens"] for s in train.values()) == sum(r["tokens"] for r in manifest["splits"]["train"])
    assert all(train[n]["documents"] > 0 and train[n]["bytes"] > 0 for n in ("web", "code", "math"))
    # the shard index credits every document to its source
    names = manifest["source_names"]
    per_source = dict.fromkeys(names, 0)
    for rec in manifest["splits"]["train"]:
        for _, length, sid in load_doc_index(tmp_path / "out", rec):
            per_source[names[sid]] += length + 1
    assert per_source == {n: train[n]["tokens"] for n in names}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| web | 60.00% | 60." in report or "| web | 60.00% | 59." in report


def test_a_source_that_runs_out_stops_the_corpus_loudly_or_is_upsampled(tmp_path):
    sources = {"web": (corpus(tmp_path / "web.jsonl", 400, 1), 0.5), "math": (corpus(tmp_path / "math.jsonl", 60, 3), 0.5)}
    logged = []
    stop = prepare(run_config(mixture_toml(tmp_path, sources, budget=60_000)), tmp_path / "stop", log=logged.append)
    ended = stop["mixture"]["ended"]
    assert ended["reason"] == "exhausted" and ended["source"] == "math" and ended["short"]
    assert any("source math ran out" in line and "60,000-token budget" in line for line in logged)
    assert stop["mixture"]["realised"]["math"] == pytest.approx(0.5, abs=0.01)
    assert "stopped short" in (tmp_path / "stop" / "report.md").read_text()

    mix = mixture_toml(tmp_path, sources, budget=60_000, on_exhausted="upsample", max_epochs=4)
    up = prepare(run_config(mix), tmp_path / "up", log=quiet)
    assert up["mixture"]["ended"]["reason"] == "budget"
    assert up["mixture"]["epochs"]["math"] > 1
    assert up["mixture"]["realised"]["math"] == pytest.approx(0.5, abs=0.01)
    # the stop run used up math once; the upsampled run repeats exactly those documents, nothing else
    once, repeated = documents_of(tmp_path / "stop", stop, "math"), documents_of(tmp_path / "up", up, "math")
    assert len(repeated) > len(once) and set(repeated) == set(once)
    assert up["sources"]["val"]["math"] == stop["sources"]["val"]["math"]  # held-out documents never repeat


def test_the_same_seed_gives_the_same_shards(tmp_path):
    mix = mixture_toml(tmp_path, {"a": (corpus(tmp_path / "a.jsonl", 200, 1), 0.7), "b": (corpus(tmp_path / "b.jsonl", 200, 2), 0.3)},
                       budget=60_000)
    runs = [prepare(run_config(mix, seed=s), tmp_path / f"out{i}", log=quiet) for i, s in enumerate((5, 5, 6))]
    sums = [[r["sha256"] for r in m["splits"]["train"]] for m in runs]
    assert sums[0] == sums[1]
    assert sums[0] != sums[2]
