"""A rehearsal of rain-v2's 40-hour unattended run, scaled to a CPU: the same depth-to-width ratio (32 x 512 ->
8 x 128), 100 checkpoints, warm-up 1% + cosine to 0, the default checkpoint policy and guards. It trains the run
twice on the built-in corpus: once straight through, once killed with SIGKILL at two seeded random moments and
resumed each time. Both runs meet the same injected faults: one step whose loss is NaN and one loss spike (keyed on
the training windows, so a rolled-back run does not meet them again). It reports the checkpoints' disk, both final
losses (equal when resume is exact) and every guard event.

    python benchmarks/long_run_rehearsal.py --out /tmp/rehearsal             # the default size (docs/performance.md)
    python benchmarks/long_run_rehearsal.py --out /tmp/rehearsal --steps 200  # a quick look

(The default size was meant for 20-30 minutes on 2 idle cores; measured only on a loaded machine: 72 minutes for
the straight run at load 6-10, 19 minutes for the killed one at load 5-8.)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MODEL = {"vocab_size": 8192, "n_layer": 8, "d_model": 128, "n_head": 4, "n_kv_head": 2, "d_ff": 512,
         "context": 256, "qk_norm": True}
NAN_SAMPLE, SPIKE_SAMPLE = 0.3, 0.6  # where in the run's training windows the faults sit (fractions)


def config_toml(steps: int, data: Path) -> str:
    train = {"max_steps": steps, "batch_size": 8, "micro_batch": 8, "lr": 2e-3, "min_lr": 0.0, "warmup": 0.01,
             "beta2": 0.99, "log_every": 5, "eval_every": max(1, steps // 20), "eval_batches": 4,
             "checkpoints": 100, "device": "cpu"}
    lines = ["[model]"] + [f"{k} = {json.dumps(v)}" for k, v in MODEL.items()]
    lines += ["[train]"] + [f"{k} = {json.dumps(v)}" for k, v in train.items()]
    lines += ["[data]", f"dir = {json.dumps(str(data))}"]
    return "\n".join(lines) + "\n"


def child(config: str, run: str, resume: bool) -> None:
    """Train in this process with the injected faults: the loss of the micro-batch holding window NAN is NaN, that
    of the one holding window SPIKE is 100 x larger."""
    sys.path.insert(0, str(SRC))
    from rain.config import load_config
    from rain.train.trainer import Trainer

    cfg = load_config(config)
    trainer = Trainer(cfg, run, resume=resume, overwrite=not resume)
    total = trainer.total * cfg.train.batch_size
    faults = {int(NAN_SAMPLE * total): float("nan"), int(SPIKE_SAMPLE * total): 100.0}
    forward = trainer.step_model

    def injected(x, y, doc_ids=None):
        loss = forward(x, y, doc_ids=doc_ids)
        end = trainer.batches.state_dict()["consumed"]  # the windows this micro-batch took: [end - rows, end)
        hit = [scale for sample, scale in faults.items() if end - x.shape[0] <= sample < end]
        return loss * hit[0] if hit else loss

    trainer.step_model = injected
    trainer.fit()


def newest_step(run: Path) -> int:
    """The step of the run's newest logged training record (0 before the first)."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the line being written
            continue
        if record.get("kind") == "train":
            return int(record["step"])
    return 0


def run_once(config: Path, run: Path, kills: list[tuple[int, float]]) -> float:
    """Train `run` to the end; attempt k is killed with SIGKILL `delay` seconds after it logged step `step`
    (kills[k] = (step, delay)), then resumed. Kills keyed on progress, not on wall time, so they land mid-run
    whatever the machine's load. Returns the wall time."""
    started, resume = time.time(), False
    for attempt in range(len(kills) + 1):
        cmd = [sys.executable, __file__, "--child", str(config), str(run)] + (["--resume"] if resume else [])
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        if attempt < len(kills):
            step, delay = kills[attempt]
            while proc.poll() is None and newest_step(run) < step:
                time.sleep(0.5)
            time.sleep(delay)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                print(f"  killed {run.name} (SIGKILL) {delay:.1f} s after step {step} was logged", flush=True)
        proc.wait()
        if proc.returncode == 0:
            break
        resume = True
    return time.time() - started


def report(run: Path) -> dict:
    summary = json.loads((run / "run_summary.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trains = [r for r in records if r["kind"] == "train"]
    return {"final_train_loss": trains[-1]["loss"], "final_val_loss": summary["final_val_loss"],
            "checkpoint_bytes": summary.get("checkpoint_bytes"), "checkpoints": len(list((run / "checkpoints").iterdir())),
            "guard_events": [{k: v for k, v in r.items() if k in ("event", "step", "reason", "skipped_windows")}
                             for r in records if r["kind"] == "guard"],
            "skipped_steps": summary.get("skipped_steps"), "rollbacks": summary.get("rollbacks")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0, help="when the kills happen")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    if not (data / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "rain.cli", "prepare", "--out", str(data)], check=True, env=env)
    config = args.out / "rehearsal.toml"
    config.write_text(config_toml(args.steps, data))
    straight = args.out / "straight"
    if (straight / "run_summary.json").exists():  # a finished straight run of this size is not trained again
        straight_seconds = json.loads((straight / "run_summary.json").read_text())["wall_seconds"]
    else:
        straight_seconds = run_once(config, straight, [])
    rng = random.Random(args.seed)  # one kill in each of two spans of the run, a random few seconds past a log line
    kills = [(int(rng.uniform(0.2, 0.45) * args.steps), rng.uniform(0, 3)),
             (int(rng.uniform(0.55, 0.8) * args.steps), rng.uniform(0, 3))]
    killed_seconds = run_once(config, args.out / "killed", kills)
    straight, killed = report(args.out / "straight"), report(args.out / "killed")
    result = {"steps": args.steps, "model": MODEL, "straight": straight, "killed": killed,
              "wall_seconds": {"straight": round(straight_seconds), "killed_and_resumed": round(killed_seconds)},
              "kills": [{"after_step": step, "delay_s": round(delay, 1)} for step, delay in kills],
              "final_loss_equal": straight["final_train_loss"] == killed["final_train_loss"]
              and straight["final_val_loss"] == killed["final_val_loss"]}
    (args.out / "rehearsal.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], "--resume" in sys.argv[4:])
    else:
        main()
