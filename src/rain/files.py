"""Writing and reading the plain files every stage leaves behind, safely: atomic rewrites, JSON Lines."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from rain.errors import RainError


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, fsync, then rename: a crash leaves either the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a quota, a read-only folder: the old file is intact
        raise RainError(f"could not write {path}: {exc.strerror or exc}; the previous version is intact") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj) -> None:
    write_atomic(Path(path), (json.dumps(obj, indent=2) + "\n").encode())


def jsonl_records(text: str, at: Callable[[int], str], *, torn_tail: bool = False,
                  warn: Callable[[str], None] | None = None) -> Iterator[tuple[str, Any]]:
    """(location, value) for each non-blank line of JSON Lines text; `at(n)` names line n in messages. A line that
    is not JSON is a one-line RainError naming it. With `torn_tail`, an unreadable last line with no newline after
    it (what a process killed in the middle of appending leaves) is dropped, with a warning, instead."""
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            if torn_tail and n == len(lines) and not text.endswith("\n"):
                (warn or _stderr)(f"warning: {at(n)}: dropped an unfinished last line (a write was cut off)")
                return
            raise RainError(f"{at(n)}: not valid JSON ({exc.msg}); fix or remove that line") from None
        yield at(n), value


def read_jsonl(path: Path, *, torn_tail: bool = False, warn: Callable[[str], None] | None = None) -> list[Any]:
    """Every value of a JSON Lines file (see jsonl_records); [] when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    return [value for _, value in jsonl_records(text, lambda n: f"{path}:{n}", torn_tail=torn_tail, warn=warn)]


def read_jsonl_rows(path: Path, keys: tuple[str, ...], what: str) -> list[dict]:
    """The rows of a JSON Lines file rain appends to ([] when it does not exist), each checked to be an object
    with `keys`; any other line is a one-line RainError naming it as not `what`."""
    if not path.is_file():
        return []
    rows = []
    for where, row in jsonl_records(path.read_text(encoding="utf-8"), lambda n: f"{path}:{n}"):
        if not isinstance(row, dict) or not set(keys) <= row.keys():
            raise RainError(f"{where}: not {what} ({', '.join(keys)}); fix or remove that line")
        rows.append(row)
    return rows


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Rewrite the file with the rows added (temporary file + rename: readers never see half of it)."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_bytes() if path.is_file() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    write_atomic(path, old + "".join(json.dumps(r) + "\n" for r in rows).encode())


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


class FolderLock:
    """An exclusive lock on a folder (its `.lock` file) held by one process at a time: a second process gets a
    one-line RainError naming the holder. The kernel releases it when the holder exits however it exits, so a
    lock left by a killed process is never in the way."""

    NAME = ".lock"

    def __init__(self, folder: Path, what: str):
        self.path = Path(folder) / self.NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise RainError(f"{folder}: in use by {what} ({holder}); wait for it to finish or stop it, "
                            "or use another folder") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()}")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
