"""The README.md model card of an export, from the checkpoint's own records only: its config and parameter count,
the training stages back through `init_from` (data mixes with realised shares, tokens, compute), the run's
benchmark results (eval/results.jsonl) and the model's limitations.

The card is published with the model, so it names folders and files only by their own names (run `base`, data
`web-mix`, `chat.jsonl`), never by the absolute paths that state.json keeps for finding the parents locally."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rain import checkpoint as ckpt
from rain.checkpoint import Checkpoint, HFModel, MissingParent
from rain.data.tokenizer import Tokenizer
from rain.eval.runner import read_results
from rain.export.safety_card import safety_lines, safety_stages
from rain.model.hf_weights import ARCHITECTURES, hf_model_type
from rain.train.metrics import active_params, format_bill


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, OSError):
        return {}


def _run_dir(folder: Path) -> Path | None:
    folder = Path(folder).resolve()  # a relative folder such as "." or "checkpoints/last" has no usable parents
    return folder.parent.parent if folder.parent.name == "checkpoints" else None


def _folder_name(path: str | Path) -> str:
    """A folder's own name: for a Hugging Face cache snapshot (.../models--ORG--NAME/snapshots/HASH), ORG/NAME."""
    path = Path(path).expanduser().resolve()
    cached = next((part for part in path.parts if part.startswith("models--")), None)
    return cached.removeprefix("models--").replace("--", "/") if cached else path.name.removeprefix(".old-")


def public_name(path: str | Path) -> str:
    """How the card names a folder without revealing where it lies: run `base`, checkpoint `last` for a
    checkpoint of a run; run `base` for a run folder; else the folder's own name (markdown)."""
    path = Path(path).expanduser().resolve()
    run = _run_dir(path)
    if run is not None:
        return f"run `{run.name}`, checkpoint `{_folder_name(path)}`"
    if (path / "checkpoints").is_dir():
        return f"run `{path.name}`"
    return f"`{_folder_name(path)}`"


def _basenames(text: str) -> str:
    """Every path-like word of a text (holding a slash, e.g. a mixture's origin `--data /home/me/a.jsonl`)
    reduced to its last component."""
    return " ".join(Path(word).name if re.search(r"[/\\]", word) else word for word in text.split(" "))


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _stage_kind(stage: Checkpoint) -> str:
    if "dpo" in stage.state:
        return f"preference tuning ({stage.state['dpo'].get('loss', 'dpo').upper()})"
    if "sft" in stage.state:
        return "supervised fine-tuning for chat"
    return "continued pretraining" if stage.parent else "pretraining from scratch"


def _data_lines(stage: Checkpoint) -> list[str]:
    state = stage.state
    if "sft" in state:
        s = state["sft"]
        conv, skipped = s["conversations"], sum(s.get("skipped", {}).values())
        masked = "loss on assistant tokens only" if s.get("mask_prompt", True) else "loss on every token (prompts unmasked)"
        files = ", ".join(f"`{Path(p).name}`" for p in s["data"])
        return [f"Chat data: {files}: {conv['train']:,} training and {conv['val']:,} "
                f"held-out conversations ({s['tokens']['train']:,} tokens, {s['trained_tokens_per_epoch']:,} trained "
                f"per epoch; {masked}). Skipped as unusable: {skipped:,}; longer than the context: "
                f"{s.get('dropped_too_long', 0):,} dropped, {s.get('truncated', 0):,} truncated.", ""]
    if "dpo" in state:
        return _preference_lines(state["dpo"])
    data_dir = stage.data_dir
    manifest = _read_json(Path(data_dir) / "manifest.json") if data_dir else {}
    data_name = Path(data_dir).name if data_dir else "not recorded"
    if not manifest:
        return [f"Data: `{data_name}` (its manifest.json is not available here, so the mix is not shown).", ""]
    mix = manifest.get("mixture", {})
    train = manifest.get("sources", {}).get("train", {})
    lines = [f"Data: `{data_name}`" + (f", mixture `{_basenames(mix['origin'])}`" if mix.get("origin") else "") +
             f": {mix.get('train_tokens', sum(s.get('tokens', 0) for s in train.values())):,} training tokens.", "",
             "| source | weight | realised share | documents | tokens |", "|---|---:|---:|---:|---:|"]
    weights, realised = mix.get("weights", {}), mix.get("realised", {})
    for name, s in train.items():
        lines.append(f"| {name} | {_pct(weights.get(name))} | {_pct(realised.get(name))} | {s.get('documents', 0):,} | "
                     f"{s.get('tokens', 0):,} |")
    return lines + [""]


def _preference_lines(s: dict) -> list[str]:
    pairs, skipped = s["pairs"], sum(s.get("skipped", {}).values())
    files = ", ".join(f"`{Path(p).name}`" for p in s["data"])
    against = ("no reference model" if s.get("reference") is None else
               f"against the frozen reference {public_name(s['reference'])}")
    return [f"Preference data: {files}: {pairs['train']:,} training and {pairs['val']:,} held-out pairs "
            f"({s['tokens']['train']:,} tokens; loss on the compared reply only). Skipped: {skipped:,}. "
            f"Objective: {s.get('loss', 'dpo').upper()}, beta {s.get('beta')}, {against}.", ""]


# A language with less of the training text than this is not listed in the card's `language:` (langid gives short
# or mixed documents stray codes; a few such documents do not make a model speak the language).
LANGUAGE_MIN_SHARE = 0.01


def measured_languages(stages: list) -> dict[str, float] | None:
    """The training text's languages as `rain prepare` measured them (langid, characters of training documents
    per language, every source that detected) over every stage with a prepared data folder, as shares, largest
    first; None when no stage's data measured languages (langid missing, or data prepared before it)."""
    chars: dict[str, int] = {}
    measured = False
    for stage in stages:
        if not isinstance(stage, Checkpoint) or "sft" in stage.state or "dpo" in stage.state or not stage.data_dir:
            continue
        manifest = _read_json(Path(stage.data_dir) / "manifest.json")
        for source in manifest.get("languages", {}).values():
            measured = measured or bool(source.get("detected"))
            for code, c in source.get("train", {}).items():
                chars[code] = chars.get(code, 0) + c.get("chars", 0)
    total = sum(chars.values())
    if not measured or not total:
        return None
    return dict(sorted(((code, n / total) for code, n in chars.items()), key=lambda kv: (-kv[1], kv[0])))


def _languages_listed(shares: dict[str, float] | None) -> list[str]:
    return [code for code, share in (shares or {}).items() if share >= LANGUAGE_MIN_SHARE]


def _language_limitation(shares: dict[str, float] | None) -> str:
    if shares is None:
        return ("- Languages not measured: the training data's languages were not detected (`rain prepare` does with "
                "langid, `pip install 'rain[lang]'`); expect much worse results in languages it saw little of.")
    listed = ", ".join(f"{code} {_pct(share)}" for code, share in shares.items() if share >= LANGUAGE_MIN_SHARE)
    rest = sum(share for share in shares.values() if share < LANGUAGE_MIN_SHARE)
    n_rest = len(shares) - len(_languages_listed(shares))
    other = f", {n_rest} other language{'s' if n_rest > 1 else ''} {_pct(rest)} together" if n_rest else ""
    return (f"- Training text by language (characters of the documents whose language `rain prepare` detected with "
            f"langid): {listed}{other}. Expect much worse results in other languages.")


def _preference_words(runs) -> str:
    if any("dpo" in s.state for s in runs):
        return "preference tuning only on the pairs named below (no RLHF)"
    return "no preference tuning (RLHF/DPO)"


def _alignment_limitation(chat: bool, preference_tuned: bool) -> str:
    if preference_tuned:
        return "- Little alignment: preference tuning on the pairs above only, no "
    return ("- No alignment: " + ("beyond supervised fine-tuning on the chat data above, " if chat else "")
            + "no preference tuning or ")


def _distill_line(state: dict) -> str:
    """What a distilled stage's card says of its teacher and KL term (rain.train.distill)."""
    d = state.get("distill", {})
    over = ""
    if d.get("top_k"):
        rest = " and the rest of its probability as one more outcome" if d.get("rest") == "bucket" else ", renormalised"
        over = f" over the teacher's top {d['top_k']} tokens{rest}"
    return (f"Distilled from {public_name(state['teacher'])}: the loss adds {d.get('weight')} x T^2 x KL(teacher || "
            f"student) at temperature T = {d.get('temperature')}{over}.")


def _stage_section(i: int, stage: Checkpoint | HFModel | MissingParent) -> list[str]:
    if isinstance(stage, HFModel):
        return [f"### Stage {i}: initialised from the Hugging Face model `{_folder_name(stage.folder)}` "
                f"({', '.join(stage.architectures)})", "", "Its own training is described by its publisher, not here.", ""]
    if isinstance(stage, MissingParent):
        return [f"### Stage {i}: started from {public_name(stage.path)}", "",
                "That checkpoint is no longer available, so its training is not described here.", ""]
    state, train = stage.state, stage.config.train
    lines = [f"### Stage {i}: {_stage_kind(stage)} ({public_name(stage.folder)})", ""]
    if stage.parent:
        lines += [f"Started from {public_name(stage.parent)} with a fresh optimizer and learning-rate "
                  "schedule.", ""]
    if state.get("teacher"):
        lines += [_distill_line(state), ""]
    lines += _data_lines(stage)
    seconds = state.get("wall_seconds", 0)
    lines.append(f"Training: {stage.step or 0:,} steps, {stage.tokens or 0:,} tokens seen (windows of "
                 f"{stage.config.model.context} tokens, padding included), batch {train.batch_size}, peak learning "
                 f"rate {train.lr}, schedule {train.schedule}. Compute: {seconds / 3600:.2f} hours ({seconds:,.0f} s) "
                 f"on {state.get('hardware') or 'hardware not recorded (train.device = ' + str(train.device) + ')'}.")
    bill = _read_json(_run_dir(stage.folder) / "run_summary.json").get("bill") if _run_dir(stage.folder) else None
    if bill:  # the run's compute bill (rain.train.metrics.compute_bill), as its end-of-run summary gave it
        lines.append(f"Compute bill of the run: {format_bill(bill)}.")
    if state.get("val_loss") is not None:
        bpb = f", {state['val_bpb']} bits per byte" if state.get("val_bpb") is not None else ""
        lines.append(f"Held-out loss at this checkpoint: {state['val_loss']}{bpb}.")
    return lines + [""]


def _results_path(folder: Path) -> Path:
    """Where `rain eval` writes a checkpoint's results: RUN/eval for a checkpoint inside a run, else CHECKPOINT/eval."""
    run = _run_dir(folder)
    return (run if run is not None else folder) / "eval" / "results.jsonl"


def _eval_section(checkpoint: Checkpoint) -> list[str]:
    """This checkpoint's rows (same step and tokens seen), plus reference rows of no step (e.g. a random model)."""
    folder = checkpoint.folder
    path = _results_path(folder)
    shown = f"the {'run' if _run_dir(folder) is not None else 'checkpoint'}'s `eval/results.jsonl`"  # not its path
    rows = read_results(path)  # a damaged line is a one-line error: a published card must not skip results
    latest = {}
    for r in rows:  # a re-evaluation replaces the earlier row
        if r.get("category"):  # the per-category breakdown stays in trends.md
            continue
        mine = r.get("step") == checkpoint.step and r.get("tokens") == checkpoint.tokens
        if mine or r.get("step") is None:
            latest[(r.get("checkpoint"), r.get("task"), r.get("source"), r.get("n_shot"), r.get("metric"))] = r
    if not any(r.get("step") is not None for r in latest.values()):
        others = f" ({len(rows)} results of other checkpoints are in {shown})" if rows else ""
        return ["## Evaluation", "", f"Not evaluated: no benchmark results for this checkpoint{others}; "
                "`rain eval` writes them to `eval/results.jsonl` in the run folder.", ""]
    lines = ["## Evaluation", "", f"From {shown}, as recorded by `rain eval`.", "",
             "| task | shots | metric | value | stderr | items | checkpoint | tokens |", "|---|---:|---|---:|---:|---:|---|---:|"]

    def num(r: dict, key: str, fmt: str = "{:.4f}") -> str:
        value = r.get(key)
        return fmt.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"

    for r in latest.values():
        task = str(r.get("task", "?")) + (f" ({r['source']})" if r.get("source") not in (None, "all") else "")
        shots = r.get("n_shot") if r.get("n_shot") is not None else "-"
        lines.append(f"| {task} | {shots} | {r.get('metric', '?')} | {num(r, 'value')} | {num(r, 'stderr')} | "
                     f"{num(r, 'items', '{:,}')} | {r.get('checkpoint', '?')} | {num(r, 'tokens', '{:,}')} |")
    return lines + [""]


TOKENIZER_KINDS = {"bytelevel-bpe": "byte-level BPE", "unigram": "Unigram (SentencePiece-style, byte fallback)",
                   "bpe-byte-fallback": "BPE with byte fallback (SentencePiece-style)"}


def _tokenizer_name(tokenizer: Tokenizer) -> str:
    pre = {"korean-morphemes": ", over Korean morphemes (kiwipiepy)", "cjk-chars": ", CJK characters kept whole"}
    return TOKENIZER_KINDS.get(tokenizer.kind, tokenizer.kind) + pre.get(tokenizer.pretokenize, "")


def _encode_lines(tokenizer: Tokenizer, text: str) -> list[str]:
    """The card's code that turns a prompt into ids: plain, or (a Korean-morpheme tokenizer, whose analyser has no
    `tokenizers` equivalent) through rain's morpheme split first, which gives exactly rain's ids."""
    if tokenizer.pretokenize != "korean-morphemes":
        return [f'ids = tokenizer("{text}", return_tensors="pt").input_ids']
    return ["# The tokenizer was trained on Korean morphemes: split text with rain's analyser (pip install 'rain[korean]',",
            "# kiwipiepy) and pass the pieces as words, or the ids differ from training's.",
            "from rain.data.morphemes import split_morphemes",
            f'ids = tokenizer(split_morphemes("{text}"), is_split_into_words=True, return_tensors="pt").input_ids']


def model_card(checkpoint: Checkpoint, n_params: int, n_params_non_embedding: int, tokenizer: Tokenizer,
               name: str) -> str:
    m = checkpoint.config.model
    arch = ARCHITECTURES[hf_model_type(m)]
    stages = ckpt.lineage(checkpoint)
    chat = checkpoint.chat_template is not None
    first = stages[0]
    origin = (f"the Hugging Face model `{_folder_name(first.folder)}`" if isinstance(first, HFModel)
              else f"{public_name(first.path)} (no longer available)" if isinstance(first, MissingParent)
              else "random weights")
    kind = "a chat model: a base model fine-tuned on conversations" if chat else "a base model (text completion only)"
    runs = [s for s in stages if isinstance(s, Checkpoint)]
    tokens = sum(s.tokens or 0 for s in runs)
    safety = " beyond rain's small safety pack" if safety_stages(stages) else ""
    languages = measured_languages(stages)
    listed = _languages_listed(languages)
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation",
        *(["language:", *(f"- {code}" for code in listed)] if listed else []),
        "tags:", "- rain", f"- {arch.removesuffix('ForCausalLM').lower()}", *(["- chat"] if chat else []), "---", "",
        f"# {name}", "",
        f"**What it is:** a small decoder-only language model with {n_params:,} parameters, trained with rain on "
        f"{tokens:,} tokens in {len(runs)} stage(s) starting from {origin}; {kind}. "
        f"It loads in transformers as `{arch}` with no custom code.", "",
        "**What it is not:** a reliable source of facts, a safe assistant, or a model aligned with human preferences. "
        f"It received {_preference_words(runs)} and no safety training{safety}, and it was not evaluated for any deployment.", "",
        "## Architecture", "",
        "| | |", "|---|---|",
        f"| architecture | {arch} ({'QK-norm, ' if m.qk_norm else ''}pre-RMSNorm, GQA, RoPE, SwiGLU, no biases) |",
        f"| parameters | {n_params:,} ({n_params_non_embedding:,} without the embedding) |",
        f"| layers | {m.n_layer} |", f"| hidden size | {m.d_model} |",
        f"| attention heads (query / key-value) | {m.n_head} / {m.n_kv_head}, head dim {m.dim_head} |",
        (f"| MLP | {m.n_experts} SwiGLU experts of size {m.d_expert}, each token routed to {m.experts_per_token} "
         f"({active_params(m, n_params):,} parameters used per token) |" if m.n_experts else f"| MLP size | {m.d_ff} |"),
        f"| context | {m.context} tokens |",
        f"| vocabulary | {m.vocab_size:,} ({tokenizer.vocab_size:,} used by the {_tokenizer_name(tokenizer)} tokenizer) |",
        f"| RoPE theta | {m.rope_theta:g} |", f"| tied embeddings | {'yes' if m.tie_embeddings else 'no'} |",
        "", "## Training", "",
    ]
    for i, stage in enumerate(stages, start=1):
        lines += _stage_section(i, stage)
    lines += _eval_section(checkpoint)
    lines += safety_lines(checkpoint, stages, _results_path(checkpoint.folder))
    lines += ["## Limitations", "",
              f"- Small: {n_params:,} parameters trained on {tokens:,} tokens. It makes factual and arithmetic errors, "
              "loses track of long texts and can write fluent nonsense.",
              _language_limitation(languages),
              _alignment_limitation(chat, any("dpo" in s.state for s in runs))
              + f"safety training{safety}. It can produce false, offensive or unsafe text and may follow "
              "harmful instructions.",
              "- It may reproduce biases of its training data and memorised training text verbatim.",
              f"- It reads at most {m.context} tokens of context.", "",
              "## Use", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")',
              'model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO")']
    if chat:
        lines += ['ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hello!"}], add_generation_prompt=True, '
                  'return_tensors="pt", return_dict=True)["input_ids"]',
                  "out = model.generate(ids, max_new_tokens=100)  # stops at <|im_end|>",
                  "print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))"]
    else:
        lines += [*_encode_lines(tokenizer, "The river"),
                  "print(tokenizer.decode(model.generate(ids, max_new_tokens=50, do_sample=True)[0]))"]
    lines += ["```", ""]
    if chat:
        lines += ["Chat format (ChatML, in the tokenizer's `chat_template`): "
                  "`<|im_start|>role\\ncontent<|im_end|>\\n` per turn, roles system, user, assistant.", ""]
    return "\n".join(lines)
