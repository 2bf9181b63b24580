"""`rain decontaminate` (issue 14 item 6): benchmark items whose token n-grams occur in a prepared folder are found
exactly (a planted item and only it), reported per task and source, and --drop rewrites the training split without
exactly the documents that hold them, never leaving the folder half rewritten."""

import json
import shutil

import numpy as np
import pytest

from rain.cli import main
from rain.data import contamination
from rain.data.contamination import Hasher, NgramSet, split_documents
from rain.data.prepare import prepare
from rain.data.prepared import PreparedData
from rain.errors import RainError
from rain.eval.decontaminate import REPORT, decontaminate, item_texts, table
from rain.eval.tasks import load_task
from tests.conftest import (
    SHARED_DATA,
    decoded_documents,
    quick_config,
    synthetic_documents,
)

PLANTED_QUESTION = "Which gas do green plants take in from the air to make their own food during photosynthesis?"
ARC = [  # id, question, choices, answer
    ("Q-plants", PLANTED_QUESTION, ["oxygen", "carbon dioxide", "nitrogen", "helium"], "B"),
    ("Q-moon", "Why does the moon appear to change its shape over the course of a month in the night sky?",
     ["clouds", "its orbit shows us different sunlit parts", "it shrinks", "eclipses"], "B"),
    ("Q-rocks", "What kind of rock forms when melted magma cools slowly far below the surface of the earth?",
     ["igneous", "sedimentary", "fossil", "sand"], "A"),
]
PIQA = [("To keep a cut avocado from turning brown overnight in the fridge,", "press plastic wrap onto it",
         "leave it in the sun", 0)]
PLANTED_DOC = ("Science corner for curious readers. " + PLANTED_QUESTION
               + " Most students answer carbon dioxide, and they are right.\n")


def quiet(*_):
    pass


def eval_folder(root):
    """A benchmark folder laid out like shared/data/eval with a few ARC-Easy and PIQA items."""
    (root / "arc").mkdir(parents=True)
    (root / "arc" / "ARC-Easy-test.jsonl").write_text("".join(
        json.dumps({"id": i, "question": q, "choices": {"text": c, "label": list("ABCD")}, "answerKey": a}) + "\n"
        for i, q, c, a in ARC))
    (root / "piqa").mkdir()
    (root / "piqa" / "valid.jsonl").write_text("".join(json.dumps({"goal": g, "sol1": a, "sol2": b}) + "\n"
                                                       for g, a, b, _ in PIQA))
    (root / "piqa" / "valid-labels.lst").write_text("".join(f"{lab}\n" for *_, lab in PIQA))
    return root


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(prepared folder, benchmark folder): synthetic documents plus one training document holding an ARC item."""
    root = tmp_path_factory.mktemp("decontaminate")
    docs = synthetic_documents(240, seed=3)
    docs.insert(100, ("prose", PLANTED_DOC))
    prepare(quick_config(), root / "data", documents=lambda: iter(docs), log=quiet)
    return root / "data", eval_folder(root / "eval")


def test_window_hashes_are_the_polynomial_and_do_not_depend_on_position():
    h = Hasher(1000)
    tokens = np.random.default_rng(1).integers(0, 1000, 300)
    full = h.hashes(tokens, 13)
    assert len(full) == 288 and len(np.unique(full)) == 288
    assert h.hashes(tokens[50:63], 13)[0] == full[50]  # the same window anywhere: the same hash
    direct = 0
    for t in tokens[7:20]:
        direct = (direct * 0x100000001B3 + int(h.table[t])) % (1 << 64)
    assert int(full[7]) == (direct + int(h.salt(13)[0])) % (1 << 64)
    assert len(h.hashes(tokens[:5], 13)) == 0  # no whole window: NgramSet matches such a text as a whole


def test_find_is_exact_for_long_and_short_texts():
    rng = np.random.default_rng(0)
    text = rng.integers(10, 1000, 40)
    ngrams = NgramSet([text, [5, 6, 7]], [0, 1], 13, 1000)
    assert len(ngrams) == 28 + 1 and ngrams.short_owners().tolist() == [1]
    corpus = np.concatenate([rng.integers(10, 1000, 5000), text[10:30], [5, 6, 7], [5, 6]])
    pos, owner, length = ngrams.find(corpus, len(corpus) - 2)
    assert sorted(set(zip(owner.tolist(), length.tolist()))) == [(0, 13), (1, 3)]
    assert sorted(pos[owner == 0].tolist()) == list(range(5000, 5008))  # 20 planted tokens: 8 windows of 13
    assert pos[owner == 1].tolist() == [5020]  # [5, 6] at the end is not the whole short text
    # a hash collision never makes a match: plant a wanted hash on other tokens
    ngrams.hashes[:] = ngrams.hasher.hashes(corpus[:13], 13)[0]
    ngrams.lengths[0].top[:] = 255
    ngrams.lengths[0].low[:] = True
    assert not len(ngrams.find(corpus[:13], 1)[0])


def test_item_texts_are_what_lm_eval_scores(tmp_path):
    root = eval_folder(tmp_path)
    doc = load_task("arc_easy", root, need_pool=False).docs[0]
    assert item_texts("arc_easy", 0, doc) == [f"Question: {PLANTED_QUESTION}\nAnswer: {c}" for c in ARC[0][2]]


def test_the_planted_item_is_found_and_only_it(planted, tmp_path):
    data, evals = planted
    report = decontaminate(data, evals, out=tmp_path, log=quiet)
    assert (tmp_path / REPORT).is_file() and json.loads((tmp_path / REPORT).read_text())["tasks"] == report["tasks"]
    arc, piqa = report["tasks"]["arc_easy"], report["tasks"]["piqa"]
    assert (arc["items"], arc["train"]["contaminated"], arc["train"]["documents"]) == (3, 1, 1)
    assert arc["train"]["by_source"] == {"prose": {"items": 1, "documents": 1}}
    assert (piqa["items"], piqa["train"]["contaminated"], piqa["val"]["contaminated"]) == (1, 0, 0)
    assert arc["val"]["contaminated"] == 0 and report["splits"]["val"]["contaminated_documents"] == 0
    [item] = arc["contaminated_items"]
    assert (item["index"], item["id"], item["train"]["documents"]) == (0, "Q-plants", 1)
    [match] = item["matches"]
    assert match["source"] == "prose" and match["ngram"].strip() in PLANTED_QUESTION and "[[" in match["context"]
    # the one document reported is the one that holds the question
    docs = split_documents(PreparedData(data), "train")
    assert report["splits"]["train"]["contaminated_documents"] == 1
    holding = [d for d in decoded_documents(data, PreparedData(data).manifest) if PLANTED_QUESTION in d]
    assert holding == [PLANTED_DOC] and match["document"] < len(docs)
    assert "arc_easy" in table(report) and "1 of" in table(report)


def test_chunk_size_does_not_change_the_matches(planted):
    data, evals = planted
    small = decontaminate(data, evals, out=None, chunk_tokens=37, log=quiet)  # windows across every chunk end
    assert small["tasks"] == decontaminate(data, evals, chunk_tokens=1 << 20, log=quiet)["tasks"]


def copy_of(planted, tmp_path):
    data, evals = planted
    shutil.copytree(data, tmp_path / "data")
    return tmp_path / "data", evals


def test_drop_removes_exactly_that_document_and_the_loader_still_reads(planted, tmp_path):
    from rain.train.batches import PretrainData
    from tests.conftest import tiny_run_config

    data, evals = copy_of(planted, tmp_path)
    before = PreparedData(data).manifest
    docs_before = decoded_documents(data, before)
    report = decontaminate(data, evals, drop=True, log=quiet)
    after = PreparedData(data).manifest
    assert decoded_documents(data, after) == [d for d in docs_before if d != PLANTED_DOC]
    dropped = report["dropped"]
    assert (dropped["documents"], dropped["by_source"]["prose"]["documents"]) == (1, 1)
    assert dropped["bytes"] == len(PLANTED_DOC.encode())
    old, new = before["sources"]["train"]["prose"], after["sources"]["train"]["prose"]
    assert new["documents"] == old["documents"] - 1 and old["tokens"] - new["tokens"] == dropped["tokens"]
    assert new["bytes"] == old["bytes"] - len(PLANTED_DOC.encode())
    assert after["splits"]["val"] == before["splits"]["val"]
    assert after["mixture"]["train_tokens"] == sum(r["tokens"] for r in after["splits"]["train"])
    assert after["filters"]["prose"]["decontamination"]["rules"] == {"arc_easy": 1}
    assert after["decontaminated"][0]["tasks"] == ["arc_easy", "piqa"] and after["decontaminated"][0]["ngram"] == 13
    listed = {n for s in after["splits"].values() for r in s for n in (r["file"], r["index"])}
    on_disk = {p.name for p in data.iterdir() if contamination.SHARD_FILE.match(p.name)}
    assert on_disk == listed  # the old shards are gone, nothing half-written is left
    assert "decontamination" in (data / "report.md").read_text()
    PretrainData(tiny_run_config(data)).next_batch()
    again = decontaminate(data, evals, drop=True, log=quiet)
    assert again["tasks"]["arc_easy"]["train"]["contaminated"] == 0 and again["dropped"]["documents"] == 0


def test_a_drop_killed_before_its_manifest_leaves_the_old_folder_and_runs_again(planted, tmp_path, monkeypatch):
    data, evals = copy_of(planted, tmp_path)
    manifest = PreparedData(data).manifest
    docs_before = decoded_documents(data, manifest)

    def killed(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(contamination, "write_json_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        decontaminate(data, evals, drop=True, log=quiet)
    assert PreparedData(data).manifest == manifest and decoded_documents(data, manifest) == docs_before
    assert len(contamination._unlisted_shard_files(data, manifest, "train")) > 0  # the new shards, not yet listed
    monkeypatch.undo()
    decontaminate(data, evals, drop=True, log=quiet)
    after = PreparedData(data).manifest
    assert decoded_documents(data, after) == [d for d in docs_before if d != PLANTED_DOC]
    assert contamination._unlisted_shard_files(data, after, "train") == []


def test_a_drop_refuses_a_folder_changed_since_it_was_scanned(planted, tmp_path):
    data, _ = copy_of(planted, tmp_path)
    manifest = PreparedData(data).manifest
    with pytest.raises(RainError, match="changed while it was being scanned"):
        contamination.drop_documents(data, np.array([0]), {}, scanned=[], log=quiet)
    assert PreparedData(data).manifest == manifest


def one_line_error(capsys, argv, fragment):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and err.startswith("rain: error:") and "Traceback" not in err, err
    assert fragment in err, err


def test_bad_input_is_one_line(planted, tmp_path, capsys):
    data, evals = planted
    one_line_error(capsys, ["decontaminate", data, "--eval-data", tmp_path / "nope"], "nope: no such folder")
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["decontaminate", data, "--eval-data", tmp_path / "empty"], "holds none of the benchmarks")
    one_line_error(capsys, ["decontaminate", tmp_path / "empty", "--eval-data", evals], "no manifest.json")
    one_line_error(capsys, ["decontaminate", data, "--eval-data", evals, "--tasks", "hellaswag"], "file not found")
    one_line_error(capsys, ["decontaminate", data, "--eval-data", evals, "--tasks", "mmlu"], "unknown eval task")
    with pytest.raises(SystemExit):
        main(["decontaminate", str(data), "--ngram", "0"])
    assert "--ngram: 0 is outside" in capsys.readouterr().err
    with pytest.raises(RainError, match="--ngram"):
        decontaminate(data, evals, ngram=0)


def test_the_command_prints_a_table_and_writes_the_report(planted, tmp_path, capsys):
    data, evals = planted
    assert main(["decontaminate", str(data), "--eval-data", str(evals), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "arc_easy" in out and f"wrote {tmp_path / REPORT}" in out


def real_eval_folder(root, hellaswag_items=400):
    """The real benchmark files of shared/data/eval, with HellaSwag cut to its first items (a new Arrow stream of
    the same rows) to keep the test fast: the tiny test tokenizer makes ~1 token a character."""
    import pyarrow as pa

    evals = SHARED_DATA / "eval"
    for name in ("arc", "piqa", "winogrande"):
        shutil.copytree(evals / name, root / name)
    (root / "hellaswag").mkdir(parents=True)
    table = pa.ipc.open_stream(pa.memory_map(str(evals / "hellaswag" / "data-00000-of-00001.arrow"))).read_all()
    with pa.ipc.new_stream(str(root / "hellaswag" / "data-00000-of-00001.arrow"), table.schema) as out:
        out.write_table(table.slice(0, hellaswag_items))
    return root


@pytest.mark.shared_data
def test_real_benchmark_items_planted_in_training_text_are_found(tmp_path):
    evals = real_eval_folder(tmp_path / "eval")
    hellaswag = load_task("hellaswag", evals, need_pool=False).docs[5]
    winogrande = load_task("winogrande", evals, need_pool=False).docs[7]
    arc = load_task("arc_easy", evals, need_pool=False).docs[11]
    wino_sentence = winogrande["sentence"].replace("_", winogrande["option" + winogrande["answer"]])
    docs = synthetic_documents(200, seed=5)
    docs.insert(50, ("prose", f"From a how-to site. {hellaswag['ctx']} {hellaswag['endings'][0]} That is all."))
    docs.insert(120, ("prose", f"A story. {wino_sentence} The end."))
    docs.insert(150, ("prose", f"Quiz night.\nQuestion: {arc['question']}\nAnswer: {arc['choices']['text'][0]}\n"))
    prepare(quick_config(), tmp_path / "data", documents=lambda: iter(docs), log=quiet)
    report = decontaminate(tmp_path / "data", evals, log=quiet)
    assert set(report["tasks"]) == {"arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande"}
    found = {t: {i["index"] for i in r["contaminated_items"]} for t, r in report["tasks"].items()}
    assert 5 in found["hellaswag"] and 7 in found["winogrande"] and 11 in found["arc_easy"]
    assert report["tasks"]["winogrande"]["items"] == 1267 and report["tasks"]["arc_easy"]["items"] == 2376
    assert report["splits"]["train"]["contaminated_documents"] + report["splits"]["val"]["contaminated_documents"] == 3
