"""The DPO reference's log-probs, precomputed once against computed at every step: the seconds of the one-time pass
and the seconds per optimizer step each way, on the CPU, for a small model tuned on synthetic pairs.

    python benchmarks/dpo_reference.py --steps 6 --pairs 96

Builds a base run (1 step; its weights do not matter for timing) in a temporary folder, then times
rain.posttrain.dpo.DPOTrainer: its construction (which, under precompute, runs the reference over every pair
once) and `--steps` optimizer steps (the median; validation and saves are not timed)."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rain.config import ModelConfig, RunConfig
from rain.data.prepare import prepare
from rain.posttrain.dpo import DPOTrainer, PreferenceData, PreferenceLoss
from rain.posttrain.sft import sft_config
from rain.train.trainer import train


def quiet(*_):
    pass


def base_run(root: Path, d_model: int, layers: int, context: int) -> Path:
    cfg = RunConfig(model=ModelConfig(vocab_size=512, n_layer=layers, d_model=d_model, n_head=4, n_kv_head=2,
                                      d_ff=4 * d_model, context=context))
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.micro_batch = 1, 2, 2
    cfg.train.eval_every, cfg.train.eval_batches, cfg.train.checkpoints, cfg.train.device = 1, 1, 0, "cpu"
    cfg.data.shard_tokens = 20_000
    docs = [("text", f"{record['prompt']}\n{record['chosen']}\n{record['rejected']}\n" * 2) for record in pair_records(4000)]
    prepare(cfg, root / "data", documents=lambda: iter(docs), log=quiet)
    cfg.data.dir = str(root / "data")
    train(cfg, root / "base", log=quiet)
    return root / "base/checkpoints/last"


def pair_records(n: int) -> list[dict]:
    return [{"prompt": f"What is {i} + {i % 7}? Explain briefly.", "chosen": f"{i} + {i % 7} = {i + i % 7}.",
             "rejected": f"I am not sure what {i} + {i % 7} is, maybe {i * 3}."} for i in range(n)]


def write_pairs(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in pair_records(n)))
    return path


def time_mode(checkpoint: Path, pairs: Path, out: Path, mode: str, steps: int, batch: int) -> dict:
    from rain import checkpoint as ckpt

    cfg = sft_config(ckpt.find(checkpoint).config, lr=1e-3, batch=batch)
    cfg.train.max_steps, cfg.train.eval_every = steps, steps
    data = PreferenceData(checkpoint / "tokenizer.json", [pairs], context=cfg.model.context,
                          micro_batch=cfg.train.micro_batch, val_fraction=0.1)
    data.settings = {"loss": "dpo", "reference_logps": mode}
    started = time.perf_counter()
    trainer = DPOTrainer(cfg, out, data=data, loss=PreferenceLoss("dpo", 0.1), reference=checkpoint,
                         reference_logps=mode, init_from=checkpoint, log=quiet)
    setup = time.perf_counter() - started
    trainer.model.train()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        trainer.step()
        times.append(time.perf_counter() - started)
    trainer.lock.close()
    return {"setup_s": setup, "step_s": statistics.median(times), "train_pairs": len(data.train),
            "windows_per_epoch": data.windows_per_epoch()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--pairs", type=int, default=96)
    p.add_argument("--batch", type=int, default=8, help="windows per step")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--context", type=int, default=256)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = base_run(root, args.d_model, args.layers, args.context)
        pairs = write_pairs(root / "pairs.jsonl", args.pairs)
        pre, online = (time_mode(checkpoint, pairs, root / mode, mode, args.steps, args.batch)
                       for mode in ("precompute", "online"))
        steps_per_epoch = pre["windows_per_epoch"] / args.batch
        for mode, r in (("precompute", pre), ("online", online)):
            print(f"{mode:10s}: setup {r['setup_s']:.2f} s, {r['step_s']:.3f} s per step (median of {args.steps})")
        print(f"{pre['train_pairs']} training pairs in {pre['windows_per_epoch']} windows, {args.batch} windows per step: "
              f"the one-time reference pass costs {pre['setup_s'] - online['setup_s']:.2f} s; online costs "
              f"{online['step_s'] - pre['step_s']:.3f} s more per step, "
              f"{(online['step_s'] - pre['step_s']) * steps_per_epoch:.2f} s per epoch")


if __name__ == "__main__":
    main()
