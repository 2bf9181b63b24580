"""Streaming (input, target) windows out of memory-mapped shards.

WindowLoader (the default): every epoch draws a fresh random offset (so windows do not always start at the same
tokens) and a fresh permutation of the windows, both from (seed, epoch). A rank's batch is a pure function of how
many samples it has consumed, so the loader's whole state is one counter: saving and restoring it resumes exactly.

MixtureLoader (data.weights or [[data.stage]]): each window comes from one source, chosen by the weights in force
at its optimizer step, then cut from that source's own documents the way WindowLoader cuts a shard. Its state is
the counter plus how many windows each source has given; both are functions of the samples consumed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from rain.errors import RainError


class WindowLoader:
    def __init__(self, shards: list[np.ndarray], seq_len: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        if not shards or all(len(s) < 2 * seq_len for s in shards):
            raise ValueError(f"a shard needs at least {2 * seq_len} tokens for windows of {seq_len}; prepare more data or shorten the context")
        self.shards, self.seq_len, self.batch_size = shards, seq_len, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.consumed = 0  # samples this rank has taken
        # Windows per shard are counted for the largest offset, so every epoch has the same number.
        self._cum = np.cumsum([max(0, (len(s) - seq_len) // seq_len) for s in shards])
        self._epoch, self._shift, self._perm = -1, 0, None

    def windows_per_epoch(self) -> int:
        return int(self._cum[-1])

    def _window(self, sample: int) -> np.ndarray:
        epoch, pos = divmod(sample, self.windows_per_epoch())
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._shift = int(rng.integers(0, self.seq_len))
            self._perm = rng.permutation(self.windows_per_epoch())
            self._epoch = epoch
        w = int(self._perm[pos])
        shard = int(np.searchsorted(self._cum, w, side="right"))
        start = self._shift + (w - (int(self._cum[shard - 1]) if shard else 0)) * self.seq_len
        return self.shards[shard][start : start + self.seq_len + 1]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self._window((self.consumed + i) * self.world + self.rank) for i in range(self.batch_size)]
        self.consumed += self.batch_size
        batch = torch.from_numpy(np.stack(rows).astype(np.int64))
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "seed": self.seed, "seq_len": self.seq_len, "world": self.world,
                "windows": self.windows_per_epoch()}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where the saved loader stopped. The data, seed and window length must be the same;
        a different number of ranks continues from the same global sample (exact when it divides evenly)."""
        if "source_windows" in state:
            raise RainError("cannot resume the data loader: the run drew its windows by source (data.weights or "
                            "data.stage) and this config draws them uniformly; resume with the run's own data settings")
        for key in ("seed", "seq_len", "windows"):
            if key in state and state[key] != self.state_dict()[key]:
                raise RainError(f"cannot resume the data loader: its {key} was {state[key]}, now {self.state_dict()[key]} "
                                f"(resume with the same data and settings, or start a new run)")
        self.consumed = int(state["consumed"]) * int(state.get("world", self.world)) // self.world


class MixtureLoader:
    """Windows drawn by source. Global sample g (ranks take every world-th, as in WindowLoader) belongs to optimizer
    step g // samples_per_step; its source is drawn with the weights `weights_at(step)` gives, from a uniform
    number that depends on (seed, g) only. It is then its source's next window: the n-th window a source gives is
    window n of that source's own epoch order (a seeded offset and permutation per (source, epoch)), so each source
    is read without repeats until all its windows are used, whatever the weights."""

    BLOCK = 4096  # samples whose uniform numbers are drawn at once

    def __init__(self, sources: Sequence, names: list[str], seq_len: int, batch_size: int,
                 weights_at: Callable[[int], np.ndarray], samples_per_step: int, seed: int = 0, rank: int = 0,
                 world: int = 1):
        self.sources, self.names, self.seq_len, self.batch_size = sources, names, seq_len, batch_size
        self.weights_at, self.samples_per_step = weights_at, samples_per_step
        self.seed, self.rank, self.world = seed, rank, world
        self.windows = [max(0, (len(s) - seq_len) // seq_len) for s in sources]  # per source epoch
        if not sum(self.windows):
            raise ValueError(f"no source has {2 * seq_len} tokens for windows of {seq_len}; prepare more data or "
                             "shorten the context")
        self.consumed = 0  # samples this rank has taken
        self.drawn = np.zeros(len(sources), dtype=np.int64)  # windows each source has given, over all ranks
        self._orders: dict[int, tuple[int, int, np.ndarray]] = {}  # source: (epoch, offset, permutation)
        self._block: tuple[int, np.ndarray | None] = (-1, None)

    def windows_per_epoch(self) -> int:
        return int(sum(self.windows))

    def _uniforms(self, g0: int, g1: int) -> np.ndarray:
        out = np.empty(g1 - g0)
        for b in range(g0 // self.BLOCK, (g1 - 1) // self.BLOCK + 1):
            if self._block[0] != b:
                self._block = (b, np.random.default_rng([self.seed, 0x6D6978, b]).random(self.BLOCK))
            lo, hi = max(g0, b * self.BLOCK), min(g1, (b + 1) * self.BLOCK)
            out[lo - g0 : hi - g0] = self._block[1][lo - b * self.BLOCK : hi - b * self.BLOCK]
        return out

    def sources_of(self, g0: int, g1: int) -> np.ndarray:
        """The source id of each global sample in [g0, g1)."""
        u, steps = self._uniforms(g0, g1), np.arange(g0, g1) // self.samples_per_step
        out = np.empty(g1 - g0, dtype=np.int64)
        for step in np.unique(steps):
            w = np.asarray(self.weights_at(int(step)), dtype=np.float64)
            cum = np.cumsum(w) / w.sum()
            cum[-1] = 1.0  # u < 1 never falls past the last source; a source of weight 0 is never drawn
            sel = steps == step
            out[sel] = np.searchsorted(cum, u[sel], "right")
        return out

    def _window(self, source: int, n: int) -> np.ndarray:
        epoch, pos = divmod(n, self.windows[source])
        if self._orders.get(source, (None,))[0] != epoch:
            rng = np.random.default_rng([self.seed, 0x6D6978, source + 1, epoch])
            self._orders[source] = (epoch, int(rng.integers(0, self.seq_len)), rng.permutation(self.windows[source]))
        _, shift, perm = self._orders[source]
        start = shift + int(perm[pos]) * self.seq_len
        return self.sources[source].read(start, start + self.seq_len + 1)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        g0, n = self.consumed * self.world, self.batch_size * self.world
        src = self.sources_of(g0, g0 + n)  # every rank's samples, so each counts every source's windows alike
        nth = np.empty(n, dtype=np.int64)
        for s in np.unique(src):
            sel = np.flatnonzero(src == s)
            nth[sel] = self.drawn[s] + np.arange(len(sel))
            self.drawn[s] += len(sel)
        rows = [self._window(int(src[j]), int(nth[j])) for j in range(self.rank, n, self.world)]
        self.consumed += self.batch_size
        batch = torch.from_numpy(np.stack(rows).astype(np.int64))
        return batch[:, :-1], batch[:, 1:]

    def _drawn_until(self, g: int) -> np.ndarray:
        """Windows each source gives to global samples [0, g): what `drawn` holds there."""
        drawn = np.zeros(len(self.sources), dtype=np.int64)
        for a in range(0, g, self.BLOCK):
            drawn += np.bincount(self.sources_of(a, min(g, a + self.BLOCK)), minlength=len(self.sources))
        return drawn

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "seed": self.seed, "seq_len": self.seq_len, "world": self.world,
                "windows": self.windows_per_epoch(), "sources": dict(zip(self.names, self.windows)),
                "source_windows": {n: int(c) for n, c in zip(self.names, self.drawn)}}

    def load_state_dict(self, state: dict) -> None:
        """As WindowLoader.load_state_dict; the sources must be the same too."""
        if "source_windows" not in state:
            raise RainError("cannot resume the data loader: the run drew its windows uniformly and this config draws "
                            "them by source (data.weights or data.stage); resume with the run's own data settings")
        now = self.state_dict()
        for key in ("seed", "seq_len", "windows", "sources"):
            if state[key] != now[key]:
                raise RainError(f"cannot resume the data loader: its {key} was {state[key]}, now {now[key]} "
                                f"(resume with the same data and settings, or start a new run)")
        saved_at = int(state["consumed"]) * int(state["world"])
        self.consumed = saved_at // self.world
        if self.consumed * self.world == saved_at:
            self.drawn = np.array([state["source_windows"][n] for n in self.names], dtype=np.int64)
        else:  # another number of ranks that does not divide the position: count up to the nearest sample
            self.drawn = self._drawn_until(self.consumed * self.world)


def document_ids(tokens: torch.Tensor, eot_id: int) -> torch.Tensor:
    """Per-token document index within each row: `<|endoftext|>` opens the next document (it acts as its BOS)."""
    return (tokens == eot_id).cumsum(dim=1)
