"""rain's "unigram" kind (Hugging Face tokenizers' Unigram with byte fallback) against the sentencepiece library's
Unigram with byte fallback, trained on the same Korean, Japanese and Chinese paragraphs with the same vocabulary
size: UTF-8 bytes per token on held-out paragraphs (every fifth), exact round trip, training time. It decides
whether rain should train Unigram with sentencepiece instead (docs/performance.md says what it showed).

    pip install sentencepiece   # not a rain dependency: only this comparison uses it
    python benchmarks/sentencepiece_unigram.py [--vocab 4096]

Text: Rust by Example's Korean, Japanese and Chinese translations as rustup installs them (paragraphs, no
download). sentencepiece runs with its normalisation off (identity), no dummy prefix and whitespace kept, so both
sides see the same text and must give it back exactly."""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import sentencepiece as spm
from korean_morphemes import RBE, Paragraphs

from rain.data.tokenizer import train_tokenizer


class AllParagraphs(Paragraphs):
    def handle_endtag(self, tag):
        if tag == "p" and self.depth:
            self.depth = 0
            text = " ".join("".join(self.parts).split())
            if text:
                self.out.append(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--rbe", type=Path, default=RBE.parents[1], help="the rust-by-example folder")
    args = ap.parse_args()
    print("| language | test kB | tokenizers B/token | sentencepiece B/token | round trip (both) | train s (tok / spm) | vocab (tok / spm) |")
    print("|---|---|---|---|---|---|---|")
    for lang in ("ko", "ja", "zh"):
        parser = AllParagraphs()
        parser.feed((args.rbe / lang / "print.html").read_text(encoding="utf-8"))
        train = [d for i, d in enumerate(parser.out) if i % 5]
        test = [d for i, d in enumerate(parser.out) if not i % 5]
        nbytes = sum(len(d.encode()) for d in test)
        t0 = time.perf_counter()
        ours = train_tokenizer(train, args.vocab, "unigram")
        t_ours = time.perf_counter() - t0
        model = io.BytesIO()
        t0 = time.perf_counter()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(train), model_writer=model, vocab_size=args.vocab,
                                       model_type="unigram", byte_fallback=True, normalization_rule_name="identity",
                                       add_dummy_prefix=False, remove_extra_whitespaces=False, hard_vocab_limit=False,
                                       minloglevel=2)
        t_spm = time.perf_counter() - t0
        sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
        exact = all(ours.decode(ours.encode(d)) == d and sp.decode(sp.encode(d)) == d for d in test)
        n_ours, n_spm = sum(len(ours.encode(d)) for d in test), sum(len(sp.encode(d)) for d in test)
        print(f"| {lang} | {nbytes / 1e3:.0f} | {nbytes / n_ours:.2f} | {nbytes / n_spm:.2f} | {exact} | "
              f"{t_ours:.1f} / {t_spm:.1f} | {ours.vocab_size} / {sp.get_piece_size()} |")


if __name__ == "__main__":
    main()
