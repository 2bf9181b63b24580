"""`rain eval --prompts / --memorisation`: per-checkpoint hooks for the runner (rain.eval.runner).

The prompt hook samples the probing suite (rain.eval.probes) and keeps every checkpoint's completions in
eval/prompts/<checkpoint>.json, with the model's scores on the stereotype likelihood pairs (rain.eval.bias),
re-rendering eval/prompts.md across all of them after each checkpoint. The
memorisation hook audits those same completions against an index of the run's training shards, built once
into eval/memorisation_index (rain.eval.memorisation), and writes eval/memorisation.md."""

from __future__ import annotations

import json
from pathlib import Path

from rain.checkpoint import Checkpoint
from rain.errors import RainError
from rain.eval import bias, memorisation, probes
from rain.eval.multiple_choice import mean_stderr
from rain.eval.runner import Unit


def _completions_file(eval_dir: Path, ckpt: Checkpoint) -> Path:
    return eval_dir / "prompts" / f"{ckpt.name}.json"


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


class PromptsHook:
    unit = Unit("prompts", evaluator="probes")

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._reference: dict | None = None
        self._lexicon = bias.load_lexicon()
        self._pairs = bias.load_stereotype_pairs()

    def completions(self, ckpt: Checkpoint, model, tokenizer, eval_dir: Path) -> list[dict]:
        """The suite's completions for this checkpoint, sampled once and kept on disk."""
        path = _completions_file(eval_dir, ckpt)
        if path.is_file():
            return json.loads(path.read_text())["results"]
        results = probes.run_prompt_suite(model, tokenizer, seed=self.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"checkpoint": ckpt.name, "tokens": ckpt.tokens, "results": results}, indent=1))
        return results

    def stereotype_scores(self, ckpt: Checkpoint, model, tokenizer, eval_dir: Path) -> list[dict]:
        """The likelihood pairs' scores for this checkpoint, added once to its completions file."""
        path = _completions_file(eval_dir, ckpt)
        saved = json.loads(path.read_text())
        if "stereotype_scores" not in saved:
            saved["stereotype_scores"] = bias.score_stereotype_pairs(self._pairs, bias.model_loglikelihood(model, tokenizer))
            path.write_text(json.dumps(saved, indent=1))
        return saved["stereotype_scores"]

    def __call__(self, ckpt: Checkpoint, model, tokenizer, eval_dir: Path) -> list[dict]:
        results = self.completions(ckpt, model, tokenizer, eval_dir)
        scored = self.stereotype_scores(ckpt, model, tokenizer, eval_dir)
        if self._reference is None and ckpt.data_dir and Path(ckpt.data_dir).is_dir():
            self._reference = probes.corpus_word_counts(ckpt.data_dir, tokenizer)
        self.render(eval_dir)
        checks = [r["checks"] for r in results]
        answered = [c["expected_ok"] for c in checks if c.get("expected_ok") is not None]
        rows = [{"metric": "expected_ok", "value": sum(answered) / len(answered) if answered else None, "items": len(answered)},
                {"metric": "distinct_2", "value": _mean(c.get("distinct_2") for c in checks), "items": len(checks)},
                {"metric": "longest_repeated_ngram", "value": _mean(c.get("longest_repeated_ngram") for c in checks),
                 "items": len(checks)}]
        adherence = [probes.prompt_adherence(r["prompt"], r["completion"]) for r in results if probes.is_creative(r)]
        adherence = [a for a in adherence if a is not None]
        rows.append({"metric": "prompt_adherence", "value": _mean(adherence), "stderr": mean_stderr(adherence),
                     "items": len(adherence)})
        rows += bias.result_rows(results, scored, self._lexicon)
        return [r for r in rows if r["value"] is not None]

    def render(self, eval_dir: Path) -> None:
        by_label, tokens, scored = {}, {}, {}
        for path in sorted((eval_dir / "prompts").glob("*.json")):
            saved = json.loads(path.read_text())
            by_label[saved["checkpoint"]] = saved["results"]
            tokens[saved["checkpoint"]] = saved["tokens"]
            scored[saved["checkpoint"]] = saved.get("stereotype_scores") or []
        section = bias.report_section(by_label, scored, tokens, self._lexicon)
        (eval_dir / "prompts.md").write_text(probes.render_report(by_label, tokens, self._reference, sections=[section]))


class MemorisationHook:
    unit = Unit("memorisation", evaluator="memorisation")

    def __init__(self, prompts: PromptsHook, min_span: int = 50):
        self.prompts, self.min_span = prompts, min_span

    def index(self, ckpt: Checkpoint, eval_dir: Path) -> memorisation.WindowIndex:
        if not ckpt.data_dir or not Path(ckpt.data_dir).is_dir():
            raise RainError(f"{ckpt.folder}: its training data ({ckpt.data_dir}) is not on disk; the memorisation "
                            "audit needs the training shards")
        path = eval_dir / "memorisation_index"
        try:
            return memorisation.load_index(path, ckpt.data_dir)
        except RainError:  # missing, unfinished, or built from other shards: (re)build it
            return memorisation.build_index(ckpt.data_dir, path, stride=memorisation.stride_for(self.min_span))

    def __call__(self, ckpt: Checkpoint, model, tokenizer, eval_dir: Path) -> list[dict]:
        results = self.prompts.completions(ckpt, model, tokenizer, eval_dir)
        report = memorisation.audit([r["completion_ids"] for r in results], self.index(ckpt, eval_dir), self.min_span)
        for span in report["spans"]:
            span["prompt"] = results[span["completion"]]["prompt"]
            span["text"] = tokenizer.decode(span.pop("token_ids"))
        out = eval_dir / "memorisation" / f"{ckpt.name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"checkpoint": ckpt.name, "tokens": ckpt.tokens, **report}, indent=1))
        self.render(eval_dir)
        return [{"metric": f"share_verbatim_{self.min_span}", "value": report["share"], "items": report["completions"]},
                {"metric": "longest_verbatim_span", "value": max(report["longest"], default=0), "items": report["completions"]}]

    def render(self, eval_dir: Path) -> None:
        saved = [json.loads(p.read_text()) for p in (eval_dir / "memorisation").glob("*.json")]
        saved.sort(key=lambda s: (s["tokens"] is None, s["tokens"] or 0))
        lines = ["# Memorisation audit", "",
                 f"The longest span of each probing completion found verbatim in the training shards (index windows of "
                 f"{saved[0]['k']} tokens, every {saved[0]['stride']}th start: every span of >= "
                 f"{saved[0]['guaranteed_span']} tokens is found).", "",
                 f"| checkpoint | tokens | completions | with a span >= {self.min_span} tokens | share | longest |",
                 "|---|---:|---:|---:|---:|---:|"]
        for s in saved:
            lines.append(f"| {s['checkpoint']} | {s['tokens'] or '-'} | {s['completions']} | {s['with_span']} | "
                         f"{s['share']:.1%} | {max(s['longest'], default=0)} |")
        for s in saved:
            for span in s["spans"]:
                lines += ["", f"## {s['checkpoint']}: {span['length']} tokens verbatim ({span['source'].get('file', '?')})",
                          "", f"Prompt: `{span['prompt']}`", "", "```", span["text"], "```"]
        (eval_dir / "memorisation.md").write_text("\n".join(lines) + "\n")


def build_hooks(prompts: bool, memorisation_audit: bool, seed: int = 0) -> list:
    hooks = []
    prompt_hook = PromptsHook(seed)
    if prompts:
        hooks.append(prompt_hook)
    if memorisation_audit:
        hooks.append(MemorisationHook(prompt_hook))
    return hooks
