"""The corpus every machine already has, so `rain demo` needs no network:

- code: the CPython standard library's own .py files (Python with English docstrings and comments; the
  test suites, idlelib and lib2to3 left out), about 11 MB on CPython 3.11;
- prose: the long descriptions (mostly READMEs) in the metadata of the installed Python packages;
- math: worked arithmetic problems from a seeded generator written here.

Each document is yielded as (source name, text) in a fixed order, so the same machine gives the same corpus."""

from __future__ import annotations

import importlib.metadata
import random
import sysconfig
from pathlib import Path
from typing import Iterator

SKIP_PARTS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__", "turtledemo"}


def stdlib_code(max_bytes: int) -> Iterator[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    used = 0
    for path in sorted(root.rglob("*.py")):
        if SKIP_PARTS & set(path.relative_to(root).parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text) < 200:
            continue
        used += len(text)
        if used > max_bytes:
            return
        yield text


def package_descriptions(max_bytes: int) -> Iterator[str]:
    seen, used = set(), 0
    dists = sorted(importlib.metadata.distributions(), key=lambda d: (d.metadata.get("Name") or "").lower())
    for dist in dists:
        name = (dist.metadata.get("Name") or "").lower()
        text = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if name in seen or len(text) < 500:
            continue
        seen.add(name)
        used += len(text)
        if used > max_bytes:
            return
        yield text.strip()


def arithmetic_problems(n: int, seed: int = 0) -> Iterator[str]:
    """Short worked problems: sums, differences, products, divisions with remainders, powers, sequences."""
    rng = random.Random(seed)
    for _ in range(n):
        lines = []
        for _ in range(rng.randint(3, 8)):
            a, b = rng.randint(2, 999), rng.randint(2, 99)
            kind = rng.randrange(6)
            if kind == 0:
                lines.append(f"Q: What is {a} + {b}?\nA: {a} + {b} = {a + b}.")
            elif kind == 1:
                lines.append(f"Q: What is {a} - {b}?\nA: {a} - {b} = {a - b}.")
            elif kind == 2:
                lines.append(f"Q: What is {a} times {b}?\nA: {a} x {b} = {a * b}.")
            elif kind == 3:
                q, r = divmod(a, b)
                lines.append(f"Q: Divide {a} by {b}.\nA: {a} = {b} x {q} + {r}, so the quotient is {q} and the remainder is {r}.")
            elif kind == 4:
                k = rng.randint(1, 15)
                lines.append(f"Q: What is 2 to the power {k}?\nA: 2^{k} = {2**k}.")
            else:
                start, step = rng.randint(1, 50), rng.randint(2, 12)
                seq = [start + i * step for i in range(5)]
                lines.append(f"Q: Continue the sequence {', '.join(map(str, seq))}, ...\nA: Each term adds {step}, so the next term is {seq[-1] + step}.")
        yield "\n\n".join(lines)


def documents(code_bytes: int = 4_000_000, prose_bytes: int = 2_000_000, math_docs: int = 3000, seed: int = 0) -> Iterator[tuple[str, str]]:
    yield from (("stdlib_code", t) for t in stdlib_code(code_bytes))
    yield from (("package_docs", t) for t in package_descriptions(prose_bytes))
    yield from (("arithmetic", t) for t in arithmetic_problems(math_docs, seed))
