"""Tokenizer kinds and vocabulary sizes compared on English, code, Korean, Japanese and Chinese text: every
tokenizer is trained on the same text (4/5 of each source's documents) and measured on the held-out fifth with
rain.data.tokenizer_report (the figures `rain tokenizer report` prints): UTF-8 bytes per token, tokens per word
(per character for Japanese and Chinese), and byte-fallback tokens.

    python benchmarks/tokenizer_kinds.py --out /tmp/tokenizer_kinds [--vocab 4096 8192 16384]

Text (nothing is downloaded):
- c4, wiki: ../shared/data/corpus's C4 sample (300 documents) and Wikipedia sample (30 articles), English.
- code: the top-level modules of this Python's standard library (sysconfig's stdlib folder), up to 2.5 MB.
- rbe-en, rbe-ko, rbe-ja, rbe-zh: the paragraphs of Rust by Example (rust-lang/rust-by-example, MIT or
  Apache-2.0) in English and its Korean, Japanese and Chinese translations, as rustup installs them
  (share/doc/rust/html/rust-by-example/{,ko/,ja/,zh/}print.html; --rbe to point elsewhere): technical prose with
  Rust identifiers in it, 70,000 Korean characters in all. Code blocks are left out.

Writes OUT/figures.json, OUT/figures.md, the tokenizers (OUT/tok/KIND-VOCAB/tokenizer.json) and the held-out
text (OUT/text/SOURCE.txt), so that any two can then be compared with
`rain tokenizer report --tokenizer OUT/tok/A --tokenizer OUT/tok/B --text OUT/text/*.txt --out DIR`."""

from __future__ import annotations

import argparse
import json
import sysconfig
import time
from pathlib import Path

from rain.data import tokenizer_report as tr
from rain.data.tokenizer import train_tokenizer

CORPUS = Path(__file__).resolve().parents[2] / "shared/data/corpus"
RBE = Path.home() / ".rustup/toolchains/stable-x86_64-unknown-linux-gnu/share/doc/rust/html/rust-by-example"
LANGUAGE = {"c4": "en", "wiki": "en", "code": "code", "rbe-en": "en", "rbe-ko": "ko", "rbe-ja": "ja", "rbe-zh": "zh"}
# (kind, normalization, pretokenize)
ARMS = [("bytelevel-bpe", "none", "none"), ("bpe-byte-fallback", "none", "none"), ("unigram", "none", "none"),
        ("bytelevel-bpe", "none", "korean-morphemes"), ("unigram", "nfkc", "korean-morphemes")]
CODE_BYTES = 2_500_000


def rbe_paragraphs(path: Path) -> list[str]:
    """The prose of an mdBook print.html: its paragraphs and list items (not code), whitespace collapsed."""
    from lxml import html

    main = html.parse(str(path)).getroot().xpath("//main")[0]
    out = []
    for node in main.iter("p", "li"):
        if node.tag == "li" and node.xpath(".//p"):
            continue  # its paragraphs are read on their own
        text = " ".join(node.text_content().split())
        if len(text) >= 20:
            out.append(text)
    return out


def sources(rbe: Path) -> dict[str, list[str]]:
    c4 = [json.loads(line)["text"] for line in (CORPUS / "c4_demo/c4_demo.jsonl").read_text().splitlines()]
    wiki = [line.strip() for line in (CORPUS / "wikipedia_demo/wiki_demo.txt").read_text().splitlines() if line.strip()]
    code, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if size + len(text) > CODE_BYTES:
            break
        code.append(text)
        size += len(text)
    out = {"c4": c4, "wiki": wiki, "code": code}
    for lang, sub in (("en", ""), ("ko", "ko/"), ("ja", "ja/"), ("zh", "zh/")):
        out[f"rbe-{lang}"] = rbe_paragraphs(rbe / sub / "print.html")
    return out


def split(docs: list[str]) -> tuple[list[str], list[str]]:
    """Every fifth document held out."""
    return [d for i, d in enumerate(docs) if i % 5 != 4], [d for i, d in enumerate(docs) if i % 5 == 4]


def arm_name(kind: str, normalization: str, pretokenize: str) -> str:
    return kind + (f"+{normalization}" if normalization != "none" else "") + (
        f"+{pretokenize}" if pretokenize != "none" else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--rbe", type=Path, default=RBE, help="the rust-by-example html folder")
    args = ap.parse_args()
    out = Path(args.out)
    (out / "tok").mkdir(parents=True, exist_ok=True)
    (out / "text").mkdir(exist_ok=True)
    data = {name: split(docs) for name, docs in sources(args.rbe).items()}
    train = [d for tr_docs, _ in data.values() for d in tr_docs]
    held = {name: [(LANGUAGE[name], d) for d in test] for name, (_, test) in data.items()}
    for name, (tr_docs, test) in data.items():
        (out / "text" / f"{name}.txt").write_text("\n\n".join(test) + "\n")
        print(f"{name}: {len(tr_docs)} training documents ({sum(len(d.encode()) for d in tr_docs):,} bytes), "
              f"{len(test)} held out ({sum(len(d.encode()) for d in test):,} bytes)", flush=True)
    results = []
    for vocab in args.vocab:
        for kind, norm, pre in ARMS:
            t0 = time.perf_counter()
            tok = train_tokenizer(train, vocab, kind=kind, normalization=norm, pretokenize=pre)
            trained = time.perf_counter() - t0
            name = f"{arm_name(kind, norm, pre)}-{vocab}"
            (out / "tok" / name).mkdir(exist_ok=True)  # one folder each: a pre-tokenising sidecar is per folder
            tok.save(out / "tok" / name / "tokenizer.json")
            m = tr.measure(tok, name, held)
            rows = {r["name"]: r for r in tr.rows(m) if r["group"] == "source"}
            results.append({"arm": arm_name(kind, norm, pre), "vocab": vocab, "train_seconds": round(trained, 1),
                            "sources": {s: {**tr.figures(c, LANGUAGE[s]), "byte_fallback": c.byte_fallback}
                                        for s, c in m.by_source.items()}})
            print(f"{name}: trained in {trained:.1f} s; " + ", ".join(
                f"{s} {r['bytes_per_token']:.2f}" for s, r in rows.items()), flush=True)
    (out / "figures.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "figures.md").write_text(markdown(results))
    print(markdown(results))


def markdown(results: list[dict]) -> str:
    names = list(LANGUAGE)
    lines = ["Bytes per token (held-out text; higher is better):", "",
             "| tokenizer | vocab | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for r in results:
        lines.append(f"| {r['arm']} | {r['vocab']:,} | " + " | ".join(
            f"{r['sources'][s]['bytes_per_token']:.2f}" for s in names) + " |")
    lines += ["", ("Tokens per word (en, ko: whitespace-separated words) or per character (ja, zh); byte-fallback "
                   "tokens as a share of ko/ja/zh tokens:"), "",
              ("| tokenizer | vocab | c4 /word | wiki /word | rbe-en /word | rbe-ko /word | rbe-ja /char | rbe-zh /char "
               "| fallback ko | fallback ja | fallback zh |"), "|---|---:|" + "---:|" * 9]
    for r in results:
        s = r["sources"]
        per = " | ".join(f"{s[n]['tokens_per_unit']:.2f}" for n in ("c4", "wiki", "rbe-en", "rbe-ko", "rbe-ja", "rbe-zh"))
        fb = " | ".join(f"{s[n]['byte_fallback_rate']:.2%}" for n in ("rbe-ko", "rbe-ja", "rbe-zh"))
        lines.append(f"| {r['arm']} | {r['vocab']:,} | {per} | {fb} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
