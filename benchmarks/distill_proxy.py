"""Distillation on a CPU proxy: a tiny student trained alone vs the same student distilled from a larger rain model
trained on the same data (rain.train.distill), at equal student FLOPs.

The data: prose excerpts in ../shared/data/corpus (C4, Wikipedia and the Python docs' reStructuredText, one
document a line), prepared once with a 4,096-token tokenizer. The teacher (4 x 128 by default) trains on it first;
each student (2 x 64 by default) then trains the same number of steps on the same batches in the same order (the
window order and the initial weights are functions of train.seed, and the teacher consumes no random numbers),
alone and with the teacher's KL term, so the students spend the same FLOPs; the teacher's forward pass on each batch
is extra and reported apart. Validation bits per byte of each is on the same held-out windows.

    nice python benchmarks/distill_proxy.py --out /tmp/distill --teacher-steps 400 --steps 400 --seeds 1337,1338 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from rain.config import load_config
from rain.data.prepare import prepare
from rain.model.transformer import Transformer
from rain.train.metrics import flops_per_token
from rain.train.trainer import train

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent.parent / "shared" / "data" / "corpus"
MIXTURE = """[mixture]
budget = 0

[filters]
min_chars = 200
exact_dedup = true

[[source]]
name = "web"
weight = 1.0
kind = "prose"
split = "line"
location = ["{corpus}/c4_demo/c4_demo.jsonl", "{corpus}/wikipedia_demo/wiki_demo.txt",
            "{corpus}/python_docs_rst/python3.11-doc_sources.tar.xz"]
"""
VOCAB, CONTEXT = 4096, 128


def shape(layers: int, width: int) -> list[str]:
    """A Qwen3-style shape with heads of 32, GQA 2:1 where it can, SwiGLU 8/3 x width rounded to 32."""
    heads = max(1, width // 32)
    kv = heads // 2 if heads % 2 == 0 else heads
    return [f"model.n_layer={layers}", f"model.d_model={width}", f"model.n_head={heads}", f"model.n_kv_head={kv}",
            f"model.d_ff={(8 * width // 3 + 31) // 32 * 32}", f"model.vocab_size={VOCAB}", f"model.context={CONTEXT}"]


def prepared_data(out: Path, corpus: Path, log) -> Path:
    data = out / "data"
    if (data / "manifest.json").is_file():
        return data
    mixture = out / "mixture.toml"
    mixture.write_text(MIXTURE.format(corpus=corpus))
    cfg = load_config("tiny", [f"data.mixture='{mixture}'", f"model.vocab_size={VOCAB}", "data.val_fraction=0.02",
                               "data.workers=1"])
    t0 = time.time()
    prepare(cfg, data, overwrite=True, log=lambda *_: None)
    log(f"prepared {data} in {time.time() - t0:.0f} s")
    return data


def run(name: str, data: Path, out: Path, steps: int, seed: int, overrides: list[str], log) -> dict:
    cfg = load_config("tiny", overrides + [f"train.max_steps={steps}", f"train.eval_every={steps}", f"train.seed={seed}",
                                           "train.device='cpu'", "train.checkpoints=0", "train.eval_batches=20",
                                           "train.log_every=25", "train.warmup=30"])
    cfg.data.dir = str(data)
    t0 = time.time()
    summary = train(cfg, out / name, overwrite=True, log=lambda *_: None)
    fpt = flops_per_token(cfg.model, Transformer(cfg.model).num_params())
    result = {"run": name, "seed": seed, "steps": steps, "tokens": summary["tokens_seen"], "parameters": summary["parameters"],
              "train_flops": steps * cfg.tokens_per_step() * fpt, "val_loss": summary["final_val_loss"],
              "val_bpb": summary["final_val_bpb"], "seconds": round(time.time() - t0, 1), "overrides": overrides}
    log(f"  {name}: {steps} steps, val loss {result['val_loss']:.4f}, {result['val_bpb']:.4f} bits/byte, "
        f"{result['seconds']:.0f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/distill_proxy", help="working folder (default: %(default)s)")
    p.add_argument("--corpus", type=Path, default=CORPUS, help="shared/data/corpus (default: %(default)s)")
    p.add_argument("--teacher", default="4x128", help="the teacher's layers x width (default: %(default)s)")
    p.add_argument("--student", default="2x64", help="the student's layers x width (default: %(default)s)")
    p.add_argument("--teacher-steps", type=int, default=400)
    p.add_argument("--steps", type=int, default=400, help="each student's steps (default: %(default)s)")
    p.add_argument("--seeds", default="1337", help="comma-separated student seeds")
    p.add_argument("--distill", action="append", default=[], metavar="KEY=VALUE",
                   help="a distillation setting, e.g. train.distill_temperature=2.0 (default: weight 1, T 1, all logits)")
    p.add_argument("--arms", default="alone,distilled", help="which students to train (default: %(default)s)")
    p.add_argument("--alone-steps", type=int, default=0, help="the alone student's steps (default: --steps; more: "
                   "to match the distilled student's FLOPs with the teacher's forward passes counted)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    data = prepared_data(out, args.corpus, log)
    teacher_shape, student_shape = (shape(*map(int, s.split("x"))) for s in (args.teacher, args.student))
    results = []
    if not (out / "teacher" / "run_summary.json").is_file():
        results.append(run("teacher", data, out, args.teacher_steps, 1337, teacher_shape, log))
    else:
        results.append(json.loads((out / "teacher_result.json").read_text()))
    (out / "teacher_result.json").write_text(json.dumps(results[0]))
    teacher_fpt = flops_per_token(load_config("tiny", teacher_shape).model, results[0]["parameters"]) / 3  # forward only
    for seed in map(int, args.seeds.split(",")):
        if "alone" in args.arms:
            steps = args.alone_steps or args.steps
            name = f"alone-seed{seed}" if steps == args.steps else f"alone-{steps}steps-seed{seed}"
            results.append(run(name, data, out, steps, seed, student_shape, log))
        if "distilled" not in args.arms:
            continue
        kd = student_shape + [f"train.teacher='{out / 'teacher'}'"] + args.distill
        tag = "".join(f"-{o.split('.', 1)[1].removeprefix('distill_')}" for o in args.distill)
        distilled = run(f"distilled{tag}-seed{seed}", data, out, args.steps, seed, kd, log)
        results.append({**distilled, "teacher_forward_flops": distilled["tokens"] * teacher_fpt})
    with (out / "results.jsonl").open("a") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    print(f"{'run':<30}{'params':>10}{'steps':>7}{'student FLOPs':>15}{'teacher fwd FLOPs':>19}{'val loss':>10}"
          f"{'bits/byte':>11}{'s':>7}")
    for r in results:
        print(f"{r['run']:<30}{r['parameters']:>10,}{r['steps']:>7}{r['train_flops']:>15.3g}"
              f"{r.get('teacher_forward_flops', 0):>19.3g}{r['val_loss']:>10.4f}{r['val_bpb']:>11.4f}{r['seconds']:>7.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
