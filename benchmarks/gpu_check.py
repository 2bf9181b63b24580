"""The device check of a GPU session in one command: the CUDA tests and the measurements docs/performance.md waits
for, most important first, within a wall-time budget (default 8 minutes), written under --out as one JSON
(everything), one markdown table (for docs/performance.md) and one log (every part's output).

    PYTHONPATH=src python benchmarks/gpu_check.py --out gpu-check              # on a CUDA GPU, its own torch
    PYTHONPATH=src python benchmarks/gpu_check.py --out gpu-check --parts doc-mask,muon   # what the budget skipped
    python benchmarks/gpu_check.py --cpu --out /tmp/gpu-check                  # tiny shapes on the CPU (a test runs it)

Parts, in priority order (the GPU estimates are guesses for a cold compile cache until a GPU run replaces them):
  cuda-tests  pytest tests/test_cuda.py
  rain-v2     rain bench rain-v2 32 x 1024, bf16, compiled, against transformers' Qwen3 of the same shape, compiled
  gpt2-124m   the same for gpt2-124m against transformers' Llama
  memory      rain-v2 64 x 1024, all 32 blocks checkpointed: peak memory
  doc-mask    rain-v2 with train.doc_mask on (synthetic documents), against rain-v2's rain figures (mask off)
  muon        rain-v2 with Muon: step time against rain-v2's rain figures (AdamW)

Each `rain bench` runs in a fresh process (compile caches and GPU memory do not leak between parts), all sharing
one TorchInductor cache. A part starts only when the budget left covers its estimate (else it is recorded as
"skipped: budget"); it is killed at 3x its estimate or when the budget runs out, and a part that fails or is killed
is recorded with its error and last output lines while the run goes on. The JSON is rewritten after every part, so
a run stopped from outside keeps what it measured. Exit status: 0 when no part failed, 1 when one did, 2 when there
is nothing to run on (no CUDA GPU without --cpu).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU_BUDGET_S, CPU_BUDGET_S = 480, 300
TIMEOUT_FACTOR = 3  # a part is killed at this many times its estimate, or when the budget runs out
TAIL_LINES = 30


@dataclass
class Run:
    """One `rain bench` process of a part."""
    label: str
    args: list[str]
    estimate_s: float
    reuse: str | None = None  # a part whose rain figures are this run's (same arguments), when it measured them


@dataclass
class Part:
    name: str
    title: str
    runs: list[Run] = field(default_factory=list)
    tests: str | None = None  # a pytest file instead of runs
    tests_estimate_s: float = 0.0
    # The ratio the table gives: "transformers" (rain / transformers tokens/s), "tokens_per_s" or "step_ms" (the
    # second run's against the first's).
    compare: str | None = None

    def to_run(self, records: list[dict]) -> list[Run]:
        return [r for r in self.runs if reusable(r, records) is None]

    def estimate(self, records: list[dict]) -> float:
        return self.tests_estimate_s + sum(r.estimate_s for r in self.to_run(records))


def reusable(run: Run, records: list[dict]) -> dict | None:
    """The report of the part that `run` may reuse, when that part measured rain."""
    for rec in records:
        if run.reuse and rec["part"] == run.reuse and rec["status"] == "ok":
            report = next(iter(rec.get("reports", {}).values()), None)
            if report and "rain" in report:
                return report
    return None


def plan(cpu: bool) -> list[Part]:
    """The parts in priority order: GPU shapes, or (cpu) the same parts on tiny shapes, uncompiled, 2 timed steps."""
    if cpu:
        tiny = ["model.vocab_size=512", "model.n_layer=2", "model.d_model=64", "model.n_head=4", "model.head_dim=16",
                "model.d_ff=128", "model.context=64"]

        def shape(preset: str, kv_heads: int, micro_batch: int) -> list[str]:
            sets = [a for s in tiny + [f"model.n_kv_head={kv_heads}"] for a in ("--set", s)]
            return ["--preset", preset, *sets, "--micro-batch", str(micro_batch), "--precision", "bf16",
                    "--no-compile", "--device", "cpu", "--steps", "2", "--warmup", "1"]
        # gpt2-124m without transformers: importing it costs ~7 s of CPU a process, and rain-v2's part covers
        # the comparison.
        v2, gpt2, v2_64 = shape("rain-v2", 2, 2), shape("gpt2-124m", 4, 2) + ["--no-hf"], shape("rain-v2", 2, 4)
        all_blocks, tests_s, hf_s, gpt2_s, v2_64_s, one_s, muon_s = 2, 20, 20, 15, 15, 15, 15
    else:
        common = ["--precision", "bf16", "--compile", "--device", "cuda", "--steps", "10", "--warmup", "3"]
        v2 = ["--preset", "rain-v2", "--micro-batch", "32", *common]
        gpt2 = ["--preset", "gpt2-124m", "--micro-batch", "32", *common]
        v2_64 = ["--preset", "rain-v2", "--micro-batch", "64", *common]
        # Muon's run compiles rain-v2's model again: its graphs come from the cache the rain-v2 part filled.
        all_blocks, tests_s, hf_s, gpt2_s, v2_64_s, one_s, muon_s = 32, 100, 160, 120, 90, 70, 45
    no_hf = v2 + ["--no-hf"]
    return [
        Part("cuda-tests", "the CUDA tests", tests="tests/test_cuda.py", tests_estimate_s=tests_s),
        Part("rain-v2", "rain-v2 against transformers' Qwen3 of the same shape",
             [Run("rain-v2", v2, hf_s)], compare="transformers"),
        Part("gpt2-124m", "gpt2-124m against transformers' Llama of the same shape",
             [Run("gpt2-124m", gpt2, gpt2_s)], compare="transformers"),
        Part("memory", "rain-v2, twice the micro-batch, every block checkpointed: peak memory",
             [Run("checkpointed", v2_64 + ["--no-hf", "--checkpoint-layers", str(all_blocks)], v2_64_s)]),
        Part("doc-mask", "rain-v2 with document masking off and on",
             [Run("off", no_hf, one_s, reuse="rain-v2"), Run("on", no_hf + ["--set", "train.doc_mask=true"], one_s)],
             compare="tokens_per_s"),
        Part("muon", "rain-v2's step with AdamW and with Muon",
             [Run("adamw", no_hf, one_s, reuse="rain-v2"), Run("muon", no_hf + ["--optimizer", "muon"], muon_s)],
             compare="step_ms"),
    ]


# ---- the budget ----------------------------------------------------------------------------------------------

def run_parts(parts: list[Part], budget_s: float, execute: Callable[[Part, float, list[dict]], dict], *,
              clock: Callable[[], float] = time.monotonic, start: float | None = None,
              done: Callable[[list[dict]], None] = lambda records: None) -> list[dict]:
    """Each part in order, `execute(part, timeout_s, records so far)` -> its record's fields, while the budget
    (counted from `start`) covers the part's estimate; a part that raises is recorded as failed and the run goes on."""
    start = clock() if start is None else start
    records: list[dict] = []
    for part in parts:
        left, need = budget_s - (clock() - start), part.estimate(records)
        rec = {"part": part.name, "title": part.title, "estimate_s": round(need)}
        if left < need:
            rec.update(status="skipped", reason=f"budget: {max(left, 0):.0f} s left, the part needs ~{need:.0f} s")
        else:
            rec["timeout_s"] = round(min(left, TIMEOUT_FACTOR * need))
            print(f"[gpu_check] {part.name}: {part.title} (~{need:.0f} s, {left:.0f} s of budget left)", flush=True)
            t0 = clock()
            try:
                rec.update(execute(part, rec["timeout_s"], records))
            except Exception as exc:  # noqa: BLE001 - one part's crash must not end the check
                rec.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            rec["wall_s"] = round(clock() - t0, 1)
        print(f"[gpu_check] {part.name}: {result_text(rec)}" + (f" in {rec['wall_s']} s" if "wall_s" in rec else ""),
              flush=True)
        records.append(rec)
        done(records)
    return records


# ---- running the parts -----------------------------------------------------------------------------------------

def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])[-4000:]


class Executor:
    """Runs a part's processes with `env`, each one's output appended to `log`; scratch files go in `work`."""

    def __init__(self, env: dict, work: Path, log: Path):
        self.env, self.work, self.log = env, work, log
        self.count, self.cpu_s = 0, 0.0

    def call(self, cmd: list[str], timeout: float, title: str) -> tuple[int | None, str]:
        """Run cmd in its own process group, killed with all its children after `timeout` s: (exit status or None
        when killed, its last output lines)."""
        self.count += 1
        out = self.work / f"output-{self.count}.txt"
        cpu = cpu_seconds()
        with open(out, "w") as f:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                code = proc.wait(timeout=max(timeout, 1))
            except subprocess.TimeoutExpired:
                kill_group(proc)
                code = None
            except BaseException:  # Ctrl-C: the part's processes go too
                kill_group(proc)
                raise
        self.cpu_s += cpu_seconds() - cpu
        text = out.read_text(errors="replace")
        with open(self.log, "a") as f:
            f.write(f"==== {title}: {shlex.join(cmd)}\n{text}\n==== exit {code if code is not None else 'killed'}\n\n")
        return code, tail(text)

    def __call__(self, part: Part, timeout: float, records: list[dict]) -> dict:
        self.cpu_s = 0.0
        rec = self.tests(part, timeout) if part.tests else self.bench(part, timeout, records)
        return {**rec, "cpu_s": round(self.cpu_s, 1)}

    def tests(self, part: Part, timeout: float) -> dict:
        shown = f"python -m pytest {part.tests}"
        if importlib.util.find_spec("pytest") is None:
            return {"status": "skipped", "command": shown,
                    "reason": f"pytest is not installed for {sys.executable} (python -m pip install pytest)"}
        xml = self.work / f"{part.name}.xml"
        cmd = [sys.executable, "-m", "pytest", part.tests, "-p", "no:cacheprovider", "-rfEs", f"--junitxml={xml}"]
        code, last = self.call(cmd, timeout, part.name)
        rec = {"command": shown, "exit_status": code}
        if code is None:
            return {**rec, "status": "failed", "error": f"timed out after {timeout:.0f} s (killed)", "tail": last}
        if not xml.is_file():
            return {**rec, "status": "failed", "error": f"pytest exited {code} without a report", "tail": last}
        rec["tests"] = tests = junit_counts(xml)
        if code not in (0, 5) or tests["failed"] or tests["errors"]:
            return {**rec, "status": "failed", "error": f"pytest exited {code}: {tests_text(tests)}", "tail": last}
        return {**rec, "status": "ok"}

    def bench(self, part: Part, timeout: float, records: list[dict]) -> dict:
        deadline = time.monotonic() + timeout
        rec: dict = {"commands": {}, "reports": {}}
        for run in part.runs:
            reused = reusable(run, records)
            if reused is not None:
                rec["commands"][run.label] = f"(the {run.reuse} part's rain figures)"
                rec["reports"][run.label] = {**reused, "reused_from": run.reuse}
                continue
            rec["commands"][run.label] = "rain bench " + shlex.join(run.args)
            report_file = self.work / f"{part.name}-{run.label}.jsonl"
            cmd = [sys.executable, "-m", "rain.cli", "bench", *run.args, "--json", "--out", str(report_file)]
            code, last = self.call(cmd, deadline - time.monotonic(), f"{part.name} {run.label}")
            if code != 0 or not report_file.is_file():
                why = "timed out (killed)" if code is None else f"rain bench exited {code}"
                return {**rec, "status": "failed", "error": f"{run.label}: {why}", "tail": last}
            rec["reports"][run.label] = json.loads(report_file.read_text().splitlines()[-1])
        problem = check_reports(part, rec["reports"])
        if problem:
            return {**rec, "status": "failed", "error": problem}
        rec["ratio"] = ratio(part, rec["reports"])
        return {**rec, "status": "ok"}


def cpu_seconds() -> float:
    """CPU time (user + system) of the finished child processes so far."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def kill_group(proc: subprocess.Popen) -> None:
    """Kill a part's process and everything it started (torch.compile's workers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def junit_counts(xml: Path) -> dict:
    suites = ET.parse(xml).getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed, skips = [], set()
    for case in (c for s in suites for c in s.iter("testcase")):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        skip = case.find("skipped")
        if skip is not None:
            skips.add(re.sub(r"^Skipped: ", "", skip.get("message", "")))
    return {"total": counts["tests"], "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failed": counts["failures"], "errors": counts["errors"], "skipped": counts["skipped"],
            "failed_tests": failed, "skip_reasons": sorted(skips),
            "seconds": round(sum(float(s.get("time", 0)) for s in suites), 1)}


def tests_text(t: dict) -> str:
    words = [f"{t['passed']} passed"] + [f"{t[k]} {k}" for k in ("failed", "errors", "skipped") if t[k]]
    return ", ".join(words) + (f" ({'; '.join(t['skip_reasons'])})" if t["skipped"] and t["skip_reasons"] else "")


def check_reports(part: Part, reports: dict) -> str | None:
    """What would make a part's figures wrong although every run succeeded."""
    if part.name == "doc-mask" and reports["on"].get("doc_mask") is not True:
        return "rain bench did not apply train.doc_mask (its report has no doc_mask: true), so nothing was masked"
    for label, r in reports.items():
        for kind in ("rain", "transformers"):
            if kind in r and not r[kind]["tokens_per_s"] > 0:
                return f"{label}: {kind} measured {r[kind]['tokens_per_s']} tokens/s"
    return None


def ratio(part: Part, reports: dict) -> dict | None:
    if part.compare == "transformers":
        r = next(iter(reports.values()))
        if "speedup_vs_transformers" not in r:  # --no-hf (the CPU mode's gpt2-124m)
            return None
        return {"value": r["speedup_vs_transformers"], "what": "rain / transformers tokens/s"}
    if part.compare in ("tokens_per_s", "step_ms"):
        (a, ra), (b, rb) = reports.items()
        return {"value": round(rb["rain"][part.compare] / ra["rain"][part.compare], 3),
                "what": f"{b} / {a} {'tokens/s' if part.compare == 'tokens_per_s' else 'step time'}"}
    return None


# ---- the environment and the files -----------------------------------------------------------------------------

def environment() -> dict:
    """Versions and the GPU; torch is imported here, but CUDA is not initialised in this process."""
    env: dict = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    for name in ("torch", "transformers", "triton", "pytest"):
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = None
    try:
        import torch

        env.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                   gpus=torch.cuda.device_count())
    except Exception as exc:  # noqa: BLE001 - recorded, and every part then says what is wrong
        env.update(torch_error=f"{type(exc).__name__}: {exc}", cuda_available=False)
    if shutil.which("nvidia-smi"):
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm",
                                  "--format=csv,noheader"], check=False, capture_output=True, text=True, timeout=30)
            env["nvidia_smi"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
            env["gpu"] = env["nvidia_smi"].split(",")[0].strip() if env["nvidia_smi"] else None
        except (OSError, subprocess.TimeoutExpired) as exc:
            env["nvidia_smi"] = f"failed: {exc}"
    return env


def fmt(x, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def result_text(rec: dict) -> str:
    if rec["status"] == "skipped":
        return f"skipped: {rec['reason']}"
    if rec["status"] == "failed":
        return f"**failed**: {rec.get('error', '?')}"
    return tests_text(rec["tests"]) if "tests" in rec else "measured"


def rows(rec: dict) -> list[list[str]]:
    """The table's rows of one part: one per model measured (rain, and transformers where compared)."""
    wall = fmt(rec.get("wall_s"), ".0f")
    if rec["status"] != "ok" or "reports" not in rec:
        cmd = rec.get("command") or "<br>".join(rec.get("commands", {}).values()) or "-"
        return [[rec["part"], f"`{cmd}`" if cmd != "-" else cmd, result_text(rec)] + ["-"] * 8 + [wall]]
    out = []
    for label, r in rec["reports"].items():
        for kind in ("rain", "transformers"):
            if kind not in r or (kind == "transformers" and len(rec["reports"]) > 1):
                continue
            x, split = r[kind], r[kind]["split_ms"]
            if "peak_memory_gb" in x:
                peak = f"{x['peak_memory_gb']:.2f} (reserved {x['peak_reserved_gb']:.2f})"
            else:
                peak = f"RSS {x['peak_rss_gb']:.2f}" if x.get("peak_rss_gb") else "-"
            ratio_cell = ""
            if rec.get("ratio") and kind == "rain" and label == list(rec["reports"])[-1]:
                ratio_cell = f"{rec['ratio']['value']:.3f}x ({rec['ratio']['what']})"
            cmd = rec["commands"][label]
            first = not out
            out.append([rec["part"] if first else "", (f"`{cmd}`" if not cmd.startswith("(") else cmd) if kind == "rain" else "",
                        result_text(rec) if first else "", f"{label}: {x['model']}" if len(rec["reports"]) > 1 else x["model"],
                        fmt(x["tokens_per_s"]), fmt(x["mfu"], ".1%"), fmt(x["step_ms"], ".1f"),
                        f"{split['forward_backward']:.1f} / {split['optimizer']:.1f}", peak,
                        ",".join(x.get("attention_kernels") or ["-"]), ratio_cell, wall if first else ""])
    return out


def markdown(result: dict) -> str:
    env = result["environment"]
    device = env.get("nvidia_smi") or next((r["device"] for rec in result["parts"] for r in rec.get("reports", {}).values()),
                                           "no device measured")
    cache = "warm" if result["inductor_cache"]["warm_at_start"] else "cold"
    head = (f"`{result['command']}`: {device}; torch {env.get('torch')}, CUDA {env.get('cuda')}, transformers "
            f"{env.get('transformers')}, Python {env['python']}; {result['started']}; budget {result['budget_s']} s, "
            f"wall {result.get('wall_s', '-')} s; TorchInductor cache {cache} at the start.")
    lines = [head, ""]
    if result.get("error"):
        lines += [f"**Not run**: {result['error']}", ""]
    lines += ["| part | command | result | model | tokens/s | MFU | step ms | fwd+bwd / optim ms | peak GB | attention | "
              + "ratio | wall s |", "|" + "---|" * 12]
    lines += ["| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row) + " |"
              for rec in result["parts"] for row in rows(rec)]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---- the command -------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.md and gpu_check.log")
    p.add_argument("--cpu", action="store_true", help="the same parts on tiny shapes on the CPU: checks the script")
    p.add_argument("--budget", type=float, help=f"seconds of wall time in all (default: {GPU_BUDGET_S}; "
                   f"{CPU_BUDGET_S} with --cpu)")
    p.add_argument("--parts", help="comma-separated, of: " + ", ".join(x.name for x in plan(False)) + " (default: all)")
    p.add_argument("--cache-dir", help="TorchInductor cache shared by the parts (default: $TORCHINDUCTOR_CACHE_DIR, "
                   "else rain-gpu-check-inductor in the temporary folder, kept so a second run starts warm)")
    args = p.parse_args(argv)
    t0, started = time.monotonic(), datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    budget = args.budget or (CPU_BUDGET_S if args.cpu else GPU_BUDGET_S)
    parts = plan(args.cpu)
    if args.parts:
        wanted = args.parts.split(",")
        unknown = sorted(set(wanted) - {x.name for x in parts})
        if unknown:
            p.error(f"--parts: no part {unknown[0]!r}")
        parts = [x for x in parts if x.name in wanted]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    log.write_text("")
    cache = Path(args.cache_dir or os.environ.get("TORCHINDUCTOR_CACHE_DIR")
                 or Path(tempfile.gettempdir()) / "rain-gpu-check-inductor")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    if args.cpu:  # a check of the script, not a measurement: one thread per process, no GPU even where there is one
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    result = {"script": "benchmarks/gpu_check.py", "mode": "cpu" if args.cpu else "gpu",
              "command": shlex.join(["python", "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
              "started": started, "budget_s": budget,
              "inductor_cache": {"dir": str(cache), "warm_at_start": cache.is_dir() and any(cache.iterdir())},
              "environment": environment(), "parts": []}

    def save(records: list[dict]) -> None:
        result.update(parts=records, wall_s=round(time.monotonic() - t0, 1))
        write_atomic(out / "gpu_check.json", json.dumps(result, indent=1) + "\n")
        write_atomic(out / "gpu_check.md", markdown(result))

    if not args.cpu and not result["environment"].get("cuda_available"):
        result["error"] = (f"no CUDA GPU visible to torch {result['environment'].get('torch')} "
                           "(--cpu runs the same parts on tiny shapes)")
        save([])
        print(f"gpu_check: {result['error']}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="rain-gpu-check-") as work:
        records = run_parts(parts, budget, Executor(env, Path(work), log), start=t0, done=save)
    save(records)
    print(markdown(result))
    print(f"wrote {out / 'gpu_check.json'}, {out / 'gpu_check.md'}, {log}")
    return 1 if any(r["status"] == "failed" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
