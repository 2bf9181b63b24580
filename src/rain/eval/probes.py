"""Probing prompts: rain's prompt suite completed by each checkpoint with fixed seeds and sampling settings,
with automatic signals beside each completion, rendered as a markdown report that reads across training.

Signals: whether the expected answer came out (where a prompt has one), distinct-2 (distinct word bigrams /
word bigrams) and the longest word n-gram that occurs twice (repetition), and over-used words: words far more
frequent in the suite's completions than in a sample of the training corpus. For the creative prompts, prompt
adherence: the share of the prompt's content words (crudely stemmed) that come back in the continuation, a
check that it stays on the prompt's topic (read beside distinct-2: repeating the prompt also scores high).
Paired bias prompts are compared in rain.eval.bias.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from rain.data.prepared import PreparedData
from rain.data.tokenizer import Tokenizer
from rain.errors import RainError
from rain.files import jsonl_records
from rain.model.generate import generate

SUITE_FILE = "prompt_suite.jsonl"
MATCH_MODES = ("prefix", "sentence", "code")
DEFAULT_SETTINGS = {"max_new_tokens": 80, "temperature": 0.8, "top_k": 50, "top_p": 0.95}
_UNITS = re.compile(r"\w+|[^\w\s]+")  # words and punctuation runs, for repetition signals
_WORDS = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")  # words only, for over-use
CREATIVE_CATEGORIES = ("absurd", "creative")  # open-ended prompts: adherence is measured on these
# Function words: not "content" for adherence or for the words over-represented on one side of a pair.
STOPWORDS = frozenset("""
a an the and or but if then so as of at by for from in into on onto to up with about over under after before
is are was were be been being am do does did done have has had having will would shall should can could may
might must it its it's this that these those there here i me my mine we us our you your he him his she her
they them their what which who whom whose when where why how all any each every some no not very too just
than also only own same such more most other again once out off down because while since until
though although unless whether
""".split())
_SUFFIXES = ("ing", "ed", "es", "s", "ly")


# ----------------------------------------------------------------------------- the suite


def load_suite(path: str | Path | None = None) -> list[dict]:
    """Prompts from a .jsonl file (rain's own suite by default): id, category, prompt, and optionally
    expected (accepted answers) with match: prefix (the completion starts with it), sentence (a whole word
    of its first sentence) or code (in its first lines, whitespace ignored)."""
    if path is None:
        text, where = resources.files("rain.eval").joinpath(SUITE_FILE).read_text(encoding="utf-8"), SUITE_FILE
    else:
        if not Path(path).is_file():
            raise RainError(f"prompt suite {path}: file not found")
        text, where = Path(path).read_text(encoding="utf-8"), str(path)
    suite, seen = [], set()
    for at, entry in jsonl_records(text, lambda n: f"{where}:{n}"):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("id", "category", "prompt")):
            raise RainError(f"{at}: each line needs string fields id, category and prompt")
        if entry["id"] in seen:
            raise RainError(f"{at}: duplicate id {entry['id']!r}")
        if "expected" in entry:
            if isinstance(entry["expected"], str):
                entry["expected"] = [entry["expected"]]
            entry.setdefault("match", "prefix")
            if entry["match"] not in MATCH_MODES:
                raise RainError(f"{at}: match {entry['match']!r} is not one of {', '.join(MATCH_MODES)}")
        seen.add(entry["id"])
        suite.append(entry)
    _check_pairs(suite, where)
    return suite


def _check_pairs(suite: list[dict], where: str) -> None:
    """A "pair" names the partner prompt (which names this one back); "attribute" says what differs."""
    by_id = {e["id"]: e for e in suite}
    for entry in suite:
        if "pair" not in entry:
            continue
        partner = by_id.get(entry["pair"])
        if partner is None or partner.get("pair") != entry["id"]:
            raise RainError(f"{where}: prompt {entry['id']!r} pairs with {entry['pair']!r}, which must exist and "
                            f"have \"pair\": {entry['id']!r}")


# ----------------------------------------------------------------------------- signals


def expected_ok(completion: str, expected: Sequence[str] | None, match: str = "prefix") -> bool | None:
    """Whether the completion gives one of the accepted answers (case-insensitive); None without answers."""
    if not expected:
        return None
    if match == "code":
        head = re.sub(r"\s+", "", "\n".join([line for line in completion.splitlines() if line.strip()][:4]))
        return any(re.sub(r"\s+", "", answer) in head for answer in expected)
    if match == "sentence":
        text = re.split(r"(?<=[.!?])\s|\n", completion.strip(), maxsplit=1)[0]
        return any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", text, re.IGNORECASE) for a in expected)
    return any(re.match(rf"{re.escape(a)}(?!\w)", completion.lstrip(), re.IGNORECASE) for a in expected)


def text_units(text: str) -> list[str]:
    return _UNITS.findall(text.lower())


def distinct_2(text: str) -> float | None:
    """Distinct word bigrams / word bigrams (1.0: no bigram repeats); None under two words."""
    units = text_units(text)
    bigrams = list(zip(units, units[1:]))
    return len(set(bigrams)) / len(bigrams) if bigrams else None


def longest_repeated_ngram(text: str) -> int:
    """Length in words of the longest word n-gram occurring at least twice (occurrences may overlap)."""
    units = text_units(text)
    n = 0
    while n < len(units) - 1:
        grams = [tuple(units[i: i + n + 1]) for i in range(len(units) - n)]
        if len(set(grams)) == len(grams):
            break
        n += 1
    return n


def stem(word: str) -> str:
    """A crude stem, enough to match "filed" with "file" and "divorced" with "divorce": one common suffix off,
    then a final e, keeping at least three letters."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in STOPWORDS and len(w) > 1]


def prompt_adherence(prompt: str, completion: str) -> float | None:
    """Share of the prompt's distinct content-word stems found in the completion; None for a prompt without
    content words."""
    wanted = {stem(w) for w in content_words(prompt)}
    if not wanted:
        return None
    return len(wanted & {stem(w) for w in content_words(completion)}) / len(wanted)


def is_creative(entry: dict) -> bool:
    return entry.get("category") in CREATIVE_CATEGORIES


def completion_checks(completion: str, entry: dict) -> dict:
    checks = {"expected_ok": expected_ok(completion, entry.get("expected"), entry.get("match", "prefix")),
              "distinct_2": distinct_2(completion), "longest_repeated_ngram": longest_repeated_ngram(completion)}
    if is_creative(entry):
        checks["prompt_adherence"] = prompt_adherence(entry["prompt"], completion)
    return checks


def creative_summary(results: Sequence[dict]) -> dict:
    """Means over the creative prompts' completions: adherence (recomputed, so completions saved before it
    existed count too), distinct-2, longest repeat; and how many there were."""
    mine = [r for r in results if is_creative(r)]

    def mean(values) -> float | None:
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    return {"items": len(mine), "prompt_adherence": mean(prompt_adherence(r["prompt"], r["completion"]) for r in mine),
            "distinct_2": mean(distinct_2(r["completion"]) for r in mine),
            "longest_repeated_ngram": mean(longest_repeated_ngram(r["completion"]) for r in mine)}


def words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


def corpus_word_counts(data_dir: str | Path, tokenizer: Tokenizer, sample_tokens: int = 2_000_000,
                       pieces: int = 64, split: str = "train") -> Counter:
    """Word counts of `pieces` evenly spaced stretches of the split, sample_tokens tokens in all (bounded work
    whatever the corpus size)."""
    stream = PreparedData(data_dir).stream(split)
    total = len(stream)
    piece = total if total <= sample_tokens else max(sample_tokens // pieces, 1)
    counts: Counter = Counter()
    for a in np.unique(np.linspace(0, total - piece, pieces, dtype=np.int64)):
        ids = np.asarray(stream.read(int(a), int(a) + piece), dtype=np.int64)
        for doc in np.split(ids, np.nonzero(ids == tokenizer.eot_id)[0]):
            counts.update(words(tokenizer.decode(doc[doc != tokenizer.eot_id].tolist())))
    return counts


def overused_words(completions: Iterable[str], reference_counts: Mapping[str, int], min_ratio: float = 10.0,
                   min_completions: int = 3, top: int = 15) -> list[tuple[str, float]]:
    """Words whose frequency in the completions is at least min_ratio times their frequency in the reference
    counts (unseen words count as half an occurrence), found in at least min_completions completions;
    highest ratio first."""
    per_completion = [Counter(words(text)) for text in completions]
    counts = sum(per_completion, Counter())
    reach = Counter(w for c in per_completion for w in c)
    total, ref_total = sum(counts.values()), sum(reference_counts.values())
    if not total or not ref_total:
        return []
    ratios = [(w, (n / total) / ((reference_counts.get(w, 0) + 0.5) / ref_total))
              for w, n in counts.items() if reach[w] >= min_completions]
    return sorted([(w, r) for w, r in ratios if r >= min_ratio], key=lambda x: (-x[1], x[0]))[:top]


# ----------------------------------------------------------------------------- generation


def prompt_seed(seed: int, prompt_id: str) -> int:
    """A seed per prompt that does not depend on the prompt's place in the suite."""
    return (seed * 1_000_003 + zlib.crc32(prompt_id.encode())) % 2**31


def run_prompt_suite(model, tokenizer: Tokenizer, suite: list[dict] | None = None, seed: int = 0,
                     max_new_tokens: int = DEFAULT_SETTINGS["max_new_tokens"],
                     temperature: float = DEFAULT_SETTINGS["temperature"], top_k: int = DEFAULT_SETTINGS["top_k"],
                     top_p: float = DEFAULT_SETTINGS["top_p"]) -> list[dict]:
    """One sampled completion per prompt (stopping at <|endoftext|>), with its signals. A prompt longer than
    the model's context keeps its last tokens (truncated: true)."""
    suite = load_suite() if suite is None else suite
    settings = {"seed": seed, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k,
                "top_p": top_p}
    context = model.cfg.context
    results = []
    for entry in suite:
        ids = tokenizer.encode(entry["prompt"])
        room = min(max_new_tokens, 16)
        truncated = len(ids) > context - room
        if truncated:
            ids = ids[-(context - room):]
        out = generate(model, ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       stop_ids=(tokenizer.eot_id,), seed=prompt_seed(seed, entry["id"]), vocab_limit=tokenizer.vocab_size)
        completion = tokenizer.decode(out)
        results.append({**entry, "completion": completion, "completion_ids": out, "truncated": truncated,
                        "settings": settings, "checks": completion_checks(completion, entry)})
    return results


def probe_checkpoints(folders: Sequence[str | Path], suite: list[dict] | None = None, device: str = "cpu",
                      **settings) -> tuple[dict[str, list[dict]], dict[str, int | None]]:
    """run_prompt_suite for each checkpoint (or run folder's last one); returns results and tokens seen, by
    checkpoint label, for render_report."""
    from rain import checkpoint as ckpt

    results, tokens = {}, {}
    for folder in folders:
        checkpoint = ckpt.find(folder)
        name = checkpoint.name
        label = name if name not in results else f"{checkpoint.folder.parent.parent.name}/{name}"
        model, _ = ckpt.load_model(checkpoint, device)
        tokens[label] = checkpoint.tokens
        results[label] = run_prompt_suite(model, ckpt.tokenizer(checkpoint), suite, **settings)
    return results, tokens


# ----------------------------------------------------------------------------- report


def _count(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _fenced(text: str) -> str:
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence}text\n{text}\n{fence}"


def _signals(checks: dict) -> str:
    parts = []
    for key, value in checks.items():
        if key == "expected_ok":
            parts.append("expected " + {True: "✓", False: "✗"}[value] if value is not None else "")
        elif key == "distinct_2":
            parts.append(f"distinct-2 {value:.2f}" if value is not None else "distinct-2 –")
        elif key == "longest_repeated_ngram":
            parts.append(f"longest repeat {value} word{'' if value == 1 else 's'}")
        elif key == "prompt_adherence":
            parts.append(f"prompt adherence {value:.2f}" if value is not None else "prompt adherence –")
        else:
            parts.append(f"{key.replace('_', ' ')} {value}")
    return " · ".join(p for p in parts if p)


def _mean(values: list) -> str:
    values = [v for v in values if v is not None]
    return f"{sum(values) / len(values):.2f}" if values else "–"


def checkpoint_order(labels: Iterable[str], tokens_seen: Mapping[str, int | None] | None) -> list[str]:
    """Checkpoint labels in order of tokens seen (the given order when tokens_seen is not given)."""
    labels = list(labels)
    if tokens_seen:
        labels.sort(key=lambda c: (tokens_seen.get(c) is None, tokens_seen.get(c) or 0))
    return labels


def creative_table(results_by_checkpoint: Mapping[str, list[dict]], labels: Sequence[str],
                   tokens_seen: Mapping[str, int | None]) -> list[str]:
    """Markdown lines: the creative prompts' adherence, distinct-2 and longest repeat per checkpoint."""
    lines = ["## Creative prompts", "",
             "Prompt adherence: share of the prompt's content words (function words left out, crudely stemmed) "
             "that come back in the continuation; read it beside distinct-2 and the longest repeat, since a "
             "continuation that only repeats the prompt also scores high.", "",
             "| checkpoint | tokens | prompts | prompt adherence | distinct-2 | longest repeat |", "|---|---|---:|---:|---:|---:|"]
    for c in labels:
        s = creative_summary(results_by_checkpoint[c])
        cells = [f"{s[k]:.2f}" if s[k] is not None else "–" for k in ("prompt_adherence", "distinct_2", "longest_repeated_ngram")]
        lines.append(f"| {c} | {_count(tokens_seen.get(c))} | {s['items']} | " + " | ".join(cells) + " |")
    return lines


def render_report(results_by_checkpoint: Mapping[str, list[dict]], tokens_seen: Mapping[str, int | None] | None = None,
                  reference_counts: Mapping[str, int] | None = None, title: str = "Probing prompts",
                  sections: Sequence[str] = ()) -> str:
    """Markdown: a summary table per checkpoint, the creative prompts' table, any further sections (markdown,
    e.g. rain.eval.bias.report_section), then one section per prompt with its completions across checkpoints
    in order of tokens seen (the given order when tokens_seen is not given)."""
    tokens_seen = tokens_seen or {}
    labels = checkpoint_order(results_by_checkpoint, tokens_seen)
    lines = [f"# {title}", ""]
    first = next((r for c in labels for r in results_by_checkpoint[c]), None)
    if first is not None:
        s = first["settings"]
        lines += [f"One completion per prompt and checkpoint, sampled with temperature {s['temperature']}, top-k "
                  f"{s['top_k']}, top-p {s['top_p']}, at most {s['max_new_tokens']} new tokens; every checkpoint "
                  f"uses the same seeds (base seed {s['seed']}).", ""]
    lines += ["## Summary", "",
              "| checkpoint | tokens | expected answers | distinct-2 | longest repeat | over-used words |",
              "|---|---|---|---|---|---|"]
    for c in labels:
        results = results_by_checkpoint[c]
        graded = [r["checks"]["expected_ok"] for r in results if r["checks"]["expected_ok"] is not None]
        over = overused_words([r["completion"] for r in results], reference_counts) if reference_counts else []
        lines.append(f"| {c} | {_count(tokens_seen.get(c))} | {sum(graded)}/{len(graded)} | "
                     f"{_mean([r['checks']['distinct_2'] for r in results])} | "
                     f"{_mean([r['checks']['longest_repeated_ngram'] for r in results])} | "
                     f"{', '.join(f'{w} ({r:.0f}x)' for w, r in over) or '–'} |")
    if any(is_creative(r) for c in labels for r in results_by_checkpoint[c]):
        lines += [""] + creative_table(results_by_checkpoint, labels, tokens_seen)
    lines += [part for section in sections if section for part in ("", section.rstrip("\n"))]
    order: dict[str, dict] = {}
    for c in labels:
        for r in results_by_checkpoint[c]:
            order.setdefault(r["id"], r)
    category = None
    for prompt_id, entry in order.items():
        if entry["category"] != category:
            category = entry["category"]
            lines += ["", f"## {category}"]
        lines += ["", f"### {prompt_id}", "", _fenced(entry["prompt"])]
        if entry.get("expected"):
            lines += ["", "Expected: " + " or ".join(f"`{a}`" for a in entry["expected"]) + f" ({entry['match']})"]
        for c in labels:
            r = next((r for r in results_by_checkpoint[c] if r["id"] == prompt_id), None)
            if r is None:
                continue
            note = " · prompt truncated to the context" if r.get("truncated") else ""
            seen = f" ({_count(tokens_seen[c])} tokens)" if tokens_seen.get(c) is not None else ""
            lines += ["", f"**{c}**{seen} · {_signals(r['checks'])}{note}", "",
                      _fenced(r["completion"])]
    return "\n".join(lines) + "\n"
