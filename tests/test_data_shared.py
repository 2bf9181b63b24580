"""rain-v2's 60/30/10 mixture on the real samples in ../shared/data (web prose, Python, math), end to end:
shares, report, and a tokenizer that round-trips every sample and loads in transformers with the same ids."""

import json
import sysconfig
import tarfile
from pathlib import Path

import pytest

from rain.config import RunConfig
from rain.data.prepare import prepare
from rain.data.tokenizer import Tokenizer

from conftest import SHARED_DATA

CORPUS = SHARED_DATA / "corpus"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
pytestmark = pytest.mark.shared_data


def local_mixture(path: Path, budget: int) -> Path:
    """benchmarks/rain-v2-local.toml with this interpreter's standard library and a token budget."""
    text = (Path(__file__).resolve().parents[1] / "benchmarks" / "rain-v2-local.toml").read_text()
    text = text.replace("../../shared/data", str(SHARED_DATA)).replace('"/usr/lib/python3.11"', json.dumps(str(STDLIB)))
    path.write_text(text.replace("budget = 0 ", f"budget = {budget} "))
    return path


def samples() -> dict[str, list[str]]:
    def jsonl(name, *fields):
        rows = [json.loads(line) for line in (CORPUS / name).read_text().splitlines()]
        return ["\n\n".join(r[f] for f in fields) for r in rows]

    with tarfile.open(CORPUS / "python_docs_rst" / "python3.11-doc_sources.tar.xz") as tar:
        docs = [tar.extractfile(m).read().decode() for m in tar if m.isfile()]
    return {
        "c4": jsonl("c4_demo/c4_demo.jsonl", "text"),
        "wikipedia": (CORPUS / "wikipedia_demo" / "wiki_demo.txt").read_text().splitlines(),
        "gsm8k": jsonl("gsm8k_train/train.jsonl", "question", "answer"),
        "math": jsonl("math_competition/math_test_mosaic.jsonl", "context", "chain_of_thought"),
        "python_docs": docs,
        "shakespeare": [(CORPUS / "tinyshakespeare" / "input.txt").read_text()],
        "stdlib": [p.read_text() for p in sorted((STDLIB / "json").glob("*.py")) + sorted((STDLIB / "asyncio").glob("*.py"))],
    }


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shared")
    cfg = RunConfig()  # vocabulary 16,384
    cfg.data.mixture = str(local_mixture(tmp / "mix.toml", budget=1_000_000))
    cfg.data.tokenizer_sample_bytes = 4_000_000
    cfg.data.shard_tokens = 250_000
    cfg.data.val_fraction = 0.02
    out = tmp / "out"
    return out, prepare(cfg, out, log=lambda *_: None)


def test_local_rain_v2_mixture_realises_60_30_10(prepared):
    out, manifest = prepared
    assert manifest["mixture"]["realised"] == pytest.approx({"web": 0.6, "code": 0.3, "math": 0.1}, abs=0.01)
    assert manifest["mixture"]["train_tokens"] >= 1_000_000
    for name in ("web", "code", "math"):
        assert 2.5 < manifest["bytes_per_token"][name] < 6  # measured on held-out documents
        assert manifest["sources"]["val"][name]["documents"] > 0
    assert manifest["filters"]["web"]["quality"]["documents"] > 0  # some C4 pages fail the Gopher rules
    report = json.loads((out / "report.json").read_text())
    assert all(len(report["sources"][n]["samples"]) == 3 for n in ("web", "code", "math"))
    assert (out / "doc_lengths.png").stat().st_size > 10_000
    assert "| math | 10.00% |" in (out / "report.md").read_text()


def test_tokenizer_round_trips_every_sample_and_matches_transformers(prepared):
    from transformers import PreTrainedTokenizerFast

    out, _ = prepared
    ours = Tokenizer.from_file(out / "tokenizer.json")
    theirs = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    assert ours.vocab_size == 16384 and theirs.convert_tokens_to_ids("<|endoftext|>") == ours.eot_id
    for name, texts in samples().items():
        ids = [e.ids for e in ours.hf.encode_batch_fast(texts, add_special_tokens=False)]
        assert ours.hf.decode_batch(ids, skip_special_tokens=False) == texts, name
        some = texts[:200]
        assert theirs(some, add_special_tokens=False)["input_ids"] == ids[:200], name
        assert [theirs.decode(i) for i in ids[:50]] == some[:50], name


def test_the_same_prepared_folder_serves_a_staged_mixture(prepared):
    """Item 1-2 of "Data that adapts" on the real samples: no re-tokenising, and the drawn windows follow the stages."""
    from rain.config import StageConfig
    from rain.train.batches import PretrainData
    from tests.conftest import tiny_run_config

    out, _ = prepared
    cfg = tiny_run_config(out, max_steps=20, batch_size=8, micro_batch=8)
    cfg.model.vocab_size = 16384
    cfg.data.weights = {"web": 0.2, "code": 0.2, "math": 0.6}
    cfg.data.stage = [StageConfig(start=0.5, weights={"code": 1.0})]
    data = PretrainData(cfg)

    def drawn_after(steps):
        for _ in range(steps):
            x = data.next_batch()[0]
            assert x.shape == (8, cfg.model.context) and int(x.max()) < 16384
        return dict(data.loader.state_dict()["source_windows"])

    first = drawn_after(10)
    assert sum(first.values()) == 80 and first["math"] > first["web"] + first["code"]
    second = {n: c - first[n] for n, c in drawn_after(10).items()}
    assert second == {"web": 0, "code": 80, "math": 0}
    assert data.stage_starts()[0]["step"] == 10
