"""What Korean morpheme pre-tokenisation (data.pretokenize = "korean-morphemes") costs when encoding: documents/s
and MB/s through prepare's worker pool (rain.data.encode.process, the code `rain prepare` runs) with 1 and 2
worker processes, for a byte-level BPE tokenizer without and with the morpheme step, plus the bytes per token.

    python benchmarks/korean_morphemes.py [--rbe PATH/rust-by-example/ko/print.html] [--vocab 4096] [--repeat 4]

Text: the Korean paragraphs of Rust by Example's translation as rustup installs it (no download); each paragraph
is a document. Both tokenizers are trained on the same paragraphs. Kiwi's model load (once per worker process) is
outside the timed pass: the pool is warmed on one chunk first."""

from __future__ import annotations

import argparse
import html.parser
import os
import platform
import time
from pathlib import Path

from rain.data.encode import Job, Pool
from rain.data.filters import FilterConfig
from rain.data.tokenizer import train_tokenizer

RBE = Path.home() / ".rustup/toolchains/stable-x86_64-unknown-linux-gnu/share/doc/rust/html/rust-by-example/ko/print.html"


class Paragraphs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.depth, self.parts, self.out = 0, [], []

    def handle_starttag(self, tag, attrs):
        if tag == "p":
            self.depth, self.parts = 1, []

    def handle_endtag(self, tag):
        if tag == "p" and self.depth:
            self.depth = 0
            text = " ".join("".join(self.parts).split())
            if any("\uac00" <= c <= "\ud7a3" for c in text):
                self.out.append(text)

    def handle_data(self, data):
        if self.depth:
            self.parts.append(data)


def encode_rate(tokenizer_json: Path, docs: list[str], workers: int, chunk: int = 256) -> tuple[float, float, int]:
    job = Job(FilterConfig(), True, 0, 0.0, str(tokenizer_json))
    chunks = [docs[i: i + chunk] for i in range(0, len(docs), chunk)]
    with Pool(workers) as pool:
        for f in [pool.submit(chunks[0], job) for _ in range(pool.workers * 2)]:  # load the tokenizer (and Kiwi) first
            f.result()
        t0 = time.perf_counter()
        tokens = sum(int(f.result().lengths.sum()) for f in [pool.submit(c, job) for c in chunks])
        seconds = time.perf_counter() - t0
    mb = sum(len(d.encode()) for d in docs) / 1e6
    return len(docs) / seconds, mb / seconds, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rbe", type=Path, default=RBE)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=4, help="encode the paragraphs this many times (more timing)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/korean_morphemes"))
    args = ap.parse_args()
    parser = Paragraphs()
    parser.feed(args.rbe.read_text(encoding="utf-8"))
    docs = parser.out
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{len(docs):,} Korean paragraphs, {sum(len(d.encode()) for d in docs) / 1e6:.2f} MB; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print("| pretokenize | workers | docs/s | MB/s | bytes/token |\n|---|---|---|---|---|")
    for pre in ("none", "korean-morphemes"):
        path = args.out / pre / "tokenizer.json"
        path.parent.mkdir(exist_ok=True)
        train_tokenizer(docs, args.vocab, pretokenize=pre).save(path)
        for workers in (1, 2):
            docs_s, mb_s, tokens = encode_rate(path, docs * args.repeat, workers)
            nbytes = sum(len(d.encode()) for d in docs) * args.repeat
            print(f"| {pre} | {workers} | {docs_s:,.0f} | {mb_s:.2f} | {nbytes / tokens:.2f} |")


if __name__ == "__main__":
    main()
