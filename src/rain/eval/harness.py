"""lm-evaluation-harness adapter: run any lm-eval task on a rain model.

    from rain.eval.harness import RainLM
    import lm_eval
    lm_eval.simple_evaluate(model=RainLM(model, tokenizer), tasks=["hellaswag"])

Offline, `harness_evaluate(..., data_dir=...)` writes task configs that include lm-eval's own yamls and
only swap the dataset for the local files (lm-eval's prompts, metrics and sampler are used unchanged).

lm-eval is an optional extra (`pip install 'rain[eval]'`); only this module imports it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Sequence

from rain.data.tokenizer import Tokenizer
from rain.errors import RainError
from rain.eval.multiple_choice import score_tokens
from rain.eval.tasks import FEWSHOT_SEED, get_task, load_task, local_files

try:
    import lm_eval
    from lm_eval.api.model import TemplateLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise RainError("the lm-eval adapter needs lm-eval: pip install 'rain[eval]'") from exc


class RainLM(TemplateLM):
    """A rain Transformer + Tokenizer as an lm-eval LM.

    It subclasses TemplateLM (an `lm_eval.api.model.LM`), so `loglikelihood` is lm-eval's own: its
    _encode_pair tokenisation and empty-context handling, then `_loglikelihood_tokens` below scores the
    token pairs with rain's scorer (the same one `rain.eval.multiple_choice.evaluate` uses).
    """

    backend = "causal"

    def __init__(self, model, tokenizer: Tokenizer, batch_size: int = 32, max_gen_toks: int = 256):
        super().__init__()
        self.model = model
        self.rain_tokenizer = tokenizer  # not `self.tokenizer`: lm-eval reads HF tokenizer fields from that
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)

    # ------------------------------------------------------------------ TemplateLM interface
    @property
    def eot_token_id(self) -> int:
        return self.rain_tokenizer.eot_id

    @property
    def max_length(self) -> int:
        return self.model.cfg.context

    @property
    def device(self):
        return next(self.model.parameters()).device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.rain_tokenizer.encode(string)  # rain's tokenizer adds no BOS/special tokens

    def tok_decode(self, tokens: Sequence[int], **kwargs) -> str:
        return self.rain_tokenizer.decode(list(tokens))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        res = score_tokens(self.model, [(ctx, cont) for _, ctx, cont in requests], self.batch_size)
        for (request_str, _, _), answer in zip(requests, res):
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return res

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Sum of log-probs of each whole string in disjoint windows of the model's context (as HFLM)."""
        windows, counts = [], []
        for (string,) in [req.args for req in requests]:
            w = [
                make_disjoint_window(pair)
                for pair in get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.eot_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            windows += w
            counts.append(len(w))
        scores = score_tokens(self.model, windows, self.batch_size) if windows else []
        out, at = [], 0
        for req, n in zip(requests, counts):
            total = sum(ll for ll, _ in scores[at : at + n])
            at += n
            self.cache_hook.add_partial("loglikelihood_rolling", tuple(req.args), total)
            out.append(total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding until an `until` string, EOT, max_gen_toks or the context ends.

        Sampling options (do_sample, temperature) are ignored: generation is always greedy.
        """
        from rain.eval.generative import greedy_until

        out = []
        for req in requests:
            context, gen_kwargs = req.args[0], dict(req.args[1] or {})
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else until
            max_gen = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            # rain's native generative tasks (rain.eval.generative) decode with this very function
            text = greedy_until(self.model, self.rain_tokenizer, context, until, max_gen)
            self.cache_hook.add_partial("generate_until", (context, req.args[1]), text)
            out.append(text)
        return out


# ----------------------------------------------------------------------------- local task configs


def _lm_eval_tasks_dir() -> Path:
    return Path(lm_eval.__file__).resolve().parent / "tasks"


def write_local_tasks(
    data_dir: str | Path,
    out_dir: str | Path,
    task_names: Sequence[str],
    fewshot: bool = True,
    cache_dir: str | Path | None = None,
) -> dict[str, str]:
    """Write lm-eval task yamls reading data_dir (layout of shared/data/eval) into out_dir.

    Each yaml includes lm-eval's own task yaml and overrides only the dataset (json or arrow files), so
    prompts, metrics and few-shot sampling are lm-eval's. The few-shot split is the one rain's native
    evaluator uses (see tasks.local_files): where lm-eval's train split is missing locally, "train" points
    at the evaluated split itself, and lm-eval then drops the evaluated item from its draws, as rain does.
    fewshot=False (0-shot runs) does not require the few-shot files: lm-eval still builds a sampler from
    "train", which then points at the evaluated split. cache_dir: where datasets keeps its converted copies
    (default out_dir/hf_cache, not ~/.cache). Returns {rain task name: lm-eval task name}.
    """
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()  # the yamls need absolute paths
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir).resolve() if cache_dir is not None else out_dir / "hf_cache"
    names = {}
    for name in task_names:
        spec = get_task(name)
        lf = local_files(name, data_dir)
        fmt = "arrow" if lf.fmt == "arrow" else "json"
        if lf.rewrite_for_lm_eval:
            # The local files differ from lm-eval's dataset (piqa's labels in a separate .lst, openbookqa in
            # MosaicML's fields, boolq's `answer` for `label`): hand lm-eval the converted rows as jsonl.
            data = load_task(name, data_dir, need_pool=fewshot)
            eval_files = [_write_jsonl(out_dir / f"{name}-eval.jsonl", data.docs)]
            if data.pool is None or data.pool is data.docs:
                pool_files = eval_files
            else:
                pool_files = [_write_jsonl(out_dir / f"{name}-train.jsonl", data.pool)]
            fmt = "json"
        else:
            # The original files (winogrande's jsonl carry `answer`; load_task checks any .lst agrees).
            load_task(name, data_dir, need_pool=fewshot)  # same checks and errors as the native path
            eval_files = lf.eval
            pool_files = lf.pool if (lf.pool is not None and fewshot) else lf.eval
        task = f"rain_{name}"
        eval_split = "test" if spec.has_test_split else "validation"
        cfg = {
            "include": str(_lm_eval_tasks_dir() / spec.lm_eval_yaml),
            "task": task,
            "tag": "rain_local",
            "dataset_path": fmt,
            "dataset_name": None,
            "dataset_kwargs": {
                "data_files": {eval_split: [str(p) for p in eval_files], "train": [str(p) for p in pool_files]},
                "cache_dir": str(cache),
            },
            "training_split": "train",
            "validation_split": None if spec.has_test_split else "validation",
            "test_split": "test" if spec.has_test_split else None,
        }
        # JSON is valid YAML, and keeps every string exactly as written.
        (out_dir / f"{task}.yaml").write_text(json.dumps(cfg, indent=2) + "\n")
        names[name] = task
    return names


def _write_jsonl(path: Path, docs: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    return path


def harness_evaluate(
    model,
    tokenizer: Tokenizer,
    task_names: Sequence[str],
    shots: int = 0,
    limit: int | float | None = None,
    data_dir: str | Path | None = None,
    batch_size: int = 32,
    seed: int = FEWSHOT_SEED,
    cache_dir: str | Path | None = None,
    **simple_evaluate_kwargs,
) -> list[dict]:
    """Evaluate with `lm_eval.simple_evaluate` through RainLM; rows shaped like multiple_choice.evaluate's.

    Without data_dir lm-eval loads its tasks from the hub; with one, from local files (write_local_tasks),
    `cache_dir` holding datasets' converted copies (default: a temporary folder). Note that simple_evaluate
    seeds Python's, numpy's and torch's global generators.
    """
    from lm_eval.tasks import TaskManager

    for name in task_names:
        get_task(name)
    lm = RainLM(model, tokenizer, batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="rain-lm-eval-") as tmp:
        if data_dir is not None:
            mapping = write_local_tasks(data_dir, tmp, task_names, fewshot=shots > 0, cache_dir=cache_dir)
            manager = TaskManager(include_path=tmp, include_defaults=False)
        else:
            mapping = {n: n for n in task_names}
            manager = TaskManager()
        res = lm_eval.simple_evaluate(
            model=lm,
            tasks=[mapping[n] for n in task_names],
            num_fewshot=shots,
            limit=limit,
            task_manager=manager,
            fewshot_random_seed=seed,
            **simple_evaluate_kwargs,
        )
    rows = []
    for name in task_names:
        r = res["results"][mapping[name]]
        n = res["n-samples"][mapping[name]]["effective"]
        source = (local_files(name, data_dir).pool_source if data_dir is not None else "train") if shots else None
        for m in get_task(name).metrics:
            stderr = None if m == "perplexity" else r.get(f"{m}_stderr,none")  # lm-eval bootstraps that one
            rows.append(
                {
                    "task": name,
                    "n_shot": shots,
                    "metric": m,
                    "value": r[f"{m},none"],
                    "stderr": stderr if isinstance(stderr, float) else None,
                    "items": n,
                    "fewshot_source": source,
                }
            )
    return rows
