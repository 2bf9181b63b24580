"""Progress bars that show on a terminal and stay quiet in logs and CI."""

from __future__ import annotations

from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, **kwargs) -> tqdm:
    """tqdm with `disable=None`, which turns the bar off when stderr is not a TTY."""
    kwargs.setdefault("disable", None)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
