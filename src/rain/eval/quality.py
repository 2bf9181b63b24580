"""`rain score`: a quality score for every training document of a prepared folder, by a reference model's bits
per byte, a Hugging Face sequence classifier, or readability, written beside the documents for `rain data
filter` (rain.data.quality owns the scores files, the filter and its report; see its docstring for the design).

Why here. Scoring with a model needs the model's side (rain.checkpoint.load_model, transformers), which
rain.data may not import; rain.eval may import both, as `rain decontaminate` does for the benchmarks. This
module only builds a scorer, a function from a list of texts to a list of floats, and hands it to
rain.data.quality.score_folder, which decodes the documents and writes the files.

Each model reads the text with its own tokenizer, so a reference whose tokenizer differs from the folder's
(another rain run, GPT-2, a classifier's BERT vocabulary) works: the folder's tokens are decoded to text first.

- perplexity: bits per byte of the document's first --max-tokens tokens (in the reference's tokens), each
  predicted after a beginning token (rain: `<|endoftext|>`, which ends every document before it in training;
  Hugging Face: its BOS, else EOS; with neither, the first token is context and its bytes are not counted):
  bpb = the summed next-token loss in nats / ln 2 / the UTF-8 bytes of the tokens predicted. Lower is better.
  The reference: a rain run or checkpoint folder (its tokenizer.json), or a Hugging Face causal LM folder (any
  architecture transformers loads, with its tokenizer files), loaded from local files only.
- classifier: a Hugging Face sequence-classification folder (config.json's architectures name a
  *ForSequenceClassification model), its input truncated to --max-tokens. With one output (a regression, as
  FineWeb-Edu's classifier, whose 0-5 educational score is kept at int(round(score)) >= 3, i.e. a threshold of
  2.5 on the score written here) the score is that output; with several labels, the expected label index under
  the softmax (sum of p_i x i: labels read as ordered grades), or with --label NAME the probability of that
  label (a positive class). Higher is better.
- readability: Flesch reading ease (rain.data.quality.readability), no model. Higher is better.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from rain.data.quality import KINDS, readability_scorer, score_folder
from rain.errors import RainError

DEFAULT_MAX_TOKENS = 512
LN2 = math.log(2)


def _device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _hf_config(folder: Path) -> dict | None:
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise RainError(f"{path}: not readable as JSON (expected a Hugging Face model config)") from None
    if isinstance(config, dict) and ({"model_type", "architectures"} & set(config)):
        return config
    return None


def _hf_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise RainError(f"{folder}: no tokenizer could be loaded from its files ({str(exc).splitlines()[0]}); the model "
                        "folder needs its tokenizer (tokenizer.json, or the files save_pretrained writes)") from None


class PerplexityScorer:
    """Bits per byte of each text's first max_tokens tokens under a reference model (see the module docstring)."""

    def __init__(self, path: str | Path, max_tokens: int = DEFAULT_MAX_TOKENS, batch_size: int = 8,
                 device: str | None = None):
        self.folder = Path(path)
        if not self.folder.exists():
            raise RainError(f"--model {path}: no such folder (a rain run or checkpoint, or a Hugging Face causal LM "
                            "folder)")
        self.device = _device(device)
        self.batch_size = max(1, batch_size)
        config = _hf_config(self.folder)
        if config is not None:
            self._load_hf(config)
        else:
            self._load_rain()
        self.max_tokens = max(1, min(max_tokens, self.context - 1))  # + the beginning token

    def _load_rain(self) -> None:
        from rain.checkpoint import find, load_model, tokenizer

        checkpoint = find(self.folder)
        self.model, cfg = load_model(checkpoint, self.device)
        tok = tokenizer(checkpoint)
        self.encode = tok.encode_batch
        self.decode = tok.decode
        self.begin = tok.eot_id
        self.context = cfg.model.context
        self.hf = False
        self.meta = {"model": str(checkpoint.folder), "model_kind": "rain",
                     "tokenizer": str(checkpoint.folder / "tokenizer.json")}

    def _load_hf(self, config: dict) -> None:
        from transformers import AutoModelForCausalLM

        archs = config.get("architectures") or []
        if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
            raise RainError(f"--model {self.folder}: a Hugging Face {', '.join(archs)}, not a causal language model; "
                            "a perplexity reference is a rain run or a *ForCausalLM folder")
        tok = _hf_tokenizer(self.folder)
        try:
            self.model = AutoModelForCausalLM.from_pretrained(str(self.folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise RainError(f"--model {self.folder}: not loadable as a causal language model "
                            f"({str(exc).splitlines()[0]})") from None
        self.model.to(self.device).eval()
        self.encode = lambda texts: tok(texts, add_special_tokens=False)["input_ids"]
        self.decode = lambda ids: tok.decode(ids)
        self.begin = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.context = int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 20)
        self.hf = True
        self.meta = {"model": str(self.folder), "model_kind": "huggingface", "tokenizer": str(self.folder)}

    def __call__(self, texts: list[str]) -> list[float]:
        rows = []  # (input ids, UTF-8 bytes of the tokens predicted) per text
        for text, ids in zip(texts, self.encode(texts)):
            truncated = len(ids) > self.max_tokens
            ids = list(ids[: self.max_tokens])
            seq, counted = ([self.begin] + ids, ids) if self.begin is not None else (ids, ids[1:])
            if not counted:
                rows.append((seq, 0))  # nothing to predict: unscored (NaN), which no filter keeps
                continue
            whole = self.begin is not None and not truncated
            rows.append((seq, len((text if whole else self.decode(counted)).encode("utf-8"))))
        out = [math.nan] * len(texts)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))  # similar lengths share a batch
        for a in range(0, len(order), self.batch_size):
            chosen = [i for i in order[a: a + self.batch_size] if rows[i][1] > 0]
            if not chosen:
                continue
            nats = self._losses([rows[i][0] for i in chosen])
            for i, loss in zip(chosen, nats):
                out[i] = loss / LN2 / rows[i][1]
        return out

    @torch.no_grad()
    def _losses(self, seqs: list[list[int]]) -> list[float]:
        """The summed next-token loss (nats) of each sequence after its first token, batched with right padding
        (a causal model's real positions never see the padding after them)."""
        T = max(len(s) for s in seqs)
        idx = torch.zeros(len(seqs), T, dtype=torch.long)
        targets = torch.full((len(seqs), T), -100, dtype=torch.long)
        for r, s in enumerate(seqs):
            idx[r, : len(s)] = torch.tensor(s)
            targets[r, : len(s) - 1] = torch.tensor(s[1:])
        idx, targets = idx.to(self.device), targets.to(self.device)
        if self.hf:
            mask = (torch.arange(T, device=self.device)[None] < torch.tensor([len(s) for s in seqs],
                                                                             device=self.device)[:, None]).long()
            logits = self.model(input_ids=idx, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            losses = -logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * (targets != -100)
        else:
            losses = self.model(idx, targets, per_token=True).float()
        return losses.sum(dim=1).tolist()


class ClassifierScorer:
    """A Hugging Face sequence classifier's score for each text (see the module docstring)."""

    def __init__(self, path: str | Path, max_tokens: int = DEFAULT_MAX_TOKENS, batch_size: int = 8,
                 device: str | None = None, label: str | None = None):
        from transformers import AutoModelForSequenceClassification

        folder = Path(path)
        if not folder.is_dir():
            raise RainError(f"--model {path}: no such folder (a Hugging Face sequence-classification model folder)")
        config = _hf_config(folder)
        if config is None:
            raise RainError(f"--model {folder}: not a Hugging Face model folder (no config.json naming a model); "
                            "a classifier is a folder saved by save_pretrained of a *ForSequenceClassification model")
        archs = config.get("architectures") or []
        if not any(a.endswith("ForSequenceClassification") for a in archs):
            raise RainError(f"--model {folder}: not a sequence classifier (its config.json names "
                            f"{', '.join(archs) or 'no architecture'}); pass a *ForSequenceClassification folder, "
                            "e.g. FineWeb-Edu's classifier")
        self.tokenizer = _hf_tokenizer(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True)
        self.device = _device(device)
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token is None:  # decoder classifiers (Llama, Qwen3) often have none
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = max(1, batch_size) if self.tokenizer.pad_token is not None else 1
        if self.model.config.pad_token_id is None:  # needed to find each row's last token in a padded batch
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.max_tokens = max_tokens
        self.num_labels = int(self.model.config.num_labels)
        self.label_index = None
        if label is not None:
            names = {str(v): int(k) for k, v in (self.model.config.id2label or {}).items()}
            if label not in names:
                raise RainError(f"--label {label}: the classifier's labels are {', '.join(names) or 'unnamed'}")
            self.label_index = names[label]
        score = ("the regression output" if self.num_labels == 1 else
                 f"P({label})" if label is not None else "the expected label index")
        self.meta = {"model": str(folder), "model_kind": "huggingface", "tokenizer": str(folder),
                     "num_labels": self.num_labels, "score": score}

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> list[float]:
        out: list[float] = []
        for a in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[a: a + self.batch_size], truncation=True, max_length=self.max_tokens,
                                 padding=True, return_tensors="pt").to(self.device)
            logits = self.model(**enc).logits.float()
            if self.num_labels == 1:
                out += logits[:, 0].tolist()
                continue
            p = torch.softmax(logits, dim=-1)
            if self.label_index is not None:
                out += p[:, self.label_index].tolist()
            else:
                out += (p * torch.arange(p.shape[-1], device=p.device)).sum(-1).tolist()
        return out


def build_scorer(kind: str, model: str | None, max_tokens: int = DEFAULT_MAX_TOKENS, batch_size: int = 8,
                 device: str | None = None, label: str | None = None):
    """(scorer, meta for the scores file) of a kind."""
    if kind not in KINDS:
        raise RainError(f"--kind {kind!r}: choose one of {', '.join(KINDS)}")
    if kind == "readability":
        if model:
            raise RainError("--kind readability uses no model: leave out --model")
        return readability_scorer, {"model": None, "score": "Flesch reading ease"}
    if not model:
        raise RainError(f"--kind {kind} needs --model (a {'rain run or causal LM' if kind == 'perplexity' else 'sequence classifier'} folder)")
    if label is not None and kind != "classifier":
        raise RainError("--label names a classifier's label: it goes with --kind classifier")
    if kind == "perplexity":
        scorer = PerplexityScorer(model, max_tokens, batch_size, device)
        return scorer, {**scorer.meta, "max_tokens": scorer.max_tokens, "score": "bits per byte"}
    scorer = ClassifierScorer(model, max_tokens, batch_size, device, label)
    return scorer, {**scorer.meta, "max_tokens": max_tokens}


def score(data_dir: str | Path, kind: str, model: str | None = None, name: str | None = None,
          max_tokens: int = DEFAULT_MAX_TOKENS, batch_size: int = 8, device: str | None = None,
          label: str | None = None, log=print) -> dict:
    """Score the folder's training documents and write scores/NAME.npy and .json (NAME defaults to the kind)."""
    from rain.data.prepared import PreparedData

    PreparedData(data_dir)  # a bad folder is said before a model is loaded
    scorer, meta = build_scorer(kind, model, max_tokens, batch_size, device, label)
    return score_folder(data_dir, name or kind, kind, scorer, meta, batch=max(64, batch_size), log=log)
