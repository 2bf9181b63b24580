"""`rain prepare` (text -> tokenizer + token shards), `rain data report` (what the model will read: realised
shares, filter counts, bytes/token, samples), `rain data filter` (keep documents by `rain score`'s scores) and
`rain tokenizer report` (bytes/token and tokens/word per source and language, two tokenizers compared)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rain.commands_common import add_config_args, config_from_args


def cmd_prepare(args) -> None:
    from rain.data.prepare import prepare

    cfg = config_from_args(args)
    if args.data:
        cfg.data.paths = args.data
    manifest = prepare(cfg, args.out, overwrite=args.overwrite)
    for split, stats in manifest["sources"].items():
        tokens = sum(s["tokens"] for s in stats.values())
        docs = sum(s["documents"] for s in stats.values())
        print(f"{split}: {docs:,} documents, {tokens:,} tokens in {len(manifest['splits'][split])} shard(s)")
    print(f"wrote {args.out}/manifest.json and tokenizer.json")


def cmd_report(args) -> None:
    from rain.data.report import report

    report(args.data_dir, args.out, samples=args.samples)
    print(f"wrote {Path(args.out or args.data_dir) / 'report.md'} (and report.json, doc_lengths.png)")


def cmd_filter(args) -> None:
    from rain.data.quality import filter_folder

    report = filter_folder(args.data_dir, args.scores, thresholds=args.threshold, quantiles=args.keep_quantile,
                           drop=args.drop, out=args.out, samples=args.samples)
    for name, e in report["by_source"].items():
        thr = "kept whole" if e["threshold"] is None else f"threshold {e['threshold']:.4g}"
        print(f"{name}: keep {e['kept']:,} of {e['documents']:,} documents, drop {e['dropped']:,} ({thr})")
    t = report["total"]
    if "dropped" in report:
        print(f"dropped {report['dropped']['documents']:,} training document(s) in {report['dropped']['folder']}")
    else:
        print(f"would drop {t['dropped']:,} of {t['documents']:,} training documents (nothing changed: --drop or --out "
              "to apply)")
    print(f"wrote {report['path']}")


def cmd_tokenizer_report(args) -> None:
    from rain.data.tokenizer_report import report, texts_from_files, texts_from_prepared

    texts = texts_from_prepared(args.data, args.documents) if args.data else texts_from_files(args.text)
    result = report(args.tokenizer, texts, args.out, origin=args.data or ", ".join(args.text))
    for t in result["tokenizers"]:
        total = t["rows"][-1]
        print(f"{t['name']}: {total['bytes_per_token']:.3f} bytes/token, {total['tokens_per_unit']:.3f} tokens/word "
              f"on {total['documents']:,} documents")
    print(f"wrote {Path(args.out) / 'report.md'} (and report.json)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="corpus -> BPE tokenizer + token shards", description=
                       "Read text, train a tokenizer (byte-level BPE by default; --set data.tokenizer_kind=unigram or "
                       "bpe-byte-fallback, data.normalization=nfkc, data.pretokenize=cjk-chars or korean-morphemes) and "
                       "write uint16/uint32 token shards plus a held-out validation split and manifest.json into --out. "
                       "With no --data, the built-in corpus is used.")
    add_config_args(p)
    p.add_argument("--data", nargs="+", help=(
        "files, folders (read recursively, e.g. a code repository) or globs: text files of any name (.txt, .md, "
        ".rst, .py, README, copyright, ...; binary files are skipped and counted), .gz text files (changelog.gz), "
        ".jsonl/.jsonl.gz/.jsonl.zst and .parquet (field `text`), .tar/.tar.gz/.tar.xz/.tar.bz2 archives of text "
        "files; or one mixture .toml (default: the built-in corpus)"))
    p.add_argument("--out", required=True, help="output folder for shards, manifest.json, tokenizer.json")
    p.add_argument("--overwrite", action="store_true", help="replace data already prepared in --out")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("data", help="inspect prepared data", description="Inspect a folder written by `rain prepare`.")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    r = data_sub.add_parser("report", help="realised mixture shares, filter counts, bytes/token, samples", description=
                            "Write report.md, report.json and doc_lengths.png: realised token shares per source, documents "
                            "and tokens removed by each filter, bytes per token, a document length histogram and a few "
                            "random samples per source.")
    r.add_argument("data_dir", help="a prepared data folder")
    r.add_argument("--out", help="where to write the report (default: the data folder)")
    r.add_argument("--samples", type=int, default=3, help="random documents shown per source (default: %(default)s)")
    r.set_defaults(func=cmd_report)

    f = data_sub.add_parser("filter", help="keep training documents by their quality scores (`rain score`)",
                            description="Choose the training documents to keep by scores/NAME (written by `rain score`): "
                            "a threshold, or the best share of each source's documents (CCNet-style). Writes "
                            "scores/NAME.filter.md and .json (counts per source, the documents nearest the threshold "
                            "on both sides); rerun it with other values freely, nothing is rescored. --drop rewrites "
                            "the training split in place, --out writes a filtered copy (the validation split is kept).")
    f.add_argument("data_dir", help="a prepared data folder with scores/NAME.npy")
    f.add_argument("--scores", required=True, metavar="NAME", help="which scores (scores/NAME.npy)")
    f.add_argument("--threshold", action="append", metavar="[SOURCE=]X", help="keep scores at or above X (perplexity: "
                   "at or below, lower is better); SOURCE= for one source, else every source without its own rule; "
                   "repeatable")
    f.add_argument("--keep-quantile", action="append", metavar="[SOURCE=]Q", help="keep the best share Q in (0, 1] of "
                   "each source's documents (SOURCE= for one source); repeatable")
    f.add_argument("--drop", action="store_true", help="rewrite the training split without the dropped documents")
    f.add_argument("--out", metavar="DIR", help="write the filtered folder here instead, leaving DATA as it is")
    f.add_argument("--samples", type=int, default=3, help="documents shown each side of the threshold per source "
                   "(default: %(default)s)")
    f.set_defaults(func=cmd_filter)

    p = sub.add_parser("tokenizer", help="inspect tokenizers", description="Inspect tokenizers on text.")
    tok_sub = p.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    t = tok_sub.add_parser("report", help="bytes/token and tokens/word per source and language; compare two",
                           description="Write report.md and report.json: UTF-8 bytes per token, tokens per word (per "
                           "character for languages without spaces), byte-fallback and unknown-token rates, per source "
                           "and per detected language, for one tokenizer or two side by side on the same text.")
    t.add_argument("--tokenizer", action="append", required=True, metavar="PATH", help="a tokenizer.json or a folder "
                   "holding one (a prepared data folder, a checkpoint); give it twice to compare two")
    given = t.add_mutually_exclusive_group(required=True)
    given.add_argument("--data", metavar="DIR", help="a prepared data folder: each source's first held-out documents")
    given.add_argument("--text", nargs="+", metavar="[NAME=]FILE", help="text files (paragraphs are documents) or "
                       ".jsonl (field `text`); the source is NAME or the file's name")
    t.add_argument("--documents", type=int, default=200, help="held-out documents read per source with --data "
                   "(default: %(default)s)")
    t.add_argument("--out", required=True, help="where to write report.md and report.json")
    t.set_defaults(func=cmd_tokenizer_report)
