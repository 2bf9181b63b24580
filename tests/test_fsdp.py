"""train.parallel = "fsdp" (FSDP2) on 2 gloo processes: the same training as one process with accumulation, exact
resume, and resume across world sizes 1 -> 2 -> 1 with every training window read once. The runs use Muon (whole
matrices gathered for Newton-Schulz, its inner AdamW for the rest) and activation checkpointing on one block."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from rain.config import validate
from rain.data.loader import WindowLoader
from rain.errors import RainError
from rain.train.metrics import read_metrics
from rain.train.parallel import shard
from rain.train.trainer import train
from tests.conftest import small_model_config, tiny_run_config

STEPS, BATCH = 6, 4  # micro_batch 1: one process accumulates 4 micro-batches a step, each of 2 ranks 2

# Runs under torchrun. Every training window a rank reads is recorded by its global sample number, per run phase.
SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    import torch.distributed as dist
    from rain.data.loader import WindowLoader
    from rain.train.trainer import train
    from tests.conftest import tiny_run_config

    seen, window = [], WindowLoader._window
    WindowLoader._window = lambda self, sample: seen.append(sample) or window(self, sample)
    reduces, reduce_scatter = [], dist.reduce_scatter_single  # FSDP2's gradient reduce
    dist.reduce_scatter_single = lambda *a, **k: reduces.append(1) or reduce_scatter(*a, **k)

    def run(name, phase, **kw):
        cfg = tiny_run_config(Path({data!r}), max_steps={steps}, batch_size={batch}, micro_batch=1, log_every=1,
                              eval_every={steps}, checkpoints=0, parallel="fsdp", checkpoint_layers=1,
                              optimizer="muon")
        train(cfg, Path({tmp!r}) / name, log=lambda *a: None, **kw)
        out = Path({tmp!r}) / f"windows-{{name}}-{{phase}}-{{dist.get_rank()}}.json"
        out.write_text(json.dumps(seen))
        out.with_suffix(".reduces").write_text(str(len(reduces)))
        seen.clear(), reduces.clear()

    run("fsdp", "all")                                  # 6 steps straight
    run("fsdp_resumed", "a", stop_after=3)              # 3 steps, saved, then resumed to the end
    run("fsdp_resumed", "b", resume=True)
    run("hop", "b", resume=True, stop_after=4)          # a 1-process run's steps 3-4 on 2 processes
""")


def _run_single(tiny_data, tmp_path, name, phase, monkeypatch, **kw):
    seen, window = [], WindowLoader._window
    monkeypatch.setattr(WindowLoader, "_window", lambda self, sample: seen.append(sample) or window(self, sample))
    cfg = tiny_run_config(tiny_data, max_steps=STEPS, batch_size=BATCH, micro_batch=1, log_every=1, eval_every=STEPS,
                          checkpoints=0, parallel="fsdp", optimizer="muon")
    train(cfg, tmp_path / name, log=lambda *a: None, **kw)
    (tmp_path / f"windows-{name}-{phase}-0.json").write_text(json.dumps(seen))


def _losses(run) -> list[float]:
    return [r["loss"] for r in read_metrics(run) if r["kind"] == "train"]


def _windows(tmp_path, name, phase="*", rank="*") -> list[int]:
    return [w for f in sorted(tmp_path.glob(f"windows-{name}-{phase}-{rank}.json")) for w in json.loads(f.read_text())]


def test_fsdp_two_ranks_match_one_process_resume_exactly_and_across_world_sizes(tiny_data, tmp_path, monkeypatch):
    _run_single(tiny_data, tmp_path, "hop", "a", monkeypatch, stop_after=2)  # 1 process: steps 1-2

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "fsdp.py"
    script.write_text(SCRIPT.format(root=root, data=str(tiny_data), tmp=str(tmp_path), steps=STEPS, batch=BATCH))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    _run_single(tiny_data, tmp_path, "hop", "c", monkeypatch, resume=True)  # 1 process again: steps 5-6

    fsdp, hop = _losses(tmp_path / "fsdp"), _losses(tmp_path / "hop")
    assert len(fsdp) == len(hop) == STEPS and fsdp[-1] < fsdp[0]
    # hop's steps 1-2 and 5-6 are one process accumulating 4 micro-batches, steps 3-4 two FSDP2 ranks accumulating 2
    # each (without a reduce on the first), resumed from it and resumed by it: all the same training as 2 FSDP2
    # ranks from the start.
    assert all(abs(a - b) < 2e-3 for a, b in zip(fsdp, hop)), (fsdp, hop)
    # One reduce-scatter per shard group (each block, the root) per step, not per micro-batch.
    assert (tmp_path / "windows-fsdp-all-0.reduces").read_text() == str(STEPS * (small_model_config().n_layer + 1))
    # Stopped and resumed under FSDP2: the same run, to the bit.
    assert _losses(tmp_path / "fsdp_resumed") == fsdp
    ends = [load_file(tmp_path / run / "checkpoints" / "last" / "model.safetensors") for run in ("fsdp", "fsdp_resumed")]
    assert ends[0].keys() == ends[1].keys() and all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])
    # 1 -> 2 -> 1 processes read every global sample once, as 2 processes straight do.
    every = list(range(STEPS * BATCH))
    assert sorted(_windows(tmp_path, "hop")) == every
    for name, phase in (("hop", "b"), ("fsdp", "all")):  # the two ranks of a 2-process phase read distinct windows
        rank0, rank1 = (set(_windows(tmp_path, name, phase, r)) for r in (0, 1))
        assert rank0 and rank1 and not rank0 & rank1
    assert sorted(_windows(tmp_path, "fsdp")) == every
    summary = json.loads((tmp_path / "hop" / "run_summary.json").read_text())
    assert summary["tokens_seen"] == STEPS * BATCH * 64


def test_fsdp_settings_refused_in_one_line():
    cfg = tiny_run_config(parallel="fsdpp")
    with pytest.raises(RainError, match="train.parallel 'fsdpp' must be ddp or fsdp"):
        validate(cfg)
    cfg = tiny_run_config(parallel="fsdp", precision="bf16-master")
    from rain.model.transformer import Transformer

    with pytest.raises(RainError, match="use train.precision=bf16"):
        shard(Transformer(small_model_config()), cfg.train, torch.device("cpu"), world=2)
    cfg = tiny_run_config(parallel="fsdp", teacher="teacher-run")
    with pytest.raises(RainError, match="train.teacher does not combine with train.parallel = fsdp"):
        shard(Transformer(small_model_config()), cfg.train, torch.device("cpu"), world=2)
