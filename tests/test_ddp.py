"""Two processes under torchrun (gloo on CPU) train the same model as one process with gradient accumulation."""

import json
import os
import subprocess
import sys
import textwrap

from rain.train.metrics import read_metrics
from rain.train.trainer import train
from tests.conftest import tiny_run_config

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from tests.conftest import tiny_run_config
    from rain.train.trainer import train
    cfg = tiny_run_config(Path({data!r}), max_steps=6, log_every=1, eval_every=3, checkpoints=0)
    train(cfg, Path({run!r}), log=lambda *a: None)
""")


def test_two_ranks_match_one_process_with_accumulation(tiny_data, tmp_path):
    cfg = tiny_run_config(tiny_data, max_steps=6, log_every=1, eval_every=3, checkpoints=0)
    train(cfg, tmp_path / "single", log=lambda *a: None)

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT.format(root=root, data=str(tiny_data), run=str(tmp_path / "ddp")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]

    single = [r["loss"] for r in read_metrics(tmp_path / "single") if r["kind"] == "train"]
    ddp = [r["loss"] for r in read_metrics(tmp_path / "ddp") if r["kind"] == "train"]
    assert len(ddp) == len(single) == 6
    assert all(abs(a - b) < 2e-3 for a, b in zip(single, ddp)), (single, ddp)
    assert single[-1] < single[0]
    summary = json.loads((tmp_path / "ddp" / "run_summary.json").read_text())
    assert summary["tokens_seen"] == 6 * 4 * 64
