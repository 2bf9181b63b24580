"""Benchmark tasks: requests built exactly as lm-evaluation-harness builds them (prompts, choices, few-shot
draws), reproducible k-shot, and clear errors for bad names and files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rain.errors import RainError
from rain.eval.tasks import (
    TASK_NAMES,
    FewshotSampler,
    build_requests,
    get_task,
    hellaswag_preprocess,
    load_task,
)

from conftest import SHARED_DATA

os.environ.setdefault("HF_HUB_OFFLINE", "1")
EVAL = SHARED_DATA / "eval"


# ----------------------------------------------------------------------------- real items, literal formats


@pytest.mark.shared_data
def test_zero_shot_prompts_on_real_items():
    arc = build_requests("arc_easy", limit=1, data_dir=EVAL).items[0]
    q = "Which statement best explains why photosynthesis is the foundation of most food webs?"
    answer = " Sunlight is the source of energy for nearly all ecosystems."
    assert arc.requests[0] == (f"Question: {q}\nAnswer:", answer)
    assert [c for _, c in arc.requests][1:] == [
        " Most ecosystems are found on land instead of in water.",
        " Carbon dioxide is more available than other gases.",
        " The producers in all ecosystems are plants.",
    ]
    assert arc.gold == 0

    hs = build_requests("hellaswag", limit=1, data_dir=EVAL).items[0]
    assert hs.requests[0][0] == "Roof shingle removal: A man is sitting on a roof. He"
    assert len(hs.requests) == 4 and all(c.startswith(" ") for _, c in hs.requests)
    assert hs.gold == 3 and hs.requests[3][1] == " starts pulling up roofing on a roof."

    piqa = build_requests("piqa", limit=2, data_dir=EVAL).items
    assert piqa[0].requests[0][0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert piqa[0].gold == 0 and piqa[1].gold == 1
    assert piqa[1].requests[1] == ("Question: dresser\nAnswer:", " finish, woodgrain with  bobby pin ")  # kept as is

    wg = build_requests("winogrande", limit=1, data_dir=EVAL).items[0]
    # Partial scoring: one context per option, the shared rest of the sentence is the continuation.
    assert wg.requests == [
        ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
        ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."),
    ]
    assert wg.gold == 1  # answer "2"
    assert get_task("winogrande").metrics == ("acc",)


def test_hellaswag_preprocess():
    assert hellaswag_preprocess("  How to tie [title] a knot [step] Loop it.  ") == "How to tie. a knot Loop it."
    assert hellaswag_preprocess("a  b") == "a b"


@pytest.mark.shared_data
def test_requests_equal_lm_eval_task_objects(tmp_path):
    """lm-eval's own ConfigurableTask (its yamls, reading the same local files) builds the same requests,
    0-shot and 5-shot with its sampler seeded as simple_evaluate seeds it."""
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from rain.eval.harness import write_local_tasks

    names = write_local_tasks(EVAL, tmp_path, TASK_NAMES)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    for name in TASK_NAMES:
        task = manager.load([names[name]])["tasks"][names[name]]
        data = load_task(name, EVAL)  # loaded once for both shot counts
        for k in (0, 5):
            task.set_config(key="num_fewshot", value=k)
            task.set_fewshot_seed(seed=1234)
            task.build_all_requests(limit=30)
            theirs = [tuple(inst.arguments) for inst in task.instances]
            ours = [r for item in build_requests(name, shots=k, limit=30, data=data).items for r in item.requests]
            assert ours == theirs, f"{name} {k}-shot"


# ----------------------------------------------------------------------------- k-shot


@pytest.mark.shared_data
def test_kshot_reproducible_and_seeded():
    data = load_task("piqa", EVAL)
    first = build_requests("piqa", shots=3, limit=20, data=data)
    again = build_requests("piqa", shots=3, limit=20, data=data)
    other = build_requests("piqa", shots=3, limit=20, data=data, seed=7)
    assert [i.requests for i in first.items] == [i.requests for i in again.items]
    assert [i.requests for i in first.items] != [i.requests for i in other.items]
    ctx = first.items[0].requests[0][0]
    assert ctx.count("\n\n") == 3 and ctx.endswith(first.items[0].doc["goal"] + "\nAnswer:")
    assert first.fewshot_source.startswith("validation")  # piqa train is not in shared/data
    assert build_requests("piqa", shots=0, limit=2, data=data).fewshot_source is None
    # The draws for item i do not depend on the limit (one Random consumed item by item, as lm-eval).
    assert [i.requests for i in build_requests("piqa", shots=3, limit=5, data=data).items] == [
        i.requests for i in first.items[:5]
    ]


@pytest.mark.shared_data
def test_kshot_never_shows_the_item_itself():
    data = load_task("hellaswag", EVAL)
    for item in build_requests("hellaswag", shots=5, limit=40, data=data).items:
        shots = item.requests[0][0].split("\n\n")[:-1]
        assert len(shots) == 5
        assert not any(s.startswith(item.doc["query"]) for s in shots)


def test_sampler_excludes_eval_doc_like_lm_eval():
    pool = [{"x": i} for i in range(6)]
    s = FewshotSampler(pool, seed=1)
    for _ in range(200):
        assert {"x": 2} not in s.sample(5, eval_doc={"x": 2})
    # Without an eval doc it is random.Random(seed).sample, drawn in sequence.
    import random

    rnd = random.Random(1234)
    s = FewshotSampler(pool)
    assert [s.sample(2) for _ in range(3)] == [rnd.sample(pool, 2) for _ in range(3)]
    with pytest.raises(RainError, match="pool has only 6"):
        FewshotSampler(pool).sample(6, eval_doc={"x": 0})


@pytest.mark.shared_data
def test_limit_fraction_like_lm_eval():
    assert len(build_requests("winogrande", limit=0.01, data_dir=EVAL).items) == 13  # ceil(1267 * 0.01)


# ----------------------------------------------------------------------------- errors


def test_unknown_task():
    with pytest.raises(RainError, match="unknown eval task 'mmlu'.*arc_easy"):
        build_requests("mmlu", data_dir="/nonexistent")
    from rain.eval.multiple_choice import evaluate

    with pytest.raises(RainError, match="unknown eval task 'hellaswag2'"):  # before any loading or scoring
        evaluate(None, None, ["arc_easy", "hellaswag2"], data_dir="/nonexistent")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_missing_files(tmp_path, name):
    with pytest.raises(RainError, match="file not found"):
        build_requests(name, data_dir=tmp_path)


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _piqa_dir(tmp_path: Path, labels: list[str]) -> Path:
    docs = [json.dumps({"goal": f"g{i}", "sol1": "a", "sol2": "b"}) for i in range(3)]
    _write(tmp_path / "piqa" / "valid.jsonl", docs)
    _write(tmp_path / "piqa" / "valid-labels.lst", labels)
    return tmp_path


def test_label_file_of_wrong_length(tmp_path):
    with pytest.raises(RainError, match="2 labels for 3 items"):
        build_requests("piqa", data_dir=_piqa_dir(tmp_path, ["0", "1"]))


def test_piqa_labels_required_and_applied(tmp_path):
    items = build_requests("piqa", data_dir=_piqa_dir(tmp_path, ["0", "1", "1"])).items
    assert [i.gold for i in items] == [0, 1, 1]
    (tmp_path / "piqa" / "valid-labels.lst").unlink()
    with pytest.raises(RainError, match="valid-labels.lst: file not found"):
        build_requests("piqa", data_dir=tmp_path)


def test_winogrande_label_file_checked(tmp_path):
    doc = {"qID": "q", "sentence": "A beat B because _ won.", "option1": "A", "option2": "B", "answer": "1"}
    _write(tmp_path / "winogrande" / "dev.jsonl", [json.dumps(doc)])
    _write(tmp_path / "winogrande" / "dev-labels.lst", ["2"])
    with pytest.raises(RainError, match="dev-labels.lst: line 1 says '2'"):
        build_requests("winogrande", data_dir=tmp_path)
    _write(tmp_path / "winogrande" / "dev-labels.lst", ["1", "2"])
    with pytest.raises(RainError, match="2 labels for 1 items"):
        build_requests("winogrande", data_dir=tmp_path)
    _write(tmp_path / "winogrande" / "dev-labels.lst", ["1"])
    assert build_requests("winogrande", data_dir=tmp_path).items[0].requests[0] == ("A beat B because A", " won.")
    with pytest.raises(RainError, match="train_l.jsonl: file not found"):
        build_requests("winogrande", shots=1, data_dir=tmp_path)


def test_bad_json_and_missing_fields(tmp_path):
    _write(tmp_path / "arc" / "ARC-Easy-test.jsonl", ['{"question": "q"', ""])
    with pytest.raises(RainError, match="ARC-Easy-test.jsonl:1: not valid JSON"):
        build_requests("arc_easy", data_dir=tmp_path)
    _write(tmp_path / "arc" / "ARC-Easy-test.jsonl", ['{"question": "q", "answerKey": "A"}'])
    with pytest.raises(RainError, match="item 1 has no choices field"):
        build_requests("arc_easy", data_dir=tmp_path)


def test_not_an_arrow_stream(tmp_path):
    _write(tmp_path / "hellaswag" / "data-00000-of-00001.arrow", ["not arrow"])
    with pytest.raises(RainError, match="not an Arrow IPC stream"):
        build_requests("hellaswag", data_dir=tmp_path)


@pytest.mark.shared_data
def test_hub_path_is_the_same_code_path(monkeypatch):
    """Without a data_dir the documents come from datasets.load_dataset (here faked with the local rows)."""
    datasets = pytest.importorskip("datasets")
    wino = EVAL / "winogrande"
    rows = {s: [json.loads(x) for x in (wino / f).read_text().splitlines()] for s, f in
            [("validation", "dev.jsonl"), ("train", "train_l.jsonl")]}
    calls = []

    def fake_load_dataset(path, name=None, **kw):
        calls.append((path, name))
        return datasets.DatasetDict({s: datasets.Dataset.from_list(r) for s, r in rows.items()})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = build_requests("winogrande", shots=3, limit=10)
    local = build_requests("winogrande", shots=3, limit=10, data_dir=EVAL)
    assert calls == [("allenai/winogrande", "winogrande_xl")]
    assert [i.requests for i in hub.items] == [i.requests for i in local.items]
    assert hub.fewshot_source == "train" and local.fewshot_source.startswith("train_l")


def test_hub_offline_is_a_rain_error():
    pytest.importorskip("datasets")
    code = (
        "from rain.errors import RainError\n"
        "from rain.eval.tasks import load_task\n"
        "try:\n    load_task('arc_easy')\n"
        "except RainError as e:\n    print('RAINERROR', e); raise SystemExit(3)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    message = proc.stdout.split("RAINERROR", 1)[1].strip()
    assert "\n" not in message and "allenai/ai2_arc" in message and "--eval-data" in message and "RAIN_EVAL_DATA" in message
