"""rain's native evaluator and lm-evaluation-harness (through the RainLM adapter) agree: same tokenisation,
same scores, same acc / acc_norm on the same local items, 0-shot and 5-shot.

Few-shot pools: both sides use the local files (tasks.local_files). For ARC that is lm-eval's own pool
(train); for hellaswag and piqa, whose train splits are not in shared/data, both draw from the validation
split minus the item; for winogrande both use train_l (lm-eval's hub pool is train_xl). lm-eval's sampler
and rain's draw identically from the same pool (checked item by item in test_eval_tasks.py).
"""

import json
import logging
import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("lm_eval")

from rain.config import ModelConfig  # noqa: E402
from rain.data.tokenizer import train_bpe  # noqa: E402
from rain.eval.harness import RainLM, harness_evaluate  # noqa: E402
from rain.eval.multiple_choice import evaluate, item_scores, mean_stderr, score_tokens, tokenize_requests  # noqa: E402
from rain.model import Transformer  # noqa: E402

from conftest import SHARED_DATA  # noqa: E402

EVAL = SHARED_DATA / "eval"
CORPUS = SHARED_DATA / "corpus" / "c4_demo" / "c4_demo.jsonl"

PARITY_TASKS = ["arc_easy", "hellaswag", "piqa", "winogrande"]
LIMIT = 30


def _texts() -> list[str]:
    if CORPUS.is_file():
        return [json.loads(line)["text"] for line in CORPUS.read_text().splitlines()[:200]]
    # Fallback for the tests that need no shared data.
    words = "the a cat dog sat on mat ran to house tree big small red blue and then it was".split()
    g = torch.Generator().manual_seed(0)
    picks = [torch.randint(len(words), (60,), generator=g).tolist() for _ in range(300)]
    return [" ".join(words[i] for i in p) + "." for p in picks]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(_texts(), 768)


@pytest.fixture(scope="module")
def model(tokenizer):
    """2 layers, d=64, trained 40 steps on the corpus (seeded), so scores are not those of a random net."""
    torch.manual_seed(0)
    # context 384: the 5-shot hellaswag prompts are longer, so lm-eval's left truncation is exercised too.
    cfg = ModelConfig(
        vocab_size=tokenizer.vocab_size, n_layer=2, d_model=64, n_head=4, n_kv_head=2, d_ff=192, context=384
    )
    m = Transformer(cfg)
    ids = torch.tensor([t for doc in tokenizer.encode_batch(_texts()) for t in doc + [tokenizer.eot_id]])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    seq = 128
    for _ in range(40):
        starts = torch.randint(len(ids) - seq - 1, (16,), generator=g)
        x = torch.stack([ids[s : s + seq] for s in starts])
        y = torch.stack([ids[s + 1 : s + seq + 1] for s in starts])
        loss = m(x, targets=y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 6.0  # it learned something (ln 768 = 6.6)
    return m.eval()


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    """datasets' converted copies, shared by the 0- and 5-shot runs (hellaswag's preprocessing is cached)."""
    return tmp_path_factory.mktemp("hf_cache")


# ----------------------------------------------------------------------------- the same numbers


@pytest.mark.shared_data
@pytest.mark.parametrize("shots", [0, 5])
def test_native_equals_lm_eval(model, tokenizer, shots, hf_cache):
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    kw = dict(shots=shots, limit=LIMIT, data_dir=EVAL, batch_size=16)
    ours = evaluate(model, tokenizer, PARITY_TASKS, **kw)
    theirs = harness_evaluate(model, tokenizer, PARITY_TASKS, cache_dir=hf_cache, **kw)
    key = lambda r: (r["task"], r["metric"])  # noqa: E731
    assert sorted(map(key, ours)) == sorted(map(key, theirs))
    theirs_by = {key(r): r for r in theirs}
    for r in ours:
        t = theirs_by[key(r)]
        assert (r["value"], r["items"], r["n_shot"]) == (t["value"], t["items"], t["n_shot"]), key(r)
        assert r["stderr"] == pytest.approx(t["stderr"], rel=1e-9)
        assert r["fewshot_source"] == t["fewshot_source"]
    metrics = {r["task"]: [] for r in ours}
    for r in ours:
        metrics[r["task"]].append(r["metric"])
    assert metrics == {"arc_easy": ["acc", "acc_norm"], "hellaswag": ["acc", "acc_norm"],
                       "piqa": ["acc", "acc_norm"], "winogrande": ["acc"]}


NEW_TASKS = ["arc_challenge", "openbookqa", "boolq", "lambada_openai"]


@pytest.mark.shared_data
def test_more_tasks_native_equals_lm_eval(model, tokenizer, hf_cache):
    """ARC-Challenge, OpenBookQA, BoolQ and LAMBADA (acc and perplexity of the last word) too: the same
    numbers from rain's evaluator and from lm-eval's own task yamls on the same local items. 2-shot only:
    test_eval_tasks checks their 0- and 5-shot requests against lm-eval's, and scoring is shared."""
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    kw = {"shots": 2, "limit": 20, "data_dir": EVAL, "batch_size": 16}
    ours = evaluate(model, tokenizer, NEW_TASKS, **kw)
    theirs = harness_evaluate(model, tokenizer, NEW_TASKS, cache_dir=hf_cache, bootstrap_iters=0, **kw)
    pairs = [[(r["task"], r["metric"]) for r in rows] for rows in (ours, theirs)]
    assert pairs[0] == pairs[1] == [
        ("arc_challenge", "acc"), ("arc_challenge", "acc_norm"), ("openbookqa", "acc"), ("openbookqa", "acc_norm"),
        ("boolq", "acc"), ("lambada_openai", "perplexity"), ("lambada_openai", "acc"),
    ]
    for r, t in zip(ours, theirs):
        assert (r["value"], r["items"], r["n_shot"], r["fewshot_source"]) == (
            t["value"], t["items"], t["n_shot"], t["fewshot_source"]), (r["task"], r["metric"])
    by = {(r["task"], r["metric"]): r["value"] for r in ours}
    assert 1.0 < by[("lambada_openai", "perplexity")] < math.inf  # exp(-mean log-likelihood of the last word)


# ----------------------------------------------------------------------------- pieces


def _instances(request_type, args_list):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=request_type, doc={}, arguments=a, idx=0) for a in args_list]


TRICKY = [
    ("Question: is it?\nAnswer:", " yes"),
    ("The cat sat on the ", "mat."),  # trailing space moves into the continuation
    ("Line one\n\n", "Line two"),  # trailing newlines too
    ("", "no context at all"),  # conditions on EOT
    ("a" * 2000, " and a very long context"),  # left-truncated to the window
    ("x", " "),
]


def test_tokenisation_matches_lm_eval_template_lm(model, tokenizer):
    lm = RainLM(model, tokenizer)
    captured = []
    lm._loglikelihood_tokens = lambda reqs, **kw: captured.extend((list(c), list(k)) for _, c, k in reqs) or [
        (0.0, True)
    ] * len(reqs)
    lm.loglikelihood(_instances("loglikelihood", TRICKY))
    assert tokenize_requests(tokenizer, TRICKY) == captured


@torch.no_grad()
def test_shared_context_scores_equal_plain_forward(model, tokenizer):
    """The packed rows (context once, choices in segments) give the plain forward's numbers."""
    reqs = [("Question: which animal says meow?\nAnswer:", f" {a}") for a in ("the cat", "a dog", "cows", "the cat")]
    reqs += [("word " * 500, " end of it"), ("word " * 500, " end")]  # truncated, different windows
    toks = tokenize_requests(tokenizer, reqs)
    packed = score_tokens(model, toks, batch_size=3)
    plain = score_tokens(model, toks, batch_size=1, share_context=False)
    for (a, ga), (b, gb) in zip(packed, plain):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    assert packed[0] == packed[3]  # identical requests: computed once
    # And by hand for the first request: sum of log-softmax over the continuation tokens.
    ctx, cont = toks[0]
    logits = model(torch.tensor([ctx + cont[:-1]]))[0, len(ctx) - 1 :].float().log_softmax(-1)
    assert packed[0][0] == pytest.approx(float(logits.gather(-1, torch.tensor(cont)[:, None]).sum()), abs=1e-4)


def test_metrics_like_lm_eval():
    # acc: argmax of log-likelihoods; acc_norm: of log-likelihood per character of the choice.
    assert item_scores(["a", "bbbbbbbb"], 1, [-2.0, -4.0]) == {"acc": 0.0, "acc_norm": 1.0}
    assert item_scores(["a", "b"], -100, [-1.0, -2.0]) == {"acc": 0.0, "acc_norm": 0.0}
    from lm_eval.api.metrics import mean_stderr as lm_eval_mean_stderr

    assert mean_stderr([1.0, 0.0, 1.0, 1.0]) == pytest.approx(lm_eval_mean_stderr([1.0, 0.0, 1.0, 1.0]))
    assert mean_stderr([1.0]) is None


@torch.no_grad()
def test_rolling_and_generate(model, tokenizer):
    lm = RainLM(model, tokenizer, batch_size=4)
    text = " ".join(f"The cat number {i} sat on the mat." for i in range(200))  # longer than one window
    (rolling,) = lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(text,)]))
    ids = tokenizer.encode(text)
    assert len(ids) > 2 * model.cfg.context
    # Reference: disjoint windows, each token predicted once with as much context as fits.
    total, done, ctx_len = 0.0, 0, model.cfg.context
    while done < len(ids):
        end = min(len(ids), done + ctx_len)
        inp = ([tokenizer.eot_id] + ids)[max(0, end - ctx_len) : end]
        lp = model(torch.tensor([inp]))[0].float().log_softmax(-1)
        tgt = torch.tensor(ids[max(0, end - ctx_len) : end])
        total += float(lp.gather(-1, tgt[:, None])[-(end - done) :].sum())
        done = end
    assert rolling == pytest.approx(total, rel=1e-4)

    from rain.model.generate import generate

    prompt = "The cat sat"
    out = lm.generate_until(_instances("generate_until", [(prompt, {"until": ["\n\n"], "max_gen_toks": 12})]))
    greedy = tokenizer.decode(generate(model, tokenizer.encode(prompt), max_new_tokens=12, temperature=0.0,
                                       stop_ids=(tokenizer.eot_id,)))
    assert out == [greedy.split("\n\n")[0]]
    stop = greedy[3:6]
    if stop.strip():
        (cut,) = lm.generate_until(_instances("generate_until", [(prompt, {"until": [stop], "max_gen_toks": 12})]))
        assert cut == greedy.split(stop)[0]
