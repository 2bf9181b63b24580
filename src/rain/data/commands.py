"""`rain prepare` (text -> tokenizer + token shards) and `rain data report` (what the model will read: realised
shares, filter counts, bytes/token, samples)."""

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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="corpus -> BPE tokenizer + token shards", description=
                       "Read text, train a byte-level BPE tokenizer and write uint16/uint32 token shards plus a held-out "
                       "validation split and manifest.json into --out. With no --data, the built-in corpus is used.")
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
