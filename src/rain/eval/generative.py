"""Generative benchmarks as lm-evaluation-harness 0.4.x builds and scores them: GSM8K and HumanEval.

GSM8K (lm_eval/tasks/gsm8k/gsm8k.yaml): prompt "Question: {question}\\nAnswer:", 5 shots from train
(each shot followed by " " + its worked answer and "\\n\\n"), greedy decoding until "Question:", "</s>" or
"<|im_end|>"; two filters pull the answer out of the generation ("strict-match": the number after "#### ",
"flexible-extract": the last number) and `exact_match` compares it with the number after "#### " in the
reference, ignoring case, commas, "$" and a final ".".

HumanEval (lm_eval/tasks/humaneval/humaneval.yaml): the prompt is the function signature and docstring,
greedy decoding until a new top-level statement, up to 1,024 tokens; the program prompt + completion +
"\\n" + test + "\\ncheck(entry_point)" passes when it runs without error (pass@1 with one sample). It runs
model-written code, so it is off unless asked for (rain.eval.sandbox).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rain.errors import RainError
from rain.eval.sandbox import require_code_execution, run_program
from rain.eval.tasks import (
    FEWSHOT_DELIMITER,
    FEWSHOT_SEED,
    GENERATIVE_TASK_NAMES,
    TARGET_DELIMITER,
    FewshotSampler,
    _file_not_found,
    _qa_turn,
    _read_jsonl,
    _resolve_limit,
)

GSM8K_UNTIL = ("Question:", "</s>", "<|im_end|>")
GSM8K_SHOTS = 5  # the yaml's num_fewshot
GSM8K_FILTERS = {  # name: (regex, group_select), then take_first
    "strict-match": (r"#### (\-?[0-9\.\,]+)", 0),
    "flexible-extract": (r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1),
}
GSM8K_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")  # exact_match's regexes_to_ignore
HUMANEVAL_UNTIL = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
HUMANEVAL_MAX_GEN_TOKS = 1024
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default when a task sets none (gsm8k)
GENERATIVE_TASKS = GENERATIVE_TASK_NAMES


@dataclass
class GenItem:
    index: int
    doc: dict
    context: str
    until: tuple[str, ...]
    max_gen_toks: int


# ----------------------------------------------------------------------------- requests


def gsm8k_text(doc: dict) -> str:
    return f"Question: {doc['question']}\nAnswer:"


def gsm8k_items(data_dir: str | Path, shots: int = GSM8K_SHOTS, limit: float | None = None,
                seed: int = FEWSHOT_SEED) -> list[GenItem]:
    """gsm8k/test.jsonl evaluated, shots drawn from gsm8k/train.jsonl (lm-eval's fewshot_split: train)."""
    folder = Path(data_dir) / "gsm8k"
    docs = _checked(_read_jsonl(folder / "test.jsonl"), folder / "test.jsonl", ("question", "answer"))
    sampler = None
    if shots > 0:
        train = folder / "train.jsonl"
        if not train.is_file():
            raise _file_not_found(train, " (GSM8K's few-shot pool: the train split, e.g. shared corpus/gsm8k_train)")
        sampler = FewshotSampler(_checked(_read_jsonl(train), train, ("question", "answer")), seed)
    items = []
    for i, doc in enumerate(docs[: _resolve_limit(limit, len(docs))]):
        # fewshot_split (train) differs from test_split: lm-eval does not pass the evaluated doc to the sampler
        prefix = "".join(_qa_turn(gsm8k_text(d), None, d["answer"], TARGET_DELIMITER, FEWSHOT_DELIMITER)
                         for d in (sampler.sample(shots) if sampler else []))
        items.append(GenItem(i, doc, prefix + gsm8k_text(doc), GSM8K_UNTIL, DEFAULT_MAX_GEN_TOKS))
    return items


def humaneval_items(data_dir: str | Path, limit: float | None = None) -> list[GenItem]:
    """humaneval/HumanEval.jsonl.gz (OpenAI's file; lm-eval's openai/openai_humaneval has the same fields)."""
    path = Path(data_dir) / "humaneval" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise _file_not_found(path)
    try:
        docs = [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()
                if line.strip()]
    except (OSError, ValueError) as exc:
        raise RainError(f"{path}: not a gzipped jsonl file ({exc})") from None
    docs = _checked(docs, path, ("task_id", "prompt", "test", "entry_point"))
    return [GenItem(i, d, d["prompt"], HUMANEVAL_UNTIL, HUMANEVAL_MAX_GEN_TOKS)
            for i, d in enumerate(docs[: _resolve_limit(limit, len(docs))])]


def _checked(docs: list[dict], where: Path, fields: tuple[str, ...]) -> list[dict]:
    if not docs:
        raise RainError(f"{where}: no items")
    for i, d in enumerate(docs):
        missing = [k for k in fields if k not in d]
        if missing:
            raise RainError(f"{where}: item {i + 1} has no {', '.join(missing)} field")
    return docs


# ----------------------------------------------------------------------------- generation


def greedy_until(model, tokenizer, context: str, until: Sequence[str], max_gen_toks: int) -> str:
    """Greedy decoding until an `until` string, EOT, max_gen_toks or the context ends (as HFLM's
    generate_until: room is made for the generation by cutting the prompt from the left, and the text is
    cut at the first stop string)."""
    from rain.model.generate import stream

    max_len = model.cfg.context
    max_gen = max(1, min(int(max_gen_toks), max_len - 1))
    ids = tokenizer.encode(context) or [tokenizer.eot_id]
    ids = ids[-(max_len - max_gen):]
    until = [u for u in until if u]
    gen: list[int] = []
    for token in stream(model, ids, max_new_tokens=max_gen, temperature=0.0, stop_ids=(tokenizer.eot_id,),
                        vocab_limit=tokenizer.vocab_size):
        gen.append(token)
        if until and any(u in tokenizer.decode(gen) for u in until):
            break
    text = tokenizer.decode(gen)
    for u in until:
        text = text.split(u)[0]
    return text


def generate(model, tokenizer, items: Sequence[GenItem], max_gen_toks: int | None = None) -> list[str]:
    return [greedy_until(model, tokenizer, it.context, it.until, max_gen_toks or it.max_gen_toks) for it in items]


# ----------------------------------------------------------------------------- scoring


def regex_extract(response: str, pattern: str, group_select: int, fallback: str = "[invalid]") -> str:
    """lm_eval.filters.extraction.RegexFilter on one response."""
    match = re.findall(pattern, response)
    if not match:
        return fallback
    match = match[group_select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), fallback)
    return match.strip()


def exact_match(prediction: str, reference: str) -> float:
    """lm-eval's exact_match with gsm8k's settings: regexes_to_ignore stripped from both, case ignored."""
    for pattern in GSM8K_IGNORE:
        prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
    return 1.0 if prediction.lower() == reference.lower() else 0.0


def gsm8k_scores(responses: Sequence[str], items: Sequence[GenItem]) -> dict[str, list[float]]:
    """exact_match per filter ("strict-match", "flexible-extract"), one value per item."""
    return {name: [exact_match(regex_extract(r, pattern, group), it.doc["answer"]) for r, it in zip(responses, items)]
            for name, (pattern, group) in GSM8K_FILTERS.items()}


def humaneval_program(item: GenItem, completion: str) -> str:
    # utils.build_predictions: prompt + completion; code_eval appends "\n" + the reference (doc_to_target).
    doc = item.doc
    return doc["prompt"] + completion + "\n" + f"{doc['test']}\ncheck({doc['entry_point']})"


# code_eval's default: a program still running after 3 s fails (rain's clock also counts the ~0.05 s it takes
# the sandbox's interpreter to start).
HUMANEVAL_TIMEOUT = 3.0


def humaneval_scores(completions: Sequence[str], items: Sequence[GenItem], allow_code_execution: bool = False,
                     timeout: float = HUMANEVAL_TIMEOUT) -> list[float]:
    """pass@1 per item (one greedy sample: passed or not), each program run in rain's sandbox."""
    require_code_execution(allow_code_execution)
    return [1.0 if run_program(humaneval_program(it, c), timeout=timeout).passed else 0.0
            for c, it in zip(completions, items)]


# ----------------------------------------------------------------------------- whole tasks


def evaluate_generative(model, tokenizer, name: str, data_dir: str | Path, shots: int | None = None,
                        limit: float | None = None, max_gen_toks: int | None = None,
                        allow_code_execution: bool = False, seed: int = FEWSHOT_SEED) -> list[dict]:
    """Rows shaped like multiple_choice.evaluate's: gsm8k gives exact_match under each filter (metric
    "exact_match,strict-match" / "exact_match,flexible-extract", lm-eval's result keys), humaneval pass@1.

    shots: gsm8k's default is the yaml's 5; humaneval is 0-shot only. max_gen_toks overrides the task's."""
    from rain.eval.multiple_choice import mean_stderr

    if name not in GENERATIVE_TASKS:
        raise RainError(f"unknown generative task {name!r}: choose from {', '.join(GENERATIVE_TASKS)}")
    if name == "humaneval":
        require_code_execution(allow_code_execution)  # before any generating
        if shots:
            raise RainError("humaneval is 0-shot (lm-eval's num_fewshot: 0)")
        items, source = humaneval_items(data_dir, limit), None
    else:
        shots = GSM8K_SHOTS if shots is None else shots
        items, source = gsm8k_items(data_dir, shots, limit, seed), ("train" if shots else None)
    completions = generate(model, tokenizer, items, max_gen_toks)
    if name == "humaneval":
        per_metric = {"pass@1": humaneval_scores(completions, items, allow_code_execution=True)}
    else:
        per_metric = {f"exact_match,{f}": v for f, v in gsm8k_scores(completions, items).items()}
    return [{"task": name, "n_shot": shots or 0, "metric": m, "value": sum(v) / len(v), "stderr": mean_stderr(v),
             "items": len(v), "fewshot_source": source} for m, v in per_metric.items()]
