"""Multiple-choice benchmarks exactly as lm-evaluation-harness 0.4.x builds them.

Each task turns a document into lm-eval's loglikelihood requests: (context, continuation) pairs, one per
choice. The prompt templates (`doc_to_text` / `doc_to_choice` / `doc_to_target`), the target delimiter " ",
the few-shot delimiter "\\n\\n", HellaSwag's preprocessing and WinoGrande's partial scoring are copied from
lm_eval/tasks/{arc,hellaswag,piqa,winogrande}; few-shot examples are drawn the way lm_eval/api/samplers.py
draws them (one `random.Random(1234)` per task, consumed document by document in order).

Documents come from local files (`data_dir`, laid out like shared/data/eval) or, without a data_dir, from
the Hugging Face hub with `datasets.load_dataset` (the datasets lm-eval uses). Both give plain dicts with the
same fields, and everything after loading is one code path.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rain.errors import RainError
from rain.files import jsonl_records

FEWSHOT_SEED = 1234  # lm-eval's default `fewshot_random_seed`
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"


# ----------------------------------------------------------------------------- prompt formats (lm-eval)


def _arc_text(doc: dict) -> str:
    return f"Question: {doc['question']}\nAnswer:"


def _arc_choices(doc: dict) -> list[str]:
    return list(doc["choices"]["text"])


def _arc_target(doc: dict) -> int:
    # "{{choices.label.index(answerKey)}}"; a key missing from the labels makes lm-eval's template raise.
    labels = list(doc["choices"]["label"])
    if doc["answerKey"] not in labels:
        raise RainError(f"ARC item {doc.get('id', '?')}: answerKey {doc['answerKey']!r} is not one of {labels}")
    return labels.index(doc["answerKey"])


def hellaswag_preprocess(text: str) -> str:
    """lm_eval/tasks/hellaswag/utils.py: preprocess."""
    text = text.strip()
    # NOTE: Brackets are artifacts of the WikiHow dataset portion of HellaSwag.
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def _hellaswag_process(doc: dict) -> dict:
    # lm-eval's process_docs is a `Dataset.map`, which adds these fields next to the original ones; we keep
    # the originals too so that few-shot exclusion (dict equality, see FewshotSampler) compares the same dicts.
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        **doc,
        "query": hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
        "choices": [hellaswag_preprocess(ending) for ending in doc["endings"]],
        "gold": int(doc["label"]),
    }


def _hellaswag_text(doc: dict) -> str:
    return doc["query"]


def _hellaswag_choices(doc: dict) -> list[str]:
    return list(doc["choices"])


def _hellaswag_target(doc: dict) -> int:
    return int(doc["label"])  # "{{label}}" renders "0".."3", which lm-eval literal_evals to an int


def _piqa_text(doc: dict) -> str:
    return f"Question: {doc['goal']}\nAnswer:"


def _piqa_choices(doc: dict) -> list[str]:
    return [doc["sol1"], doc["sol2"]]


def _piqa_target(doc: dict) -> int:
    return int(doc["label"])


def _winogrande_text(doc: dict) -> int:
    # Partial scoring: the "text" is the index of the right option; the choices are the contexts.
    answer = {"1": 0, "2": 1}.get(doc["answer"])
    if answer is None:
        raise RainError(f"winogrande item {doc.get('qID', '?')}: answer must be '1' or '2', got {doc['answer']!r}")
    return answer


def _winogrande_choices(doc: dict) -> list[str]:
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]


def _winogrande_target(doc: dict) -> str:
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def _openbookqa_text(doc: dict) -> str:
    return doc["question_stem"]


def _openbookqa_target(doc: dict) -> int:
    # "{{choices.label.index(answerKey.lstrip())}}"
    labels, key = list(doc["choices"]["label"]), doc["answerKey"].lstrip()
    if key not in labels:
        raise RainError(f"openbookqa item {doc.get('id', '?')}: answerKey {key!r} is not one of {labels}")
    return labels.index(key)


def _openbookqa_from_mosaic(doc: dict) -> dict:
    """MosaicML's ICL jsonl (query, choices, gold) -> the fields of HF allenai/openbookqa that lm-eval reads.

    Rows already in HF's fields (the validation pool) keep just those, so both splits share one schema."""
    if "question_stem" in doc:
        return {k: doc[k] for k in ("question_stem", "choices", "answerKey")}
    labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
    gold = doc["gold"]
    if not (isinstance(gold, int) and 0 <= gold < len(labels)):
        raise RainError(f"openbookqa item {doc['query'][:40]!r}: gold must be an index into choices, got {gold!r}")
    return {"question_stem": doc["query"], "choices": {"text": list(doc["choices"]), "label": labels},
            "answerKey": labels[gold]}


def _boolq_text(doc: dict) -> str:
    return f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:"


def _boolq_choices(doc: dict) -> list[str]:
    return ["no", "yes"]


def _boolq_target(doc: dict) -> int:
    return int(doc["label"])


def _boolq_from_olmo(doc: dict) -> dict:
    # OLMo's copy keeps BoolQ's original `answer` (bool); super_glue (what lm-eval reads) names it `label` (0/1).
    return doc if "label" in doc or "answer" not in doc else {**doc, "label": int(bool(doc["answer"]))}


def _lambada_text(doc: dict) -> str:
    return " ".join(doc["text"].split(" ")[:-1])  # "{{text.split(' ')[:-1]|join(' ')}}"


def _lambada_target(doc: dict) -> str:
    return " " + doc["text"].split(" ")[-1]  # "{{' '+text.split(' ')[-1]}}": the delimiter is in the target


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class TaskSpec:
    name: str
    hf_path: str  # the dataset lm-eval loads
    hf_name: str | None
    eval_split: str  # lm-eval evaluates the test split when the task has one, else validation
    has_test_split: bool
    doc_to_text: Callable[[dict], Any]
    doc_to_choice: Callable[[dict], list[str]]
    doc_to_target: Callable[[dict], Any]
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    multiple_input: bool = False  # winogrande: one context per option, one shared continuation
    process: Callable[[dict], dict] | None = None
    required: tuple[str, ...] = ()  # fields every raw document must have
    lm_eval_yaml: str = ""  # lm_eval/tasks/<this>, used by rain.eval.harness for local runs
    # "multiple_choice": one request per choice, acc/acc_norm; "loglikelihood" (lambada): one request,
    # the continuation's log-likelihood (perplexity) and whether it is the greedy output (acc)
    output_type: str = "multiple_choice"

    @property
    def exclude_eval_doc(self) -> bool:
        # lm-eval passes the evaluated doc to the sampler (which then draws n+1 and drops it) only when
        # `fewshot_split == test_split`. None of these tasks sets fewshot_split, so that holds exactly for
        # the tasks without a test split (hellaswag, piqa, winogrande), not for ARC.
        return not self.has_test_split


_ARC = dict(
    hf_path="allenai/ai2_arc",
    eval_split="test",
    has_test_split=True,
    doc_to_text=_arc_text,
    doc_to_choice=_arc_choices,
    doc_to_target=_arc_target,
    required=("question", "choices", "answerKey"),
)

TASKS: dict[str, TaskSpec] = {
    "arc_easy": TaskSpec(name="arc_easy", hf_name="ARC-Easy", lm_eval_yaml="arc/arc_easy.yaml", **_ARC),
    "arc_challenge": TaskSpec(
        name="arc_challenge", hf_name="ARC-Challenge", lm_eval_yaml="arc/arc_challenge.yaml", **_ARC
    ),
    "hellaswag": TaskSpec(
        name="hellaswag",
        hf_path="Rowan/hellaswag",
        hf_name=None,
        eval_split="validation",
        has_test_split=False,
        doc_to_text=_hellaswag_text,
        doc_to_choice=_hellaswag_choices,
        doc_to_target=_hellaswag_target,
        process=_hellaswag_process,
        required=("activity_label", "ctx_a", "ctx_b", "endings", "label"),
        lm_eval_yaml="hellaswag/hellaswag.yaml",
    ),
    "piqa": TaskSpec(
        name="piqa",
        hf_path="baber/piqa",
        hf_name=None,
        eval_split="validation",
        has_test_split=False,
        doc_to_text=_piqa_text,
        doc_to_choice=_piqa_choices,
        doc_to_target=_piqa_target,
        required=("goal", "sol1", "sol2", "label"),
        lm_eval_yaml="piqa/piqa.yaml",
    ),
    "winogrande": TaskSpec(
        name="winogrande",
        hf_path="allenai/winogrande",
        hf_name="winogrande_xl",
        eval_split="validation",
        has_test_split=False,
        doc_to_text=_winogrande_text,
        doc_to_choice=_winogrande_choices,
        doc_to_target=_winogrande_target,
        metrics=("acc",),
        multiple_input=True,
        required=("sentence", "option1", "option2", "answer"),
        lm_eval_yaml="winogrande/default.yaml",
    ),
    "openbookqa": TaskSpec(
        name="openbookqa",
        hf_path="allenai/openbookqa",
        hf_name="main",
        eval_split="test",
        has_test_split=True,
        doc_to_text=_openbookqa_text,
        doc_to_choice=_arc_choices,  # "{{choices.text}}"
        doc_to_target=_openbookqa_target,
        required=("question_stem", "choices", "answerKey"),
        lm_eval_yaml="openbookqa/openbookqa.yaml",
    ),
    "boolq": TaskSpec(
        name="boolq",
        hf_path="aps/super_glue",
        hf_name="boolq",
        eval_split="validation",
        has_test_split=False,
        doc_to_text=_boolq_text,
        doc_to_choice=_boolq_choices,
        doc_to_target=_boolq_target,
        metrics=("acc",),
        required=("passage", "question", "label"),
        lm_eval_yaml="super_glue/boolq/default.yaml",
    ),
    "lambada_openai": TaskSpec(
        name="lambada_openai",
        hf_path="EleutherAI/lambada_openai",
        hf_name="default",
        eval_split="test",
        has_test_split=True,
        doc_to_text=_lambada_text,
        doc_to_choice=lambda doc: [],
        doc_to_target=_lambada_target,
        metrics=("perplexity", "acc"),
        required=("text",),
        lm_eval_yaml="lambada/lambada_openai.yaml",
        output_type="loglikelihood",
    ),
}

TASK_NAMES: tuple[str, ...] = tuple(TASKS)


# Scored by generating text (rain.eval.generative), not by these loglikelihood requests.
GENERATIVE_TASK_NAMES: tuple[str, ...] = ("gsm8k", "humaneval")


def get_task(name: str) -> TaskSpec:
    if name in GENERATIVE_TASK_NAMES:
        raise RainError(f"{name} is a generative task: `rain eval --tasks {name} --eval-data DIR` (or "
                        "rain.eval.generative.evaluate_generative) generates and scores it; "
                        f"the loglikelihood tasks are {', '.join(TASK_NAMES)}")
    if name not in TASKS:
        raise RainError(f"unknown eval task {name!r}: choose from {', '.join(TASK_NAMES)} "
                        f"(generative: {', '.join(GENERATIVE_TASK_NAMES)})")
    return TASKS[name]


# ----------------------------------------------------------------------------- where benchmark files live

EVAL_DATA_ENV = "RAIN_EVAL_DATA"
EVAL_DATA_LAYOUT = (
    "hellaswag/*.arrow + state.json (a datasets save_to_disk folder), arc/ARC-Easy-test.jsonl + ARC-Easy-train.jsonl "
    "(ARC-Challenge-* likewise), piqa/valid.jsonl + valid-labels.lst, winogrande/dev.jsonl + train_l.jsonl "
    "(or train_xl.jsonl), openbookqa/openbook_qa_test_mosaic.jsonl + validation_hf/*.arrow, "
    "boolq/validation_hf/*.arrow, lambada_openai/lambada_test.jsonl; generative: gsm8k/test.jsonl + train.jsonl, "
    "humaneval/HumanEval.jsonl.gz"
)


def eval_data_cache() -> Path:
    """The user cache folder for benchmark files: $XDG_CACHE_HOME/rain/eval, default ~/.cache/rain/eval."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # the XDG spec ignores relative paths
    return base / "rain" / "eval"


def eval_data_hint() -> str:
    """Where `rain eval` looks for benchmark files and how a folder of them is laid out (for error messages)."""
    return (f"rain eval reads benchmark files from --eval-data DIR, else ${EVAL_DATA_ENV}, else {eval_data_cache()} "
            f"when it exists, else the Hugging Face hub; a folder of them holds {EVAL_DATA_LAYOUT}")


def _file_not_found(path: Path, note: str = "") -> RainError:
    return RainError(f"{path}: file not found{note}; {eval_data_hint()}")


# ----------------------------------------------------------------------------- local files


@dataclass
class LocalFiles:
    """Where a task's documents live under a data_dir (layout of shared/data/eval)."""

    eval: list[Path]  # jsonl (one file) or hellaswag's arrow shards
    eval_labels: Path | None  # one label per line, aligned with the eval file
    labels_required: bool  # piqa's jsonl carries no labels; winogrande's does (the .lst is a check)
    pool: list[Path] | None  # few-shot source; None: the eval split itself, minus the evaluated item
    pool_labels: Path | None
    pool_source: str  # what to report as fewshot_source
    fmt: str  # "jsonl" | "arrow"
    label_field: str  # field the label file fills
    label_type: type
    convert: Callable[[dict], dict] | None = None  # raw record (eval and pool) -> lm-eval's (HF dataset's) fields
    pool_fmt: str | None = None  # the pool's format when it differs from the eval file's
    rewrite_for_lm_eval: bool = False  # lm-eval cannot read these files as they are: hand it converted jsonl


def local_files(name: str, data_dir: str | Path) -> LocalFiles:
    spec = get_task(name)
    root = Path(data_dir)
    if spec.name.startswith("arc_"):
        sub = "ARC-Easy" if spec.name == "arc_easy" else "ARC-Challenge"
        return LocalFiles(
            eval=[root / "arc" / f"{sub}-test.jsonl"],
            eval_labels=None,
            labels_required=False,
            pool=[root / "arc" / f"{sub}-train.jsonl"],
            pool_labels=None,
            pool_source="train",
            fmt="jsonl",
            label_field="answerKey",
            label_type=str,
        )
    if spec.name == "hellaswag":
        folder = root / "hellaswag"
        return LocalFiles(
            eval=_arrow_shards(folder),
            eval_labels=None,
            labels_required=False,
            pool=None,  # HellaSwag train (lm-eval's few-shot split) is not available offline
            pool_labels=None,
            pool_source="validation minus the item (lm-eval: train)",
            fmt="arrow",
            label_field="label",
            label_type=str,
        )
    if spec.name == "piqa":
        folder = root / "piqa"
        train, train_labels = folder / "train.jsonl", folder / "train-labels.lst"
        has_train = train.is_file() and train_labels.is_file()
        return LocalFiles(
            eval=[folder / "valid.jsonl"],
            eval_labels=folder / "valid-labels.lst",
            labels_required=True,
            pool=[train] if has_train else None,
            pool_labels=train_labels if has_train else None,
            pool_source="train" if has_train else "validation minus the item (lm-eval: train)",
            fmt="jsonl",
            label_field="label",
            label_type=int,
            rewrite_for_lm_eval=True,  # lm-eval's piqa reads `label` from each row, not a separate .lst
        )
    if spec.name == "winogrande":
        folder = root / "winogrande"
        # lm-eval's few-shot split is winogrande_xl train (= train_xl.jsonl); train_l is a subset of it, so
        # with train_l the pool, and hence the shots, differ from lm-eval's.
        pool_name = "train_xl" if (folder / "train_xl.jsonl").is_file() else "train_l"
        pool_labels = folder / f"{pool_name}-labels.lst"
        return LocalFiles(
            eval=[folder / "dev.jsonl"],
            eval_labels=folder / "dev-labels.lst",
            labels_required=False,
            pool=[folder / f"{pool_name}.jsonl"],
            pool_labels=pool_labels if pool_labels.is_file() else None,
            pool_source="train" if pool_name == "train_xl" else "train_l (lm-eval: train_xl)",
            fmt="jsonl",
            label_field="answer",
            label_type=str,
        )
    if spec.name == "openbookqa":
        # lm-eval scores the test split (MosaicML's copy here) with shots from train, which is not in
        # shared/data; the validation split (disjoint from test) stands in as the pool.
        folder = root / "openbookqa"
        return LocalFiles(
            eval=[folder / "openbook_qa_test_mosaic.jsonl"],
            eval_labels=None,
            labels_required=False,
            pool=_arrow_shards(folder / "validation_hf"),
            pool_labels=None,
            pool_source="validation (lm-eval: train)",
            fmt="jsonl",
            label_field="answerKey",
            label_type=str,
            convert=_openbookqa_from_mosaic,
            pool_fmt="arrow",
            rewrite_for_lm_eval=True,
        )
    if spec.name == "boolq":
        return LocalFiles(
            eval=_arrow_shards(root / "boolq" / "validation_hf"),
            eval_labels=None,
            labels_required=False,
            pool=None,  # BoolQ train (lm-eval's few-shot split) is not in shared/data
            pool_labels=None,
            pool_source="validation minus the item (lm-eval: train)",
            fmt="arrow",
            label_field="label",
            label_type=int,
            convert=_boolq_from_olmo,
            rewrite_for_lm_eval=True,
        )
    if spec.name == "lambada_openai":
        return LocalFiles(
            eval=[root / "lambada_openai" / "lambada_test.jsonl"],
            eval_labels=None,
            labels_required=False,
            pool=None,  # lambada_openai has only a test split; lm-eval then draws shots from it too
            pool_labels=None,
            pool_source="test (as lm-eval)",
            fmt="jsonl",
            label_field="text",
            label_type=str,
        )
    raise AssertionError(name)  # pragma: no cover - every registered task is handled above


def _arrow_shards(folder: Path) -> list[Path]:
    """A `datasets.save_to_disk` folder: its shards in the order state.json lists them."""
    state = folder / "state.json"
    if state.is_file():
        try:
            names = [f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        except (ValueError, KeyError, TypeError):
            raise RainError(f"{state}: not a datasets state.json (no _data_files list)") from None
        return [folder / n for n in names]
    shards = sorted(folder.glob("*.arrow"))
    return shards or [folder / "data-00000-of-00001.arrow"]  # a path that does not exist: reported later


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise _file_not_found(path)
    docs = []
    for where, doc in jsonl_records(path.read_text(encoding="utf-8"), lambda n: f"{path}:{n}"):
        if not isinstance(doc, dict):
            raise RainError(f"{where}: expected a JSON object, got {type(doc).__name__}")
        docs.append(doc)
    return docs


def _read_arrow(paths: list[Path]) -> list[dict]:
    import pyarrow as pa

    docs = []
    for path in paths:
        if not path.is_file():
            raise _file_not_found(path)
        try:
            table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            raise RainError(f"{path}: not an Arrow IPC stream (a datasets save_to_disk shard): {exc}") from None
        docs.extend(table.to_pylist())
    return docs


def _read_labels(path: Path, n: int, cast: type) -> list:
    if not path.is_file():
        raise _file_not_found(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != n:
        raise RainError(f"{path}: {len(lines)} labels for {n} items: the label file must have one line per item")
    try:
        return [cast(line.strip()) for line in lines]
    except ValueError:
        raise RainError(f"{path}: labels must be {cast.__name__}s, one per line") from None


def _load_split(
    files: list[Path], labels: Path | None, labels_required: bool, lf: LocalFiles, fmt: str | None = None
) -> list[dict]:
    docs = _read_arrow(files) if (fmt or lf.fmt) == "arrow" else _read_jsonl(files[0])
    if labels is not None and labels.is_file():
        values = _read_labels(labels, len(docs), lf.label_type)
        for i, (doc, value) in enumerate(zip(docs, values)):
            if lf.label_field in doc and doc[lf.label_field] != value:
                raise RainError(
                    f"{labels}: line {i + 1} says {value!r} but item {i + 1} of {files[0]} has "
                    f"{lf.label_field}={doc[lf.label_field]!r}"
                )
            doc[lf.label_field] = value
    elif labels_required:
        raise _file_not_found(labels, f" (labels for {files[0]})")
    if lf.convert is not None:
        try:
            docs = [lf.convert(d) for d in docs]
        except (KeyError, TypeError) as exc:
            raise RainError(f"{files[0]}: an item lacks the field {exc} or has the wrong type") from None
    return docs


def _check_fields(spec: TaskSpec, docs: list[dict], where: str) -> None:
    for i, doc in enumerate(docs):
        missing = [k for k in spec.required if k not in doc]
        if missing:
            raise RainError(f"{where}: item {i + 1} has no {', '.join(missing)} field ({spec.name} format)")
    if not docs:
        raise RainError(f"{where}: no items")


# ----------------------------------------------------------------------------- loading


@dataclass
class TaskData:
    spec: TaskSpec
    docs: list[dict]  # evaluated split, processed like lm-eval's process_docs
    pool: list[dict] | None  # few-shot pool (processed); None when not loaded (0-shot)
    pool_source: str | None


def load_task(name: str, data_dir: str | Path | None = None, need_pool: bool = True) -> TaskData:
    """The evaluated documents and (if need_pool) the few-shot pool of a task, from data_dir or the hub."""
    spec = get_task(name)
    if data_dir is None:
        docs, pool, source = _load_hub(spec, need_pool)
    else:
        lf = local_files(name, data_dir)
        docs = _load_split(lf.eval, lf.eval_labels, lf.labels_required, lf)
        _check_fields(spec, docs, str(lf.eval[0]))
        pool, source = None, None
        if need_pool:
            source = lf.pool_source
            if lf.pool is None:
                pool = docs
            else:
                pool = _load_split(lf.pool, lf.pool_labels, lf.labels_required, lf, lf.pool_fmt)
                _check_fields(spec, pool, str(lf.pool[0]))
    if spec.process is not None:
        processed = [spec.process(d) for d in docs]
        pool = (processed if pool is docs else [spec.process(d) for d in pool]) if pool is not None else None
        docs = processed
    return TaskData(spec=spec, docs=docs, pool=pool, pool_source=source)


def _load_hub(spec: TaskSpec, need_pool: bool) -> tuple[list[dict], list[dict] | None, str | None]:
    try:
        import datasets
    except ImportError:
        raise RainError(
            f"{spec.name}: no local benchmark files and `datasets` (to load them from the hub) is not installed: "
            f"pip install 'rain[hf]'; {eval_data_hint()}"
        ) from None
    try:
        ds = datasets.load_dataset(spec.hf_path, spec.hf_name)
    except Exception as exc:  # offline, unknown repo, network errors: all the same to the user
        msg = " ".join(str(exc).split())[:200]
        raise RainError(
            f"{spec.name}: cannot load {spec.hf_path} from the Hugging Face hub ({type(exc).__name__}: {msg}); "
            f"{eval_data_hint()}"
        ) from None
    docs = [dict(d) for d in ds[spec.eval_split]]
    pool_split = "train" if "train" in ds else spec.eval_split  # lambada_openai: test only, as lm-eval
    pool = (docs if pool_split == spec.eval_split else [dict(d) for d in ds[pool_split]]) if need_pool else None
    _check_fields(spec, docs, f"{spec.hf_path}[{spec.eval_split}]")
    return docs, pool, (pool_split if need_pool else None)


# ----------------------------------------------------------------------------- few-shot sampling


class FewshotSampler:
    """lm_eval.api.samplers.ContextSampler: one Random for the whole task, consumed item by item.

    With an eval doc it draws n + 1 and drops every pool entry equal to the doc (dict equality), keeping
    the first n; if duplicates left fewer than n it redraws n from the pool without the doc.
    """

    def __init__(self, pool: list[dict], seed: int = FEWSHOT_SEED):
        self.pool = pool
        self.rnd = random.Random(seed)

    def sample(self, n: int, eval_doc: dict | None = None) -> list[dict]:
        if n == 0:
            return []
        need = n + (1 if eval_doc else 0)
        if need > len(self.pool):
            raise RainError(f"{n}-shot needs {need} few-shot examples but the pool has only {len(self.pool)}")
        if not eval_doc:
            return self.rnd.sample(self.pool, n)
        res = [x for x in self.rnd.sample(self.pool, n + 1) if x != eval_doc][:n]
        if len(res) < n:
            res = self.rnd.sample([x for x in self.pool if x != eval_doc], n)
        return res


def _qa_turn(q: str, c: list[str] | None, a: Any, tgt_delim: str, few_delim: str) -> str:
    """ConfigurableTask.build_qa_turn rendered as plain text (no chat template, no gen_prefix)."""
    has_answer = a is not None and a != ""
    text = q + (tgt_delim if has_answer else "")
    if has_answer:
        answer = c[a] if (c and isinstance(a, int)) else a[0] if isinstance(a, list) else a
        text += answer + few_delim
    return text


def fewshot_prefix(spec: TaskSpec, shots: list[dict]) -> str:
    parts = []
    for doc in shots:
        q, c, a = spec.doc_to_text(doc), spec.doc_to_choice(doc), spec.doc_to_target(doc)
        if spec.multiple_input:
            q, c = c[q], None
        parts.append(_qa_turn(q, c, a, TARGET_DELIMITER, FEWSHOT_DELIMITER))
    return "".join(parts)


# ----------------------------------------------------------------------------- requests


@dataclass
class Item:
    index: int  # position in the evaluated split
    doc: dict
    requests: list[tuple[str, str]]  # (context, continuation) per choice: lm-eval's Instance.arguments
    choices: list[str]  # doc_to_choice (their character lengths normalise acc_norm)
    gold: int  # index of the right choice; -100 when out of range (scored wrong, as lm-eval does)
    # loglikelihood tasks (lambada): one request, no choices, gold unused


@dataclass
class TaskRequests:
    name: str
    n_shot: int
    metrics: tuple[str, ...]
    items: list[Item] = field(default_factory=list)
    fewshot_source: str | None = None  # None at 0-shot
    output_type: str = "multiple_choice"


def make_item(spec: TaskSpec, index: int, doc: dict, shots: list[dict]) -> Item:
    prefix = fewshot_prefix(spec, shots)
    choices = spec.doc_to_choice(doc)
    if spec.output_type == "loglikelihood":
        # lm-eval: arguments = (ctx, doc_to_target(doc)); the target carries its own leading space.
        return Item(index=index, doc=doc, requests=[(prefix + spec.doc_to_text(doc), spec.doc_to_target(doc))],
                    choices=[], gold=-100)
    if spec.multiple_input:
        cont = spec.doc_to_target(doc)
        requests = [(prefix + ctx, TARGET_DELIMITER + cont) for ctx in choices]
        gold = spec.doc_to_text(doc)
    else:
        ctx = prefix + spec.doc_to_text(doc)
        requests = [(ctx, TARGET_DELIMITER + choice) for choice in choices]
        gold = spec.doc_to_target(doc)
    if not (isinstance(gold, int) and 0 <= gold < len(choices)):
        gold = -100
    return Item(index=index, doc=doc, requests=requests, choices=choices, gold=gold)


def _resolve_limit(limit: int | float | None, n: int) -> int:
    # lm-eval's get_sample_size: a float below 1 is a fraction of the split, anything else a count.
    if limit is None:
        return n
    if limit < 1.0:
        return min(n, int(math.ceil(n * limit)))
    return min(n, int(limit))


def build_requests(
    name: str,
    shots: int = 0,
    limit: int | float | None = None,
    data_dir: str | Path | None = None,
    seed: int = FEWSHOT_SEED,
    data: TaskData | None = None,
) -> TaskRequests:
    """Items of the first `limit` documents with their k-shot requests, as lm-eval builds them.

    `data` (from load_task, with its pool when shots > 0) skips reloading the files for repeated builds.
    """
    if shots < 0:
        raise RainError(f"shots must be >= 0, got {shots}")
    if data is not None and data.spec.name != name:
        raise ValueError(f"data was loaded for {data.spec.name}, not {name}")
    data = data or load_task(name, data_dir, need_pool=shots > 0)
    spec = data.spec
    n = _resolve_limit(limit, len(data.docs))
    sampler = FewshotSampler(data.pool or [], seed) if shots > 0 else None
    out = TaskRequests(
        name=spec.name, n_shot=shots, metrics=spec.metrics, fewshot_source=data.pool_source if shots else None,
        output_type=spec.output_type,
    )
    for i, doc in enumerate(data.docs[:n]):
        fs = sampler.sample(shots, doc if spec.exclude_eval_doc else None) if sampler else []
        out.items.append(make_item(spec, i, doc, fs))
    return out
