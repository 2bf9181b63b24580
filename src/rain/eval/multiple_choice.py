"""Score lm-eval style multiple-choice requests with a rain model and aggregate acc / acc_norm.

Tokenisation follows lm-eval's HF model (TemplateLM.loglikelihood / _encode_pair): trailing spaces of the
context move to the continuation, the whole string is encoded once, the context on its own, and the
continuation is whole[len(context):]; an empty context becomes the EOT token; inputs longer than the model's
context are cut from the left. Scores are sums of log-softmax over the continuation tokens.

Efficiency: identical requests are scored once, and all continuations sharing a context (the choices of
one question) are packed into a single row: the context once, then each continuation in its own segment,
with an attention mask that lets a segment see the context and itself only, and positions that restart
after the context. Rows are sorted by length and batched.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rain.data.tokenizer import Tokenizer
from rain.errors import RainError
from rain.eval.tasks import FEWSHOT_SEED, TaskRequests, build_requests, get_task
from rain.progress import progress

TokenRequest = tuple[Sequence[int], Sequence[int]]


# ----------------------------------------------------------------------------- tokenisation


class _Encoder:
    """tokenizer.encode with a cache (every choice of a question repeats its context)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, list[int]] = {}

    def prefetch(self, texts: Iterable[str]) -> None:
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        for start in range(0, len(todo), 4096):  # encode_batch in chunks: bounded memory, both cores busy
            chunk = todo[start : start + 4096]
            self.cache.update(zip(chunk, self.tokenizer.encode_batch(chunk)))

    def __call__(self, text: str) -> list[int]:
        ids = self.cache.get(text)
        if ids is None:
            ids = self.cache[text] = self.tokenizer.encode(text)
        return ids


def _split_pair(context: str, continuation: str) -> tuple[str, str]:
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    return context, continuation


def _encode_pair(enc: _Encoder, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's TemplateLM._encode_pair (causal) for a non-empty context."""
    context, continuation = _split_pair(context, continuation)
    whole = enc(context + continuation)
    context_enc = enc(context)
    return context_enc, whole[len(context_enc) :]


def tokenize_requests(tokenizer: Tokenizer, requests: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) strings -> (context ids, continuation ids), as TemplateLM.loglikelihood does."""
    enc = _Encoder(tokenizer)
    texts = []
    for context, continuation in requests:
        if context == "":
            texts.append(continuation)
        else:
            c, k = _split_pair(context, continuation)
            texts += [c + k, c]
    enc.prefetch(texts)
    out = []
    for context, continuation in requests:
        if context == "":
            cont = enc(continuation)
            # An empty context conditions on the prefix token (EOT), unless the continuation starts with it.
            if cont and cont[0] == tokenizer.eot_id:
                out.append((cont[:1], cont[1:]))
            else:
                out.append(([tokenizer.eot_id], cont))
        else:
            out.append(_encode_pair(enc, context, continuation))
    return out


# ----------------------------------------------------------------------------- scoring


class _Row:
    """One sequence: a context followed by the continuations scored against it (each minus its last token)."""

    __slots__ = ("ctx", "conts")

    def __init__(self, ctx: tuple[int, ...], conts: list[tuple[int, ...]]):
        self.ctx, self.conts = ctx, conts

    def __len__(self) -> int:
        return len(self.ctx) + sum(len(c) - 1 for c in self.conts)

    def key(self):
        return (-len(self), self.ctx, self.conts)


@torch.inference_mode()
def score_tokens(
    model,
    requests: Sequence[TokenRequest],
    batch_size: int = 32,
    share_context: bool = True,
    on_done: Callable[[list[int]], None] | None = None,
) -> list[tuple[float, bool]]:
    """(context ids, continuation ids) -> (sum of continuation log-probs, continuation is the greedy output).

    lm-eval semantics: the model sees (context + continuation)[-(context_len + 1):][:-1] and the last
    len(continuation) positions are scored. on_done(indices) is called with the request indices finished
    after each batch. share_context=False scores every request in its own row with the plain forward
    (a reference path; the numbers agree to float rounding).
    """
    max_len = model.cfg.context
    device = next(model.parameters()).device
    results: list[tuple[float, bool] | None] = [None] * len(requests)

    # Left-truncate as lm-eval does; then a request is a (context, continuation) that fits the window, and
    # truncation only shortens the context. Identical requests are scored once.
    owners: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = defaultdict(list)
    for i, (ctx, cont) in enumerate(requests):
        ctx, cont = tuple(ctx), tuple(cont)
        if not cont:
            results[i] = (0.0, True)  # nothing to score (lm-eval asserts here instead)
            continue
        if not ctx:
            raise RainError("a loglikelihood request has an empty context: condition on at least one token")
        if len(cont) > max_len:
            raise RainError(f"a continuation of {len(cont)} tokens is longer than the model's context ({max_len})")
        if len(ctx) + len(cont) > max_len + 1:
            ctx = (ctx + cont)[-(max_len + 1) : -len(cont)]
        owners[(ctx, cont)].append(i)
    if on_done is not None and any(r is not None for r in results):
        on_done([i for i, r in enumerate(results) if r is not None])

    by_ctx: dict[tuple[int, ...], list[tuple[int, ...]]] = defaultdict(list)
    for ctx, cont in owners:
        by_ctx[ctx].append(cont)
    rows: list[_Row] = []
    for ctx, conts in by_ctx.items():
        conts.sort(key=lambda c: (-len(c), c))
        if not share_context:
            rows += [_Row(ctx, [c]) for c in conts]
            continue
        # Greedy packing, a row never longer than the model's context (memory as for an ordinary batch).
        row = _Row(ctx, [])
        for c in conts:
            if row.conts and len(row) + len(c) - 1 > max_len:
                rows.append(row)
                row = _Row(ctx, [])
            row.conts.append(c)
        rows.append(row)
    rows.sort(key=_Row.key)  # longest first, like lm-eval: padding stays small, any OOM comes early

    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), max(1, batch_size)):
            batch = rows[start : start + max(1, batch_size)]
            for (ctx, cont), value in zip(_batch_keys(batch), _score_batch(model, batch, share_context, device)):
                for i in owners[(ctx, cont)]:
                    results[i] = value
            if on_done is not None:
                on_done([i for key in _batch_keys(batch) for i in owners[key]])
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def _batch_keys(batch: list[_Row]):
    return [(row.ctx, c) for row in batch for c in row.conts]


def _score_batch(model, batch: list[_Row], pack: bool, device) -> list[tuple[float, bool]]:
    B, T = len(batch), max(len(r) for r in batch)
    idx = torch.zeros(B, T, dtype=torch.long)
    pos = torch.zeros(B, T, dtype=torch.long)
    seg = torch.full((B, T), -1, dtype=torch.long)  # -1 padding, 0 context, j + 1 continuation j
    rows_q, cols_q, targets, spans = [], [], [], []
    for b, row in enumerate(batch):
        L = len(row.ctx)
        idx[b, :L] = torch.tensor(row.ctx)
        pos[b, :L] = torch.arange(L)
        seg[b, :L] = 0
        off = L
        for j, cont in enumerate(row.conts):
            n = len(cont) - 1
            if n:
                idx[b, off : off + n] = torch.tensor(cont[:-1])
                pos[b, off : off + n] = torch.arange(L, L + n)
                seg[b, off : off + n] = j + 1
            # The first continuation token is predicted from the last context token, the rest from their
            # predecessors in the segment.
            q = [L - 1] + list(range(off, off + n))
            spans.append((len(targets), len(targets) + len(cont)))
            rows_q += [b] * len(cont)
            cols_q += q
            targets += cont
            off += n
    # Unpacked rows take the ordinary causal forward: right padding comes after every scored position.
    packing = dict(positions=pos.to(device), attn_mask=_segment_mask(seg.to(device))) if pack else {}
    logits = model(idx.to(device), **packing)
    logits = logits[torch.tensor(rows_q, device=device), torch.tensor(cols_q, device=device)]
    logprobs = F.log_softmax(logits.float(), dim=-1)
    tgt = torch.tensor(targets, device=device)
    token_lp = logprobs.gather(-1, tgt[:, None]).squeeze(-1).cpu()
    greedy = (logprobs.argmax(-1) == tgt).cpu()
    return [(float(token_lp[a:b].sum()), bool(greedy[a:b].all())) for a, b in spans]


def _segment_mask(seg: torch.Tensor) -> torch.Tensor:
    """seg (B, T): -1 padding, 0 context, j + 1 continuation j -> the (B, 1, T, T) mask for Transformer.forward.

    A token sees earlier context tokens and earlier tokens of its own segment; padding sees padding and
    context, so no row of the mask is empty (an empty row would give NaNs that leak through V)."""
    causal = torch.ones(seg.shape[1], seg.shape[1], dtype=torch.bool, device=seg.device).tril()
    return (((seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])) & causal)[:, None]


def loglikelihood(
    model,
    tokenizer: Tokenizer,
    requests: Sequence[tuple[str, str]],
    batch_size: int = 32,
    share_context: bool = True,
    on_done: Callable[[list[int]], None] | None = None,
) -> list[tuple[float, bool]]:
    """lm-eval's `loglikelihood` for (context, continuation) strings: [(log-prob, is_greedy)] in order."""
    return score_tokens(model, tokenize_requests(tokenizer, requests), batch_size, share_context, on_done)


# ----------------------------------------------------------------------------- metrics


def mean_stderr(values: Sequence[float]) -> float | None:
    """lm-eval's mean_stderr: sample standard deviation / sqrt(n); None (lm-eval: "N/A") for n < 2."""
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def item_scores(choices: Sequence[str], gold: int, lls: Sequence[float]) -> dict[str, float]:
    """ConfigurableTask.process_results for multiple_choice: argmax of the log-likelihoods, and of them
    divided by each choice's length in characters (the choice without the target delimiter)."""
    lls_arr = np.asarray(lls, dtype=np.float64)
    completion_len = np.array([float(len(c)) for c in choices])
    with np.errstate(divide="ignore", invalid="ignore"):
        pred_norm = int(np.argmax(lls_arr / completion_len))
    pred = int(np.argmax(lls_arr))
    return {"acc": 1.0 if pred == gold else 0.0, "acc_norm": 1.0 if pred_norm == gold else 0.0}


def loglikelihood_scores(ll: float, is_greedy: bool) -> dict[str, float]:
    """ConfigurableTask.process_results for output_type loglikelihood (lambada): the continuation's
    log-likelihood (aggregated to perplexity) and whether greedy decoding would have produced it (acc)."""
    return {"perplexity": ll, "acc": float(int(is_greedy))}


def aggregate(metric: str, values: Sequence[float]) -> float:
    """lm-eval's aggregations: `perplexity` is exp(-mean log-likelihood), every other metric the mean."""
    if not values:
        return float("nan")
    mean = sum(values) / len(values)
    return math.exp(-mean) if metric == "perplexity" else mean


def score_tasks(
    model, tokenizer: Tokenizer, tasks: Sequence[TaskRequests], batch_size: int = 32, show_progress: bool = True,
    per_item: dict[str, dict[str, list[float]]] | None = None,
) -> list[dict]:
    """Run built tasks through the model; one result row per task and metric.

    per_item, when given, receives every item's score: per_item[task][metric] lists them in item order (what
    per-category results and `rain compare` pair on).

    All tasks' requests go through one loglikelihood call, as lm-eval's evaluator sends them: shared
    batches and de-duplication across tasks, and the very same batches as RainLM gets from
    lm_eval.simple_evaluate on the same tasks (so the two agree to the last bit, not just to rounding).
    """
    flat, owner = [], []
    items = [item for task in tasks for item in task.items]
    for k, item in enumerate(items):
        flat += item.requests
        owner += [k] * len(item.requests)
    remaining = [len(item.requests) for item in items]
    desc = " ".join(f"{t.name}" for t in tasks) + (f" {tasks[0].n_shot}-shot" if tasks else "")
    bar = progress(total=len(items), desc=desc, unit="item", disable=None if show_progress else True)

    def on_done(indices: list[int]) -> None:
        finished = 0
        for i in indices:
            remaining[owner[i]] -= 1
            finished += remaining[owner[i]] == 0
        bar.update(finished)

    try:
        lls = loglikelihood(model, tokenizer, flat, batch_size, on_done=on_done)
    finally:
        bar.close()
    rows, at = [], 0
    for task in tasks:
        values: dict[str, list[float]] = {m: [] for m in task.metrics}
        for item in task.items:
            results = lls[at : at + len(item.requests)]
            at += len(item.requests)
            if task.output_type == "loglikelihood":
                scores = loglikelihood_scores(*results[0])
            else:
                scores = item_scores(item.choices, item.gold, [ll for ll, _ in results])
            for m in task.metrics:
                values[m].append(scores[m])
        if per_item is not None:
            per_item[task.name] = values
        rows += [
            {
                "task": task.name,
                "n_shot": task.n_shot,
                "metric": m,
                "value": aggregate(m, v),
                # lm-eval bootstraps perplexity's stderr (random resampling); rain reports none for it
                "stderr": None if m == "perplexity" else mean_stderr(v),
                "items": len(v),
                "fewshot_source": task.fewshot_source,
            }
            for m, v in values.items()
        ]
    return rows


def evaluate(
    model,
    tokenizer: Tokenizer,
    task_names: Sequence[str],
    shots: int = 0,
    limit: int | float | None = None,
    data_dir: str | Path | None = None,
    batch_size: int = 32,
    seed: int = FEWSHOT_SEED,
    show_progress: bool = True,
) -> list[dict]:
    """Evaluate tasks as lm-eval would: rows of task, n_shot, metric, value, stderr, items, fewshot_source.

    limit: the first N items of each task (a float below 1: that fraction). data_dir: local files laid out
    like shared/data/eval; None loads lm-eval's datasets from the Hugging Face hub.
    """
    for name in task_names:  # fail on a typo before loading anything
        get_task(name)
    tasks = [build_requests(name, shots=shots, limit=limit, data_dir=data_dir, seed=seed) for name in task_names]
    return score_tasks(model, tokenizer, tasks, batch_size, show_progress)
