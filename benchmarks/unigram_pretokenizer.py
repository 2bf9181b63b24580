"""The pre-tokeniser of the SentencePiece-style kinds (unigram, bpe-byte-fallback): rain's space split
(rain.data.tokenizer.SPACE_SPLIT) against the byte-level kind's GPT-style regex (SPLIT_PATTERN: letters, digit
groups and punctuation apart), UTF-8 bytes per token on held-out text (every fifth document), vocab 2,048.

    python benchmarks/unigram_pretokenizer.py [--vocab 2048]

Text (no download): Rust by Example's paragraphs in Korean, Japanese, Chinese and English as rustup installs them,
and the first 60 modules of this Python's standard library."""

from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path

from tokenizers import Regex, pre_tokenizers

from korean_morphemes import RBE
from sentencepiece_unigram import AllParagraphs
from rain.data import tokenizer as T


def texts() -> dict[str, list[str]]:
    out = {}
    for lang in ("ko", "ja", "zh", "en"):
        parser = AllParagraphs()
        parser.feed((RBE.parents[1] / ("" if lang == "en" else lang) / "print.html").read_text(encoding="utf-8"))
        out[lang] = parser.out
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out["python"] = [f.read_text(encoding="utf-8") for f in sorted(stdlib.glob("*.py"))[:60]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=2048)
    args = ap.parse_args()
    space = T._pre_tokenizer
    regex = lambda kind, pre: pre_tokenizers.Split(Regex(T.SPLIT_PATTERN), behavior="isolated")
    print("| text | held-out kB | kind | GPT-style regex B/token | space split B/token |\n|---|---|---|---|---|")
    for name, docs in texts().items():
        train, test = [d for i, d in enumerate(docs) if i % 5], [d for i, d in enumerate(docs) if not i % 5]
        nbytes = sum(len(d.encode()) for d in test)
        for kind in ("unigram", "bpe-byte-fallback"):
            rates = []
            for pre in (regex, space):
                T._pre_tokenizer = pre
                tok = T.train_tokenizer(train, args.vocab, kind)
                assert all(tok.decode(tok.encode(d)) == d for d in test)
                rates.append(nbytes / sum(len(tok.encode(d)) for d in test))
            T._pre_tokenizer = space
            print(f"| {name} | {nbytes / 1e3:.0f} | {kind} | {rates[0]:.2f} | {rates[1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
