"""Run untrusted model-written Python (HumanEval completions) in a child process that cannot do much harm.

Layers, each cheap: `python -I` (no user site, no PYTHONPATH, no current folder on the path) in a fresh
temporary folder with a bare environment; resource limits (address space, CPU seconds, file size, no new
processes); an audit hook installed before the program runs that refuses sockets other than AF_UNIX,
subprocesses, exec and fork; a wall-clock timeout after which the whole process group is killed.

This is the protection lm-eval's code_eval (OpenAI's human-eval) also relies on: it stops accidents and
loops in a model's completions, not a determined attacker (ctypes can get around an audit hook). Code
execution is therefore off unless the caller asks for it, with a warning (see `require_code_execution`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass

from rain.errors import RainError

# Runs first in the child: set the resource limits (argv: bytes of address space, CPU seconds), refuse the
# network and new processes, then run the program as __main__.
_GUARD = r"""
import resource, sys, socket

_mem, _cpu = int(sys.argv[1]), int(sys.argv[2])
for _limit, _value in ((resource.RLIMIT_AS, _mem), (resource.RLIMIT_CPU, _cpu), (resource.RLIMIT_CORE, 0),
                       (resource.RLIMIT_FSIZE, 16 * 1024 * 1024)):
    resource.setrlimit(_limit, (_value, _value))

_BLOCKED = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
            "pty.spawn", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
            "socket.gethostbyname", "socket.gethostbyaddr", "urllib.Request", "ctypes.dlopen")

def _guard(event, args):
    if event == "socket.__new__" and len(args) > 1 and args[1] not in (-1, _AF_UNIX):
        raise PermissionError("rain sandbox: network access is refused (a socket)")
    if event in _BLOCKED:
        what = "network access" if event.startswith(("socket.", "urllib.")) else event
        raise PermissionError(f"rain sandbox: {what} is refused")

_AF_UNIX = socket.AF_UNIX
sys.addaudithook(_guard)
del socket
import runpy
runpy.run_path("program.py", run_name="__main__")
"""


@dataclass(frozen=True)
class SandboxResult:
    status: str  # "passed" | "failed" | "timeout"
    returncode: int | None
    output: str  # the tail of stdout + stderr

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_program(program: str, timeout: float = 10.0, memory_mb: int = 1024) -> SandboxResult:
    """Run `program` (Python source) in the sandbox; passed when it exits 0 within `timeout` seconds."""
    with tempfile.TemporaryDirectory(prefix="rain-sandbox-") as tmp:
        with open(os.path.join(tmp, "program.py"), "w", encoding="utf-8") as f:
            f.write(program)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _GUARD, str(memory_mb * 1024 * 1024), str(max(1, int(timeout) + 1))],
            cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the program and anything it left behind
            out, _ = proc.communicate()
            return SandboxResult("timeout", None, out.decode("utf-8", "replace")[-2000:])
    text = out.decode("utf-8", "replace")[-2000:]
    return SandboxResult("passed" if proc.returncode == 0 else "failed", proc.returncode, text)


def require_code_execution(allowed: bool, what: str = "HumanEval") -> None:
    """Refuse to run model-written code unless asked; warn when asked."""
    if not allowed:
        raise RainError(f"{what} runs the model's completions as Python code; it is off by default: pass "
                        "--allow-code-execution (allow_code_execution=True) to run them in rain's sandbox")
    warnings.warn(f"{what}: running model-written code in a subprocess sandbox (no network, resource limits, "
                  "timeout); it guards against accidents, not against deliberate attacks", stacklevel=2)
