"""Byte-level BPE with Hugging Face `tokenizers`, saved as a tokenizer.json that
`transformers.PreTrainedTokenizerFast(tokenizer_file=...)` loads with the same ids. Existing tokenizers load
from a tokenizer.json or from GPT-2's vocab.json + merges.txt."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import AddedToken, Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

from rain.errors import RainError

EOT = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [EOT, IM_START, IM_END, PAD] + [f"<|reserved_{i}|>" for i in range(4)]

# Words with their leading space, numbers in groups of 1-3 digits, punctuation runs, and runs of
# whitespace kept whole (code indentation becomes a few tokens, not one per space).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _pre_tokenizer():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


class Tokenizer:
    """A thin wrapper that knows the end-of-text id; everything else is the HF tokenizer."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        eot = hf.token_to_id(EOT)
        if eot is None:
            raise RainError(f"tokenizer has no {EOT} token: train one with `rain prepare` or add it")
        self.eot_id = eot

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise RainError(f"tokenizer {path}: file not found")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as exc:  # tokenizers raises plain Exception on malformed files
            raise RainError(f"tokenizer {path}: cannot be read ({exc})") from None

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def token_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special)

    def save(self, path: str | Path) -> None:
        self.hf.save(str(path))


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
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = _pre_tokenizer()
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(_batches(texts), trainer=trainer)
    return Tokenizer(hf)


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
