"""Streaming (input, target) windows out of memory-mapped shards.

Every epoch draws a fresh random offset (so windows do not always start at the same tokens) and a fresh
permutation of the windows, both from (seed, epoch). A rank's batch is a pure function of how many samples it
has consumed, so the loader's whole state is one counter: saving and restoring it resumes exactly."""

from __future__ import annotations

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
        for key in ("seed", "seq_len", "windows"):
            if key in state and state[key] != self.state_dict()[key]:
                raise RainError(f"cannot resume the data loader: its {key} was {state[key]}, now {self.state_dict()[key]} "
                                f"(resume with the same data and settings, or start a new run)")
        self.consumed = int(state["consumed"]) * int(state.get("world", self.world)) // self.world


def document_ids(tokens: torch.Tensor, eot_id: int) -> torch.Tensor:
    """Per-token document index within each row: `<|endoftext|>` opens the next document (it acts as its BOS)."""
    return (tokens == eot_id).cumsum(dim=1)
