"""Data pipeline speed and memory on the real samples in ../shared/data (not a test; numbers go to
docs/performance.md, "Data pipeline").

1. End-to-end tokenising (read, filter, mix, encode, write: `rain prepare`'s shard pass) on the local rain-v2
   mixture against raw `tokenizers` encode_batch on exactly the text that pass processed, alternating runs.
2. Peak RSS (the prepare process and its workers together) at 1x and 10x the input (the samples repeated).
3. The loader's 64 x 1024 batch against a tiny-preset training step.

    python benchmarks/data_throughput.py [--repeats 3] [--skip-memory] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
CORPUS = SHARED / "corpus"


def local_mixture(path: Path, budget: int = 0) -> Path:
    """benchmarks/rain-v2-local.toml with absolute paths and this interpreter's standard library."""
    text = (HERE / "rain-v2-local.toml").read_text()
    text = text.replace("../../shared/data", str(SHARED)).replace('"/usr/lib/python3.11"', json.dumps(str(STDLIB)))
    path.write_text(text.replace("budget = 0 ", f"budget = {budget} "))
    return path


def repeated_mixture(path: Path, copies: int, dedup: bool) -> Path:
    """Prose and math samples, each file listed `copies` times; no weights (every record is read)."""
    web = [str(CORPUS / "c4_demo/c4_demo.jsonl"), str(CORPUS / "wikipedia_demo/wiki_demo.txt")] * copies
    gsm = {"path": str(CORPUS / "gsm8k_train/train.jsonl"), "text": "{question}\n\n{answer}"}
    comp = {"path": str(CORPUS / "math_competition/math_test_mosaic.jsonl"), "text": "{context}\n\n{chain_of_thought}"}
    math = ", ".join(f'{{ path = {json.dumps(m["path"])}, text = {json.dumps(m["text"])} }}' for m in [gsm, comp] * copies)
    path.write_text(f"""[filters]
min_chars = 200
quality = true
exact_dedup = {str(dedup).lower()}
near_dedup = {str(dedup).lower()}
[[source]]
name = "web"
split = "line"
location = {json.dumps(web)}
[[source]]
name = "math"
kind = "math"
location = [{math}]
""")
    return path


def config(mixture: Path, tokenizer: str = "train", **data):
    from rain.config import RunConfig

    cfg = RunConfig()
    cfg.data.mixture = str(mixture)
    cfg.data.tokenizer = tokenizer
    cfg.data.shard_tokens = 10_000_000
    cfg.data.tokenizer_sample_bytes = 20_000_000
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def processed_texts(manifest: dict, mixture: Path) -> list[str]:
    """The documents the shard pass read, in order: each source's first N text records, N = documents it
    kept, held out or removed."""
    from rain.data.mixture import load_mixture
    from rain.data.sources import read_records

    mix = load_mixture(mixture)
    texts = []
    for source in mix.sources:
        name = source.name
        n = sum(manifest["sources"][s][name]["documents"] for s in ("train", "val"))
        n += sum(b["documents"] for b in manifest["filters"][name].values())
        for record in read_records(source, manifest["config"]["data"]["seed"]):
            if n == 0:
                break
            if record.text is not None:
                texts.append(record.text)
                n -= 1
    return texts


def raw_encode(tokenizer_path: Path, texts: list[str], chunk_bytes: int = 1 << 22) -> tuple[float, int]:
    """Seconds and tokens for tokenizers' encode_batch (all cores) over the texts, in chunks of ~4 MB."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.encode_special_tokens = True
    chunks, chunk, size = [], [], 0
    for t in texts:
        chunk.append(t)
        size += len(t)
        if size >= chunk_bytes:
            chunks.append(chunk)
            chunk, size = [], 0
    chunks.append(chunk)
    t0, c0, tokens = time.perf_counter(), time.process_time(), 0
    for c in chunks:
        tokens += sum(len(e.ids) for e in tok.encode_batch(c, add_special_tokens=False))
    return time.perf_counter() - t0, time.process_time() - c0, tokens


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (prepare's workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def throughput(work: Path, repeats: int) -> dict:
    from rain.data.prepare import prepare

    mix = local_mixture(work / "local.toml")
    first = prepare(config(mix), work / "trained", log=lambda *_: None)
    tokenizer = work / "trained" / "tokenizer.json"
    texts = processed_texts(first, mix)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    pipeline, raw = [], []
    for i in range(repeats):  # alternate, so both see the same machine load
        seconds, cpu, tokens = raw_encode(tokenizer, texts)
        raw.append({"seconds": seconds, "cpu": cpu, "tokens": tokens})
        c0 = cpu_seconds()
        m = prepare(config(mix, str(tokenizer)), work / "run", overwrite=True, log=lambda *_: None)
        # the shard pass's share of the CPU time (the rest is the report and setup)
        cpu = (cpu_seconds() - c0) * m["timing"]["shards"] / m["seconds"]
        pipeline.append({"seconds": m["timing"]["shards"], "cpu": cpu})
    nofilter = work / "nofilter.toml"
    nofilter.write_text(mix.read_text().replace("quality = true", "quality = false")
                        .replace("exact_dedup = true", "exact_dedup = false").replace("near_dedup = true", "near_dedup = false"))
    m = prepare(config(nofilter, str(tokenizer)), work / "nofilter", overwrite=True, log=lambda *_: None)
    nofilter_bytes = sum(len(t.encode("utf-8")) for t in processed_texts(m, nofilter))
    tokens = raw[0]["tokens"]
    best = lambda xs, k="seconds": min(x[k] for x in xs)  # noqa: E731  (least disturbed by other load)
    med = lambda xs, k="seconds": statistics.median(x[k] for x in xs)  # noqa: E731
    return {
        "input_bytes": nbytes, "documents": len(texts), "tokens": tokens,
        "train_tokens": first["mixture"]["train_tokens"], "realised": first["mixture"]["realised"],
        "tokenizer_training_seconds": first["timing"]["tokenizer"],
        "raw_MBps": nbytes / best(raw) / 1e6, "raw_tokens_per_s": tokens / best(raw),
        "pipeline_MBps": nbytes / best(pipeline) / 1e6, "pipeline_tokens_per_s": tokens / best(pipeline),
        "ratio_best": best(raw) / best(pipeline), "ratio_median": med(raw) / med(pipeline),
        "ratio_cpu": med(raw, "cpu") / med(pipeline, "cpu"),
        "runs": {"raw": raw, "pipeline": pipeline},
        "pipeline_no_filters_MBps": nofilter_bytes / m["timing"]["shards"] / 1e6,
        "tokenizer": str(tokenizer), "data_dir": str(work / "run"),
    }


def memory(pid: int) -> tuple[int, int]:
    """(resident bytes of the process, proportional bytes of it and all its descendants: pages the forked
    workers share with it are counted once)."""
    rss, pss, stack = 0, 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                if p == pid:
                    rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
            with open(f"/proc/{p}/smaps_rollup") as f:
                pss += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            pass
    return rss, pss


def peak_rss(work: Path, copies: int, dedup: bool, tokenizer: str) -> dict:
    mix = repeated_mixture(work / f"rep{copies}_{dedup}.toml", copies, dedup)
    out = work / f"rep{copies}_{dedup}"
    cmd = [sys.executable, "-m", "rain.cli", "prepare", "--data", str(mix), "--out", str(out), "--overwrite",
           "--set", f"data.tokenizer={json.dumps(tokenizer)}", "--set", "data.shard_tokens=10000000",
           "--set", "data.val_fraction=0.005", "--set", "model.vocab_size=16384"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak_rss, peak_pss, t0 = 0, 0, time.time()
    while proc.poll() is None:
        rss, pss = memory(proc.pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.05)
    if proc.returncode:
        raise SystemExit(f"prepare failed: {' '.join(cmd)}")
    manifest = json.loads((out / "manifest.json").read_text())
    train = sum(s["tokens"] for s in manifest["sources"]["train"].values())
    read = sum(i["records"] for i in manifest["input"].values())
    return {"copies": copies, "dedup": dedup, "records_read": read, "train_tokens": train, "seconds": time.time() - t0,
            "peak_rss_main_MB": peak_rss / 1e6, "peak_pss_with_workers_MB": peak_pss / 1e6}


def loader_vs_step(data_dir: str) -> dict:
    import numpy as np
    import torch

    from rain.config import load_config
    from rain.data.loader import WindowLoader
    from rain.data.shards import open_split
    from rain.model.transformer import Transformer
    from rain.train.optim import build_optimizer

    torch.set_num_threads(os.cpu_count() or 1)
    loader = WindowLoader(open_split(data_dir, "train"), 1024, 64, seed=0)
    loader.next_batch()
    t0 = time.perf_counter()
    for _ in range(200):
        loader.next_batch()
    fetch = (time.perf_counter() - t0) / 200
    cfg = load_config("tiny")
    model = Transformer(cfg.model)
    opt = build_optimizer(model, cfg.train, "cpu")
    x = torch.randint(0, cfg.model.vocab_size, (cfg.train.micro_batch, cfg.model.context + 1))
    times = []
    for i in range(8):
        t0 = time.perf_counter()
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return {"fetch_64x1024_ms": fetch * 1e3, "tiny_step_ms": step * 1e3, "fetch_share_of_step": fetch / step,
            "tiny_batch": f"{cfg.train.micro_batch}x{cfg.model.context}", "loader_windows": int(np.int64(loader.windows_per_epoch()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--only-memory", action="store_true", help="train a tokenizer, then only the memory runs")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    if not CORPUS.is_dir():
        raise SystemExit(f"{SHARED} not found: the benchmark reads the shared samples")
    results = {"cpus": os.cpu_count(), "load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only_memory:
            from rain.data.prepare import prepare

            prepare(config(repeated_mixture(work / "t.toml", 1, False)), work / "t", log=lambda *_: None)
            tp = {"tokenizer": str(work / "t" / "tokenizer.json"), "data_dir": str(work / "t")}
        else:
            results["throughput"] = tp = throughput(work, args.repeats)
            print(json.dumps(tp, indent=2), flush=True)
        if not args.skip_memory:
            results["memory"] = [peak_rss(work, c, d, tp["tokenizer"]) for d in (False, True) for c in (1, 10)]
            print(json.dumps(results["memory"], indent=2), flush=True)
        results["loader"] = loader_vs_step(tp["data_dir"])
        print(json.dumps(results["loader"], indent=2), flush=True)
    results["load_average_after"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
