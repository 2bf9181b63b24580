"""`rain data report`: what a prepared corpus is made of: realised shares against the weights, what each
filter removed, the languages detected, bytes per token on held-out text, document lengths (PNG) and a few
random documents."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rain.data.prepared import PreparedData
from rain.data.shards import load_doc_index
from rain.files import write_atomic, write_json_atomic
from rain.data.tokenizer import Tokenizer

LANGUAGES_LISTED = 8  # per source in report.md, by characters; the rest are one "other" row (report.json has all)
LENGTH_BINS = np.unique(np.round(np.logspace(0, 7, 57)).astype(np.int64))  # 1 .. 10M tokens, log-spaced
SAMPLE_CHARS = 600


def _scan_documents(data_dir: Path, manifest: dict, names: list[str], samples: int, seed: int):
    """Per source: a histogram of training-document lengths (tokens), their mean and max, and `samples`
    documents drawn at random as (shard, offset, length)."""
    rng = np.random.default_rng(seed)
    hist = {n: np.zeros(len(LENGTH_BINS) - 1, dtype=np.int64) for n in names}
    total = {n: [0, 0, 0] for n in names}  # documents, tokens, longest
    keep: dict[str, list[tuple[float, int, int, int]]] = {n: [] for n in names}
    for si, rec in enumerate(manifest["splits"]["train"]):
        if "index" not in rec:
            continue
        rows = load_doc_index(data_dir, rec)
        keys = rng.random(len(rows))
        for sid, name in enumerate(names):
            mine = rows[:, 2] == sid
            lengths = rows[mine, 1]
            if not len(lengths):
                continue
            hist[name] += np.histogram(np.clip(lengths, 1, LENGTH_BINS[-1] - 1), LENGTH_BINS)[0]
            total[name][0] += len(lengths)
            total[name][1] += int(lengths.sum())
            total[name][2] = max(total[name][2], int(lengths.max()))
            candidates = [(float(k), si, int(o), int(n)) for k, (o, n, _) in zip(keys[mine], rows[mine])]
            keep[name] = sorted(keep[name] + candidates)[:samples]  # the smallest random keys: a uniform sample
    return hist, total, keep


def length_axis(hist: dict[str, np.ndarray], bins: np.ndarray = LENGTH_BINS) -> tuple[float, float]:
    """The x range of the length plot: the bins that hold documents (of any source), and one empty bin either
    side so the outermost bars show whole; the full bin range when there are no documents."""
    used = np.flatnonzero(sum(hist.values(), np.zeros(len(bins) - 1, dtype=np.int64)))
    if not len(used):
        return float(bins[0]), float(bins[-1])
    return float(bins[max(used[0] - 1, 0)]), float(bins[min(used[-1] + 2, len(bins) - 1)])


def _plot(hist: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter

    class _PlainLog(LogFormatter):
        """The ticks a log axis labels (in-between ones too on a range of a decade or two), as 20 or 10,000
        rather than 2 x 10^1 or 1e+04."""

        def __call__(self, x, pos=None):
            return f"{x:,.0f}" if super().__call__(x, pos) else ""

    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    styles = ["-", "--", ":", "-."]  # sources of the same lengths would otherwise hide one another
    for i, (name, counts) in enumerate(hist.items()):
        if counts.sum():
            ax.stairs(counts / counts.sum(), LENGTH_BINS, ls=styles[i % len(styles)], lw=1.5,
                      label=f"{name} ({counts.sum():,} docs)")
    ax.set_xscale("log")
    ax.set_xlim(*length_axis(hist))
    ax.xaxis.set_major_formatter(_PlainLog())
    ax.xaxis.set_minor_formatter(_PlainLog(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel("share of documents")
    ax.set_title("training documents by length")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def report(data_dir: str | Path, out_dir: str | Path | None = None, samples: int = 3, seed: int = 0) -> dict:
    """Write report.md, report.json and doc_lengths.png (into out_dir, default data_dir); return the report."""
    data_dir = Path(data_dir)
    out = Path(out_dir) if out_dir is not None else data_dir
    out.mkdir(parents=True, exist_ok=True)
    data = PreparedData(data_dir)
    manifest, names = data.manifest, data.source_names
    tokenizer = Tokenizer.from_file(data.tokenizer_path)
    hist, totals, keep = _scan_documents(data_dir, manifest, names, samples, seed)
    stream = data.stream("train")
    mix = manifest.get("mixture", {})
    weights, realised = mix.get("weights", {}), mix.get("realised", {})
    sources = {}
    for name in names:
        train, val = manifest["sources"]["train"].get(name, {}), manifest["sources"]["val"].get(name, {})
        docs, tokens, longest = totals[name]
        drawn = [tokenizer.decode(stream.read(stream.starts[s] + o, stream.starts[s] + o + n).tolist())
                 for _, s, o, n in keep[name]]
        sources[name] = {
            "weight": weights.get(name), "realised": realised.get(name), "train": train, "val": val,
            "bytes_per_token": manifest.get("bytes_per_token", {}).get(name),
            "input": manifest.get("input", {}).get(name, {}), "removed": manifest.get("filters", {}).get(name, {}),
            "languages": _language_shares(manifest.get("languages", {}).get(name, {})),
            "length": {"mean": tokens / docs if docs else None, "max": longest,
                       "histogram": {"bins": LENGTH_BINS.tolist(), "counts": hist[name].tolist()}},
            "samples": drawn,
        }
    result = {"data_dir": str(data_dir), "mixture": mix.get("origin"), "ended": mix.get("ended", {}),
              "train_tokens": data.split_tokens("train"), "val_tokens": data.split_tokens("val"), "sources": sources}
    _plot(hist, out / "doc_lengths.png")
    write_json_atomic(out / "report.json", result)
    write_atomic(out / "report.md", _markdown(result).encode())
    return result


def _language_shares(stats: dict) -> dict:
    """The manifest's per-language training counts with their shares, largest share of characters first."""
    train = stats.get("train", {})
    docs, chars = sum(c["documents"] for c in train.values()) or 1, sum(c["chars"] for c in train.values()) or 1
    shares = {code: {**c, "document_share": c["documents"] / docs, "char_share": c["chars"] / chars}
              for code, c in sorted(train.items(), key=lambda kv: (-kv[1]["chars"], kv[0]))}
    return {**stats, "train": shares}


def _language_lines(sources: dict) -> list[str]:
    lines = ["", "## Languages (training documents)", "",
             ("Detected by langid on each document's first 2,000 characters, for sources with a `languages` keep-list "
              "and prose sources under the quality rules (others: not detected). The Gopher rules are English rules: "
              "they check only the documents detected as English."), "",
             "| source | language | documents | share of documents | characters | share of characters |",
             "|---|---|---:|---:|---:|---:|"]
    notes = []
    for name, s in sources.items():
        lang = s.get("languages", {})
        rows = list(lang.get("train", {}).items())
        if len(rows) > LANGUAGES_LISTED + 1:
            rest = rows[LANGUAGES_LISTED:]
            rows = rows[:LANGUAGES_LISTED] + [(f"other ({len(rest)} languages)", {
                k: sum(c[k] for _, c in rest) for k in ("documents", "document_share", "chars", "char_share")})]
        for code, c in rows:
            lines.append(f"| {name} | {code} | {c['documents']:,} | {_pct(c['document_share'])} | {c['chars']:,} | "
                         f"{_pct(c['char_share'])} |")
        if not lang.get("detected"):
            lines.append(f"| {name} | not detected | | | | |")
        if lang.get("gopher") == "english":
            notes.append(f"- {name}: Gopher rules: English only ({lang.get('not_gopher_checked', 0):,} non-English "
                         f"documents not checked)")
        elif lang.get("gopher") == "all":
            notes.append(f"- {name}: Gopher rules: every document, whatever its language (langid is not installed: "
                         f"pip install 'rain[lang]')")
    return lines + (["", *notes] if notes else [])


def _skipped_lines(sources: dict, key: str, count: str, title: str) -> list[str]:
    """Every file or record skipped for its content, by name and reason (manifest.json keeps the first 100)."""
    lines = []
    for name, s in sources.items():
        listed, total = s["input"].get(key, []), s["input"].get(count, 0)
        more = [f"- {name}: ... and {total - len(listed):,} more"] if total > len(listed) else []
        lines += [f"- {name}: {where}" for where in listed] + more
    return ["", f"{title}:", "", *lines] if lines else []


def _markdown(r: dict) -> str:
    lines = [f"# Data report: {r['data_dir']}", ""]
    if r["mixture"]:
        lines.append(f"Mixture: `{r['mixture']}`. ")
    if r["ended"]:
        lines.append(f"The run {'**stopped short**: ' if r['ended'].get('short') else 'ended: '}{r['ended']['message']}.")
    lines += ["", f"Training tokens: {r['train_tokens']:,}; validation tokens: {r['val_tokens']:,}.", "",
              "## Shares (training tokens, counting the `<|endoftext|>` after each document)", "",
              "| source | weight | realised | documents | tokens | bytes | val documents | val tokens | bytes/token (held-out) | mean length |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in r["sources"].items():
        t, v = s["train"], s["val"]
        mean = f"{s['length']['mean']:.0f}" if s["length"]["mean"] else "-"
        lines.append(f"| {name} | {_pct(s['weight'])} | {_pct(s['realised'])} | {t.get('documents', 0):,} | "
                     f"{t.get('tokens', 0):,} | {t.get('bytes', 0):,} | {v.get('documents', 0):,} | {v.get('tokens', 0):,} | "
                     f"{s['bytes_per_token'] or '-'} | {mean} |")
    lines += ["", "## Input problems (skipped and counted)", "",
              ("Binary: files and records that are not text (NUL bytes, mostly undecodable, or many control characters). "
               "Too long: JSON lines of over 12 x data.max_doc_chars bytes, too long to parse in bounded memory. Cut: "
               "records longer than data.max_doc_chars, kept as several documents."), "",
              "| source | records | bad JSON lines | missing text field | empty | non-UTF-8 bytes replaced | binary | too long | cut |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in r["sources"].items():
        i = s["input"]
        lines.append(f"| {name} | {i.get('records', 0):,} | {i.get('bad_json', 0):,} | {i.get('missing_field', 0):,} | "
                     f"{i.get('empty', 0):,} | {i.get('bad_bytes', 0):,} | {i.get('binary', 0):,} | "
                     f"{i.get('too_long', 0):,} | {i.get('split', 0):,} |")
    examples = [f"- {name}: {e}" for name, s in r["sources"].items() for e in s["input"].get("examples", [])]
    lines += (["", "First problems seen:", "", *examples] if examples else [])
    lines += _skipped_lines(r["sources"], "skipped_files", "binary", "Skipped as binary (not text)")
    lines += _skipped_lines(r["sources"], "skipped_too_long", "too_long", "Skipped as too long")
    lines += ["", "## Filters (documents removed)", "",
              "Length-, language- and quality-filtered documents are not tokenised: ≈ marks their tokens estimated from bytes.", "",
              "| source | filter | documents | tokens | bytes | rules |", "|---|---|---:|---:|---:|---|"]
    for name, s in r["sources"].items():
        for family, b in sorted(s["removed"].items()):
            rules = ", ".join(f"{k} {v}" for k, v in sorted(b.get("rules", {}).items(), key=lambda kv: -kv[1]))
            approx = "≈" if b.get("tokens_estimated") else ""
            lines.append(f"| {name} | {family} | {b['documents']:,} | {approx}{b['tokens']:,} | {b['bytes']:,} | {rules} |")
    lines += _language_lines(r["sources"])
    lines += ["", "## Document lengths", "", "![document lengths](doc_lengths.png)", "", "## Random samples", ""]
    for name, s in r["sources"].items():
        lines += [f"### {name}", ""]
        for text in s["samples"]:
            clipped = text[:SAMPLE_CHARS] + (" [...]" if len(text) > SAMPLE_CHARS else "")
            lines += ["```text", clipped.replace("```", "'''"), "```", ""]
    return "\n".join(lines) + "\n"

