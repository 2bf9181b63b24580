"""Generative tasks (GSM8K, HumanEval) built and scored as lm-eval builds and scores them, and the sandbox that
runs HumanEval completions: it refuses the network and new processes and kills a looping program."""

import json
import os
import socket
import time
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from rain.errors import RainError
from rain.eval.generative import (
    GSM8K_FILTERS,
    HUMANEVAL_MAX_GEN_TOKS,
    HUMANEVAL_UNTIL,
    exact_match,
    gsm8k_items,
    gsm8k_scores,
    humaneval_items,
    humaneval_scores,
    regex_extract,
)
from rain.eval.sandbox import run_program

os.environ.setdefault("HF_HUB_OFFLINE", "1")
EVAL = SHARED_DATA / "eval"


# ----------------------------------------------------------------------------- sandbox


def test_sandbox_refuses_network():
    """A completion that connects to a live local server fails, and the server never sees a connection."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        for how in (f"socket.create_connection(('127.0.0.1', {port}), timeout=2)",
                    f"socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(('127.0.0.1', {port}))"):
            res = run_program(f"import socket\n{how}\n")
            assert res.status == "failed" and "network access is refused" in res.output, how
        server.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing in the accept queue: no connection was made
            server.accept()
    for code in ("import subprocess\nsubprocess.run(['true'])", "import os\nos.system('true')"):
        res = run_program(code)
        assert res.status == "failed" and "is refused" in res.output


def test_sandbox_kills_a_loop_and_runs_plain_code():
    t0 = time.monotonic()
    res = run_program("while True:\n    pass\n", timeout=1.0)
    assert res.status == "timeout" and not res.passed and time.monotonic() - t0 < 4
    assert run_program("assert sum(range(4)) == 6\nprint('ok')").passed
    failed = run_program("assert 1 == 2")
    assert failed.status == "failed" and "AssertionError" in failed.output


# ----------------------------------------------------------------------------- HumanEval


@pytest.mark.shared_data
def test_humaneval_requests_and_pass_at_1(recwarn):
    items = humaneval_items(EVAL, limit=3)
    assert items[0].context == items[0].doc["prompt"] and items[0].doc["task_id"] == "HumanEval/0"
    # lm-eval's humaneval.yaml (its utils.py loads code_eval from the hub, so the task cannot load offline:
    # compare with the yaml itself)
    import lm_eval
    import yaml

    loader = type("L", (yaml.SafeLoader,), {})
    loader.add_multi_constructor("!", lambda *a: None)
    cfg = yaml.load((Path(lm_eval.__file__).parent / "tasks/humaneval/humaneval.yaml").read_text(), loader)
    assert (cfg["doc_to_text"], cfg["num_fewshot"], cfg["output_type"]) == ("{{prompt}}", 0, "generate_until")
    assert tuple(cfg["generation_kwargs"]["until"]) == HUMANEVAL_UNTIL
    assert cfg["generation_kwargs"]["max_gen_toks"] == HUMANEVAL_MAX_GEN_TOKS == items[0].max_gen_toks

    with pytest.raises(RainError, match="off by default.*--allow-code-execution"):
        humaneval_scores(["    return 1\n"], items[:1])
    right = [it.doc["canonical_solution"] for it in items]
    wrong = ["    return None\n", "    while True:\n        pass\n", right[2]]
    assert humaneval_scores(right, items, allow_code_execution=True, timeout=5) == [1.0, 1.0, 1.0]
    assert humaneval_scores(wrong, items, allow_code_execution=True, timeout=1) == [0.0, 0.0, 1.0]
    assert any("sandbox" in str(w.message) for w in recwarn)


# ----------------------------------------------------------------------------- GSM8K


@pytest.fixture(scope="module")
def gsm8k_dir(tmp_path_factory):
    """lm-eval's gsm8k layout: test (evaluated) and train (shots), the first lines of the shared files (the
    parity does not need all 7,473 shots, and datasets converts fewer rows faster)."""
    d = tmp_path_factory.mktemp("eval") / "gsm8k"
    d.mkdir()
    for name, src, n in (("test", EVAL / "gsm8k" / "test.jsonl", 8),
                         ("train", SHARED_DATA / "corpus" / "gsm8k_train" / "train.jsonl", 300)):
        (d / f"{name}.jsonl").write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return d


@pytest.mark.shared_data
def test_gsm8k_requests_equal_lm_eval(gsm8k_dir, tmp_path):
    pytest.importorskip("lm_eval")
    import lm_eval
    from lm_eval.tasks import TaskManager

    cfg = {
        "include": str(Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k.yaml"),
        "task": "rain_gsm8k", "tag": "rain_local", "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(gsm8k_dir / "test.jsonl"), "train": str(gsm8k_dir / "train.jsonl")},
                           "cache_dir": str(tmp_path / "hf_cache")},
    }
    (tmp_path / "rain_gsm8k.yaml").write_text(json.dumps(cfg))
    task = TaskManager(include_path=str(tmp_path), include_defaults=False).load(["rain_gsm8k"])["tasks"]["rain_gsm8k"]
    for k in (0, 5):
        task.set_config(key="num_fewshot", value=k)
        task.set_fewshot_seed(seed=1234)
        task.build_all_requests(limit=8)
        theirs = [inst.arguments for inst in task.instances]
        ours = gsm8k_items(gsm8k_dir.parent, shots=k, limit=8)
        assert [it.context for it in ours] == [ctx for ctx, _ in theirs], f"{k}-shot"
        assert all(tuple(kw["until"]) == it.until for it, (_, kw) in zip(ours, theirs))
    assert ours[0].context.count("Question:") == 6 and "#### " in ours[0].context


@pytest.mark.shared_data
def test_rainlm_on_lm_evals_gsm8k_generates_what_rain_generates(gsm8k_dir, tmp_path):
    """lm-eval driving rain (RainLM.generate_until) on lm-eval's own gsm8k.yaml returns, item for item, the text
    rain's native GSM8K generates (same prompt, stop strings, max_gen_toks, left cut of a prompt longer than the
    context), and lm-eval's exact_match per filter equals rain's on those texts."""
    pytest.importorskip("lm_eval")
    import lm_eval
    import torch
    from conftest import small_model_config
    from lm_eval.tasks import TaskManager

    from rain.data.tokenizer import train_bpe
    from rain.eval.generative import generate
    from rain.eval.harness import RainLM
    from rain.model import Transformer

    train = [json.loads(line) for line in (gsm8k_dir / "train.jsonl").read_text().splitlines()]
    tokenizer = train_bpe([f"Question: {d['question']}\nAnswer: {d['answer']}" for d in train], 512)
    torch.manual_seed(0)
    model = Transformer(small_model_config(vocab_size=tokenizer.vocab_size, context=256)).eval()
    items = gsm8k_items(gsm8k_dir.parent, shots=1, limit=3)
    assert max(len(tokenizer.encode(it.context)) for it in items) > 256 - 20  # the prompt is cut from the left
    ours = generate(model, tokenizer, items, max_gen_toks=20)

    cfg = {"include": str(Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k.yaml"), "task": "rain_gsm8k",
           "dataset_path": "json", "dataset_name": None,
           "dataset_kwargs": {"data_files": {"test": str(gsm8k_dir / "test.jsonl"), "train": str(gsm8k_dir / "train.jsonl")},
                              "cache_dir": str(tmp_path / "hf_cache")}}
    (tmp_path / "rain_gsm8k.yaml").write_text(json.dumps(cfg))
    res = lm_eval.simple_evaluate(model=RainLM(model, tokenizer), tasks=["rain_gsm8k"], num_fewshot=1, limit=3,
                                  gen_kwargs={"max_gen_toks": 20}, log_samples=True, bootstrap_iters=0,
                                  task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))
    theirs = {s["doc_id"]: s["resps"][0][0] for s in res["samples"]["rain_gsm8k"]}
    assert [theirs[i] for i in range(3)] == ours and any(ours)
    for name, values in gsm8k_scores(ours, items).items():
        assert res["results"]["rain_gsm8k"][f"exact_match,{name}"] == sum(values) / 3


def test_gsm8k_filters_and_exact_match_equal_lm_eval():
    pytest.importorskip("lm_eval")
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    reference = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 1,072"
    responses = [
        " She sold 24 in May, so 48 + 24 = 72.\n#### 1,072", " The answer is $1,072.", " #### 1072.", " 72 clips",
        " no numbers at all", " 5 and then 1072", " #### -3.5", "",
    ]
    items = [type("I", (), {"doc": {"answer": reference}})()] * len(responses)
    ours = gsm8k_scores(responses, items)
    for name, (pattern, group) in GSM8K_FILTERS.items():
        lm_filter = RegexFilter(regex_pattern=pattern, group_select=group)
        extracted = [x[0] for x in lm_filter.apply([[r] for r in responses], [{}] * len(responses))]
        assert [regex_extract(r, pattern, group) for r in responses] == extracted, name
        theirs = [exact_match_hf_evaluate([e], [reference], regexes_to_ignore=[",", "\\$", "(?s).*#### ", "\\.$"],
                                          ignore_case=True)["exact_match"] for e in extracted]
        assert ours[name] == theirs, name
    assert ours["strict-match"][:3] == [1.0, 0.0, 1.0] and ours["flexible-extract"][:2] == [1.0, 1.0]
    assert exact_match("[invalid]", reference) == 0.0


def test_gsm8k_missing_train_is_a_clear_error(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    assert gsm8k_items(tmp_path, shots=0)[0].context == "Question: 1+1?\nAnswer:"
    with pytest.raises(RainError, match="train.jsonl: file not found"):
        gsm8k_items(tmp_path, shots=5)


def test_task_names_point_the_way():
    from rain.eval.generative import evaluate_generative
    from rain.eval.tasks import get_task

    with pytest.raises(RainError, match="gsm8k is a generative task.*evaluate_generative.*arc_easy"):
        get_task("gsm8k")
    with pytest.raises(RainError, match="unknown eval task 'mbpp'.*lambada_openai.*generative: gsm8k, humaneval"):
        get_task("mbpp")
    with pytest.raises(RainError, match="unknown generative task 'mbpp'.*gsm8k, humaneval"):
        evaluate_generative(None, None, "mbpp", EVAL)
    with pytest.raises(RainError, match="off by default"):  # refused before any model or file is touched
        evaluate_generative(None, None, "humaneval", "/nonexistent")
