"""`rain prepare`'s worker processes end with it, even when it is killed with -9 (no orphans holding memory)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")
PARENT = """
import time
from rain.data.encode import Pool, process
from rain.data.filters import FilterConfig
from rain.data.encode import Job
pool = Pool(2)
job = Job(FilterConfig(), prose=False, val_seed=0, val_fraction=0.0, tokenizer=None)
futures = [pool.submit(["some text to check"] * 10, job) for _ in range(4)]
[f.result() for f in futures]
print("ready", flush=True)
time.sleep(600)
"""


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find the worker processes")
def test_workers_exit_when_prepare_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": SRC})
    try:
        assert parent.stdout.readline().strip() == "ready"
        workers = children(parent.pid)
        assert len(workers) >= 2, workers
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10
        while any(alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not [w for w in workers if alive(w)], "worker processes outlived their killed parent"
    finally:
        parent.kill()
        for w in children(parent.pid):
            os.kill(w, signal.SIGKILL)
