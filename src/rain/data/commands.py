"""`rain data report`: what the model will read — realised shares, filter counts, bytes/token, samples."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_report(args) -> None:
    from rain.data.report import report

    report(args.data_dir, args.out, samples=args.samples)
    print(f"wrote {Path(args.out or args.data_dir) / 'report.md'} (and report.json, doc_lengths.png)")


def register(sub: argparse._SubParsersAction) -> None:
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
