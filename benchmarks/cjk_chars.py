"""data.pretokenize = "cjk-chars" against none on Japanese and Chinese, for every tokenizer kind: UTF-8 bytes per
token on held-out paragraphs (every fifth), the share of byte-fallback tokens, and for byte-level BPE how many
vocabulary entries and held-out tokens are not whole characters (they decode to U+FFFD alone). Vocab 2,048.

    cd benchmarks && python cjk_chars.py

Text: Rust by Example's Japanese and Chinese paragraphs as rustup installs them (no download)."""

from __future__ import annotations

from korean_morphemes import RBE
from sentencepiece_unigram import AllParagraphs

from rain.data.tokenizer import KINDS, train_tokenizer


def main() -> None:
    print("| text | kind | pretokenize | B/token | byte-fallback tokens | partial-character vocab / held-out tokens |")
    print("|---|---|---|---|---|---|")
    for lang in ("ja", "zh"):
        parser = AllParagraphs()
        parser.feed((RBE.parents[1] / lang / "print.html").read_text(encoding="utf-8"))
        train = [d for i, d in enumerate(parser.out) if i % 5]
        test = [d for i, d in enumerate(parser.out) if not i % 5]
        nbytes = sum(len(d.encode()) for d in test)
        for kind in KINDS:
            for pre in ("none", "cjk-chars"):
                tok = train_tokenizer(train, 2048, kind, pretokenize=pre)
                ids = [i for d in test for i in tok.encode(d)]
                fallback = sum(i in tok.byte_fallback_ids for i in ids) / len(ids)
                partial = ""
                if kind == "bytelevel-bpe":
                    vocab = sum("\ufffd" in tok.decode([i]) for i in range(tok.vocab_size))
                    partial = f"{vocab} / {sum(chr(0xFFFD) in tok.decode([i]) for i in ids) / len(ids):.1%}"
                print(f"| {lang} | {kind} | {pre} | {nbytes / len(ids):.2f} | {fallback:.1%} | {partial} |", flush=True)


if __name__ == "__main__":
    main()
