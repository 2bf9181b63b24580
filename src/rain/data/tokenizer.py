"""Tokenizers trained with Hugging Face `tokenizers`, saved as a tokenizer.json that
`transformers.PreTrainedTokenizerFast(tokenizer_file=...)` loads with the same ids. Existing tokenizers load
from a tokenizer.json or from GPT-2's vocab.json + merges.txt.

Kinds (data.tokenizer_kind):
  bytelevel-bpe      BPE over UTF-8 bytes (GPT-2 style): every string is representable, a CJK character is
                     3 byte symbols until merges join them.
  unigram            SentencePiece-style Unigram over characters, with byte fallback: a character outside the
                     vocabulary becomes its UTF-8 bytes as <0x00>..<0xFF> tokens (never <unk>).
  bpe-byte-fallback  BPE over characters (the corpus's frequent characters are the alphabet), with the same
                     byte fallback.
Every kind decodes to exactly the text it encoded, after the normalisation it was trained with
(data.normalization = "nfkc" folds compatibility characters: "ﬁ" -> "fi", full-width "Ａ" -> "A"; that
is the only change). Words keep their leading space (byte-level BPE: GPT-2's word/number/punctuation regex;
the other two: split at spaces only, as SentencePiece does); no kind adds a space at the start of a text, so
languages written without spaces are not given one. All three are trained with `tokenizers`: the sentencepiece
library's Unigram gave no better bytes per token on Korean, Japanese or Chinese (docs/performance.md), and one
tokenizer.json is what transformers loads.

Pre-tokenisation (data.pretokenize): "cjk-chars" makes every Han, Hiragana and Katakana character its own
pre-token (tokens never join two of them: the vocabulary holds characters, not byte pieces or phrases);
"korean-morphemes" cuts text at morpheme boundaries in Python first (rain.data.morphemes, which tokenizer.json
cannot express), recorded in the sidecar file SIDECAR beside tokenizer.json."""

from __future__ import annotations

import json
from itertools import accumulate
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import (AddedToken, Regex, Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers,
                        trainers)

from rain.config import NORMALIZATIONS, PRETOKENIZE, TOKENIZER_KINDS
from rain.errors import RainError
from rain.files import write_atomic

EOT = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [EOT, IM_START, IM_END, PAD] + [f"<|reserved_{i}|>" for i in range(4)]
UNK = "<unk>"  # the Unigram model needs one; with byte fallback it is never produced
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]

KINDS = TOKENIZER_KINDS
SIDECAR = "pretokenize.json"  # beside tokenizer.json: what rain does to text before `tokenizers` sees it
CJK_CHAR = r"[\p{Han}\p{Hiragana}\p{Katakana}]"

# Words with their leading space, numbers in groups of 1-3 digits, punctuation runs, and runs of
# whitespace kept whole (code indentation becomes a few tokens, not one per space).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


# SentencePiece-style kinds split at spaces only: a word keeps one leading space (SentencePiece's "▁") and may
# join letters, digits and punctuation; a run of spaces gives its last space to the word after it.
# On held-out Korean, Japanese, Chinese, English and Python text it gave 1-14% more bytes per token than
# SPLIT_PATTERN for both kinds (docs/performance.md, "Tokenizer kinds: pre-tokeniser and library").
SPACE_SPLIT = r" ?[^ ]+| +(?= )| +$"


def _pre_tokenizer(kind: str = "bytelevel-bpe", pretokenize: str = "none"):
    steps = [pre_tokenizers.Split(Regex(CJK_CHAR), behavior="isolated")] if pretokenize == "cjk-chars" else []
    if kind == "bytelevel-bpe":
        steps.append(pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"))
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    else:
        steps.append(pre_tokenizers.Split(Regex(SPACE_SPLIT), behavior="isolated"))
    return pre_tokenizers.Sequence(steps)


class Tokenizer:
    """A thin wrapper that knows the end-of-text id and the pre-tokenisation rain applies before the HF tokenizer
    (pretokenize: "none", "cjk-chars" (inside tokenizer.json) or "korean-morphemes" (in Python, see SIDECAR))."""

    def __init__(self, hf: HFTokenizer, pretokenize: str = "none"):
        self.hf = hf
        eot = hf.token_to_id(EOT)
        if eot is None:
            raise RainError(f"tokenizer has no {EOT} token: train one with `rain prepare` or add it")
        self.eot_id = eot
        # cjk-chars lives in tokenizer.json itself (its first Split), so a loaded file says so without a sidecar
        if pretokenize == "none" and _splits_cjk_chars(hf):
            pretokenize = "cjk-chars"
        self.pretokenize = pretokenize
        if pretokenize == "korean-morphemes":
            from rain.data.morphemes import require_analyser

            require_analyser()  # never encode without the analyser the tokenizer was trained with

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise RainError(f"tokenizer {path}: file not found")
        pretokenize = read_sidecar(path)
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception on malformed files
            raise RainError(f"tokenizer {path}: cannot be read ({exc})") from None
        return cls(hf, pretokenize)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @property
    def kind(self) -> str:
        """"bytelevel-bpe", "unigram" or "bpe-byte-fallback" (a GPT-2 or other BPE file: "bytelevel-bpe")."""
        if isinstance(self.hf.model, models.Unigram):
            return "unigram"
        return "bpe-byte-fallback" if getattr(self.hf.model, "byte_fallback", False) else "bytelevel-bpe"

    @property
    def byte_fallback_ids(self) -> frozenset[int]:
        """Ids of the <0x00>..<0xFF> tokens a byte-fallback kind spells unknown characters with (empty otherwise)."""
        if self.kind == "bytelevel-bpe":
            return frozenset()
        return frozenset(i for i in map(self.hf.token_to_id, BYTE_TOKENS) if i is not None)

    @property
    def unk_id(self) -> int | None:
        return self.hf.token_to_id(UNK)

    def token_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def pieces(self, text: str) -> list[str] | None:
        """The pre-split pieces rain hands the HF tokenizer (korean-morphemes), or None: the text goes whole."""
        if self.pretokenize != "korean-morphemes":
            return None
        from rain.data.morphemes import split_morphemes

        return split_morphemes(text)

    def encode(self, text: str) -> list[int]:
        pieces = self.pieces(text)
        if pieces is None:
            return self.hf.encode(text, add_special_tokens=False).ids
        return self.hf.encode(pieces, is_pretokenized=True, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and each token's (start, end) character offsets in text; special-token strings count as specials."""
        pieces = self.pieces(text)
        if pieces is None:
            enc = self.hf.encode(text, add_special_tokens=False)
            return enc.ids, enc.offsets
        enc = self.hf.encode(pieces, is_pretokenized=True, add_special_tokens=False)
        starts = [0, *accumulate(map(len, pieces))]  # pre-split offsets are within each piece
        return enc.ids, [(starts[w] + s, starts[w] + e) for (s, e), w in zip(enc.offsets, enc.word_ids)]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.pretokenize == "korean-morphemes":
            inputs = [self.pieces(t) for t in texts]
            return [e.ids for e in self.hf.encode_batch_fast(inputs, is_pretokenized=True, add_special_tokens=False)]
        return [e.ids for e in self.hf.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special)

    def save(self, path: str | Path) -> None:
        """tokenizer.json at path, and the sidecar beside it when rain pre-splits text (a stale one is removed)."""
        path = Path(path)
        write_atomic(path, self.hf.to_str(pretty=True).encode())
        sidecar = sidecar_path(path)
        if self.pretokenize == "korean-morphemes":
            write_atomic(sidecar, (json.dumps(sidecar_content(self.pretokenize), indent=2) + "\n").encode())
        else:
            sidecar.unlink(missing_ok=True)


def _splits_cjk_chars(hf: HFTokenizer) -> bool:
    if hf.pre_tokenizer is None:
        return False
    steps = json.loads(hf.pre_tokenizer.__getstate__()).get("pretokenizers") or [{}]
    return steps[0].get("type") == "Split" and steps[0].get("pattern") == {"Regex": CJK_CHAR}


def sidecar_content(pretokenize: str) -> dict:
    return {"pretokenize": pretokenize,
            "note": "rain cuts text into Korean morphemes (kiwipiepy) before tokenizer.json; with transformers pass "
                    "rain.data.morphemes.split_morphemes(text) with is_split_into_words=True for the same ids"}


def sidecar_path(tokenizer_json: str | Path) -> Path:
    """SIDECAR beside tokenizer.json; NAME.pretokenize.json beside any other NAME.json, so tokenizers saved side by
    side in one folder keep their own settings."""
    path = Path(tokenizer_json)
    return path.with_name(SIDECAR if path.name == "tokenizer.json" else f"{path.stem}.{SIDECAR}")


def read_sidecar(tokenizer_json: Path) -> str:
    """The pre-tokenisation recorded beside a tokenizer.json ("none" without a sidecar)."""
    sidecar = sidecar_path(tokenizer_json)
    if not sidecar.is_file():
        return "none"
    try:
        value = json.loads(sidecar.read_text(encoding="utf-8"))["pretokenize"]
    except (OSError, ValueError, KeyError, TypeError):
        raise RainError(f"{sidecar}: unreadable (it says how text is split before {tokenizer_json.name}); "
                        "restore it from where the tokenizer came from") from None
    if value not in PRETOKENIZE or value == "cjk-chars":
        raise RainError(f"{sidecar}: unknown pretokenize {value!r} (known: korean-morphemes); written by a newer rain?")
    return value


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """A tokenizer.json, a folder holding one, or GPT-2-style files: a folder with vocab.json + merges.txt,
    or the path of a vocab.json with its merges file beside it (gpt2-vocab.json -> gpt2-merges.txt)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return Tokenizer.from_file(path / "tokenizer.json")
        return from_gpt2_files(path / "vocab.json", path / "merges.txt")
    if path.name.endswith("vocab.json"):
        return from_gpt2_files(path, path.with_name(path.name.replace("vocab.json", "merges.txt")))
    return Tokenizer.from_file(path)


def from_gpt2_files(vocab: Path, merges: Path) -> Tokenizer:
    """GPT-2's byte-level BPE: its own pre-tokeniser regex, no prefix space, <|endoftext|> as a special token."""
    for path in (vocab, merges):
        if not path.is_file():
            raise RainError(f"tokenizer {path}: file not found (GPT-2 needs vocab.json and merges.txt side by side)")
    try:
        hf = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    except Exception as exc:  # tokenizers raises plain Exception on malformed files
        raise RainError(f"tokenizer {vocab}: cannot be read with {merges.name} ({exc})") from None
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    return Tokenizer(hf)


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: list[str] = SPECIAL_TOKENS) -> Tokenizer:
    """Byte-level BPE (today's default kind)."""
    return train_tokenizer(texts, vocab_size, special_tokens=special_tokens)


def train_tokenizer(texts: Iterable[str], vocab_size: int, kind: str = "bytelevel-bpe", normalization: str = "none",
                    pretokenize: str = "none", special_tokens: list[str] = SPECIAL_TOKENS) -> Tokenizer:
    """A new tokenizer of `kind` (KINDS) with at most vocab_size tokens, trained on texts. Byte-fallback kinds keep
    256 of them for the <0xNN> byte tokens."""
    for name, value, known in (("tokenizer_kind", kind, KINDS), ("normalization", normalization, NORMALIZATIONS),
                               ("pretokenize", pretokenize, PRETOKENIZE)):
        if value not in known:
            raise RainError(f"data.{name} = {value!r}: use one of {', '.join(known)}")
    if pretokenize == "korean-morphemes":
        from rain.data.morphemes import require_analyser, split_morphemes

        require_analyser()
        # Each piece trains as its own sequence: the same pre-token counts as pre-split input.
        texts = (piece for text in texts for piece in split_morphemes(text))
    if kind == "bytelevel-bpe":
        hf = HFTokenizer(models.BPE())
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    else:
        budget = vocab_size - len(BYTE_TOKENS)
        if budget <= len(special_tokens) + 1:
            raise RainError(f"model.vocab_size {vocab_size} is too small for {kind}: it needs 256 byte tokens "
                            f"and at least {len(special_tokens) + 2} more")
        hf = HFTokenizer(models.Unigram() if kind == "unigram" else models.BPE(byte_fallback=True))
        hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
        if kind == "unigram":
            # The characters that spell "<0x41>" are always pieces, so literal text like that is never read as
            # a byte token (an unknown character there would make the byte piece the cheaper path).
            trainer = trainers.UnigramTrainer(vocab_size=budget, special_tokens=[UNK, *special_tokens], unk_token=UNK,
                                              initial_alphabet=list("<>x0123456789ABCDEF"), show_progress=False)
        else:
            # The most frequent characters form the alphabet (at most half the budget, for a Chinese corpus's
            # thousands of rare ones); the rest are spelled in byte tokens.
            trainer = trainers.BpeTrainer(vocab_size=budget, special_tokens=special_tokens,
                                          limit_alphabet=budget // 2, show_progress=False)
    if normalization == "nfkc":
        hf.normalizer = normalizers.NFKC()
    hf.pre_tokenizer = _pre_tokenizer(kind, pretokenize)
    hf.train_from_iterator(_batches(texts), trainer=trainer)
    if kind != "bytelevel-bpe":
        hf = _with_byte_tokens(hf)
    return Tokenizer(hf, pretokenize)


def _with_byte_tokens(hf: HFTokenizer) -> HFTokenizer:
    """The trained model with byte fallback on and the 256 <0xNN> tokens appended to its vocabulary (the trainers
    do not add them). A Unigram byte token gets a score so low that it never wins over spelling the literal text
    "<0x41>" with ordinary pieces; it is only used through the fallback."""
    spec = json.loads(hf.to_str())
    model = spec["model"]
    model["byte_fallback"] = True
    if model["type"] == "Unigram":
        known = {piece for piece, _ in model["vocab"]}
        model["vocab"] += [[t, -1e9] for t in BYTE_TOKENS if t not in known]
    else:
        vocab = model["vocab"]
        for t in BYTE_TOKENS:
            vocab.setdefault(t, len(vocab))
    return HFTokenizer.from_str(json.dumps(spec))


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
