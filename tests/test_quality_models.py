"""Model-based quality scores (`rain score`) and the filter that keeps documents by them (`rain data filter`):
a tiny random Hugging Face causal LM and classifier with their own tokenizer (not the corpus's), a tiny rain
checkpoint, readability; scores written once, thresholds changed without rescoring, drops and copies."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from rain.cli import main
from rain.data.contamination import split_documents
from rain.data.prepared import PreparedData
from rain.data.quality import keep_mask, load_scores, readability
from tests.conftest import SHARED_DATA, quick_config, tiny_run_config

transformers = pytest.importorskip("transformers")

TEXT = ("the cat sat on a mat and we like apples books cars stones lamps what is plus def return print "
        "alice bob carol dave erin frank has very much")


def hf_tokenizer():
    """A tiny byte-level BPE, unlike the corpus's, wrapped as transformers wraps tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT] * 20, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>")


def llama_config(**kw):
    base = {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256, "bos_token_id": 0,
            "eos_token_id": 1, "pad_token_id": 2}
    return transformers.LlamaConfig(**{**base, **kw})


def save_hf(folder, model_class, **kw):
    torch.manual_seed(0)
    model = model_class(llama_config(**kw)).eval()
    model.save_pretrained(folder)
    hf_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matmuls on two threads of a loaded machine spend their time waiting for each other: 20x slower here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality_models")
    return {"lm": save_hf(root / "lm", transformers.LlamaForCausalLM),
            "regressor": save_hf(root / "regressor", transformers.LlamaForSequenceClassification, num_labels=1),
            "grades": save_hf(root / "grades", transformers.LlamaForSequenceClassification, num_labels=3,
                              id2label={0: "low", 1: "mid", 2: "high"}, label2id={"low": 0, "mid": 1, "high": 2})}


@pytest.fixture
def data(tiny_data, tmp_path):
    """A private copy of the tiny prepared folder (filters rewrite it)."""
    return shutil.copytree(tiny_data, tmp_path / "data")


def train_docs(folder):
    return split_documents(PreparedData(folder), "train")


def test_readability_is_higher_for_plain_sentences():
    plain = "The cat sat on the mat. We like it. It is a good cat."
    dense = "Institutionalisation notwithstanding, interdepartmental characterisation necessitates reconsideration"
    assert readability(plain) > 60 > readability(dense)
    assert readability("") == 0.0 and readability("1234 ...") < 206.835


def test_keep_mask_threshold_and_quantile_per_source():
    values = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 20.0, np.nan], dtype=np.float32)
    sources = np.array([0, 0, 0, 0, 1, 1, 1])
    keep, applied = keep_mask(values, sources, ["a", "b"], {None: ("quantile", 0.5), "b": ("threshold", 15.0)}, True)
    assert keep.tolist() == [False, False, True, True, False, True, False] and applied == {"a": 3.0, "b": 15.0}
    keep, applied = keep_mask(values, sources, ["a", "b"], {"a": ("quantile", 0.25)}, False)  # lower is better
    assert keep.tolist() == [True, False, False, False, True, True, True] and applied == {"a": 1.0, "b": None}


def test_perplexity_reference_with_its_own_tokenizer_then_filter_without_rescoring(data, models, monkeypatch,
                                                                                  capsys):
    assert main(["score", str(data), "--kind", "perplexity", "--model", str(models["lm"]), "--max-tokens", "64",
                 "--batch-size", "4", "--name", "ppl"]) == 0
    docs = train_docs(data)
    scores = load_scores(data, "ppl")
    assert len(scores.values) == len(docs) and np.isfinite(scores.values).all() and (scores.values > 0).all()
    info = json.loads((data / "scores/ppl.json").read_text())
    assert info["kind"] == "perplexity" and not info["higher_is_better"] and info["model_kind"] == "huggingface"
    assert set(info["by_source"]) == {"math", "prose", "code"}
    npy = data / "scores/ppl.npy"
    mtime = npy.stat().st_mtime_ns
    manifest = (data / "manifest.json").read_text()

    def no_model(*a, **k):
        raise AssertionError("the filter loaded a model")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)
    for q in ("0.5", "0.8"):  # a dry run per value: the report only
        assert main(["data", "filter", str(data), "--scores", "ppl", "--keep-quantile", q]) == 0
        report = json.loads((data / "scores/ppl.filter.json").read_text())
        for sid, name in enumerate(PreparedData(data).source_names):
            mine = scores.values[docs.sources == sid]
            entry = report["by_source"][name]
            # the best ceil(q x n), and any document tied with the last of them (templated texts repeat)
            assert entry["kept"] == int((mine <= entry["threshold"]).sum()) >= math.ceil(float(q) * len(mine))
            assert report["by_source"][name]["kept_samples"] and report["by_source"][name]["dropped_samples"]
    assert (data / "manifest.json").read_text() == manifest and npy.stat().st_mtime_ns == mtime
    assert "would drop" in capsys.readouterr().out

    # a threshold for one source, a quantile for the rest, applied in place
    threshold = float(np.median(scores.values[docs.sources == 0]))
    name0 = PreparedData(data).source_names[0]
    assert main(["data", "filter", str(data), "--scores", "ppl", "--threshold", f"{name0}={threshold}",
                 "--keep-quantile", "0.9", "--drop"]) == 0
    keep, _ = keep_mask(scores.values, docs.sources, PreparedData(data).source_names,
                        {name0: ("threshold", threshold), None: ("quantile", 0.9)}, False)
    assert len(train_docs(data)) == int(keep.sum()) < len(docs)
    realigned = load_scores(data, "ppl")  # cut to the kept documents, so a stricter threshold can follow
    assert np.array_equal(realigned.values, scores.values[keep])
    m = json.loads((data / "manifest.json").read_text())
    assert m["quality_filtered"][0]["documents"] == len(docs) - int(keep.sum())
    assert m["filters"][name0]["quality:ppl"]["documents"] == int((~keep & (docs.sources == 0)).sum())
    assert main(["data", "filter", str(data), "--scores", "ppl", "--keep-quantile", "0.5", "--drop"]) == 0


def rain_checkpoint(folder, data):
    from rain.checkpoint import save_checkpoint
    from rain.model.transformer import Transformer

    cfg = tiny_run_config(data)
    torch.manual_seed(0)
    return save_checkpoint(folder, Transformer(cfg.model), None, {"step": 0, "tokens": 0}, cfg,
                           data / "tokenizer.json")


def test_rain_checkpoint_reference_padding_does_not_change_scores(tiny_data, tmp_path):
    from rain.eval.quality import PerplexityScorer

    ckpt = rain_checkpoint(tmp_path / "ckpt", tiny_data)
    texts = ["alice has 3 apples. alice likes apples very much.", "def bob(x):\n    return x * 2\n", "Q: 1 + 1?",
             "x" * 300, ""]
    batched = PerplexityScorer(ckpt, max_tokens=48, batch_size=4)(texts)
    alone = [PerplexityScorer(ckpt, max_tokens=48, batch_size=1)([t])[0] for t in texts[:2]]
    assert np.allclose(batched[:2], alone, rtol=1e-4) and all(np.isfinite(batched[:4])) and math.isnan(batched[4])
    # a random model over 512 tokens: about log2(512) bits per token, a token being a few bytes
    assert 0.5 < batched[0] < 9


def test_classifier_regression_and_labels(data, models):
    assert main(["score", str(data), "--kind", "classifier", "--model", str(models["regressor"]),
                 "--max-tokens", "32", "--batch-size", "8", "--name", "edu"]) == 0
    scores = load_scores(data, "edu")
    assert scores.higher_is_better and np.isfinite(scores.values).all() and np.unique(scores.values).size > 1
    threshold = float(np.quantile(scores.values, 0.3))
    out = data.parent / "filtered"
    assert main(["data", "filter", str(data), "--scores", "edu", "--threshold", str(threshold), "--out", str(out)]) == 0
    assert len(train_docs(out)) == int((scores.values >= threshold).sum())
    assert len(train_docs(data)) == len(scores.values)  # --out leaves the folder whole
    assert PreparedData(out).counts("val") == PreparedData(data).counts("val")

    from rain.eval.quality import ClassifierScorer

    texts = ["the cat sat on a mat", "what is 2 plus 2"]
    grades = ClassifierScorer(models["grades"], max_tokens=16)(texts)
    assert all(0 <= g <= 2 for g in grades)
    high = ClassifierScorer(models["grades"], max_tokens=16, label="high")(texts)
    assert all(0 <= p <= 1 for p in high)


@pytest.mark.parametrize("which, words", [("lm", "not a sequence classifier"), ("corpus", "not a Hugging Face model")])
def test_a_folder_that_is_not_a_classifier_is_one_line(data, models, capsys, which, words):
    folder = models["lm"] if which == "lm" else data
    assert main(["score", str(data), "--kind", "classifier", "--model", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not (data / "scores").exists()


def test_bad_filter_options_are_one_line(data, capsys):
    assert main(["score", str(data), "--kind", "readability"]) == 0
    for args, words in ((["--threshold", "nosuch=3"], "no source 'nosuch'"), (["--keep-quantile", "1.5"], "(0, 1]"),
                        ([], "say what to keep"), (["--scores", "other", "--threshold", "1"], "no such scores")):
        argv = ["data", "filter", str(data), *(["--scores", "readability"] if "--scores" not in args else []), *args]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err


@pytest.mark.shared_data
def test_real_samples_readability_and_perplexity(tmp_path, models):
    from rain.data.prepare import prepare

    texts = [json.loads(line)["text"] for line in
             (SHARED_DATA / "corpus/c4_demo/c4_demo.jsonl").read_text().splitlines()[:80]]
    wiki = (SHARED_DATA / "corpus/wikipedia_demo/wiki_demo.txt").read_text().splitlines()[:10]
    docs = [("c4", t) for t in texts] + [("wiki", t) for t in wiki if t.strip()]
    cfg = quick_config(val_fraction=0.05)
    prepare(cfg, tmp_path / "data", documents=lambda: iter(docs), log=lambda *_: None)
    data = tmp_path / "data"
    assert main(["score", str(data), "--kind", "readability"]) == 0
    assert main(["score", str(data), "--kind", "perplexity", "--model", str(models["lm"]), "--max-tokens", "64",
                 "--batch-size", "8"]) == 0
    read = load_scores(data, "readability").values
    assert np.isfinite(read).all() and 0 < np.median(read) < 100  # C4 prose reads as ordinary English
    assert main(["data", "filter", str(data), "--scores", "readability", "--keep-quantile", "0.8", "--drop"]) == 0
    report = json.loads((data / "scores/readability.filter.json").read_text())
    assert report["by_source"]["c4"]["dropped"] >= 1 and report["by_source"]["c4"]["dropped_samples"]
    assert len(load_scores(data, "perplexity").values) == report["total"]["kept"]
