"""What the trainer trains on: a source of (inputs, targets, doc_ids) micro-batches with a resumable state,
plus fixed validation batches. Pretraining reads `rain prepare` shards; SFT provides its own."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch

from rain.config import RunConfig
from rain.data.loader import WindowLoader, document_ids
from rain.data.prepared import PreparedData, validation_windows
from rain.data.tokenizer import Tokenizer
from rain.errors import RainError

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
# A validation batch also says which source each target token comes from (None: one source).
ValBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]
VAL_SEED = 0  # the validation windows depend on the data and the window length only, so runs compare


class TrainData(Protocol):
    tokenizer_path: Path
    tokenizer: Tokenizer
    micro_batch: int

    def next_batch(self) -> Batch: ...
    def val_batches(self) -> Iterator[ValBatch]: ...
    def val_sources(self) -> list[str]: ...  # names of the source ids in val batches
    def val_counts(self) -> dict[str | None, tuple[int, int]]: ...  # (tokens, bytes) overall (None) and per source
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def describe(self) -> dict: ...  # recorded in state.json and run_summary.json


def validation_batches(stream, context: int, n_windows: int, micro_batch: int, eot_id: int | None) -> Iterator[ValBatch]:
    """`n_windows` windows spread evenly over a validation stream (see validation_windows), the same ones every
    time, in micro-batches; doc ids when eot_id is given (document masking)."""
    starts = validation_windows(len(stream), context, n_windows, VAL_SEED)
    for i in range(0, len(starts), micro_batch):
        chunk = starts[i : i + micro_batch]
        rows = torch.from_numpy(np.stack([stream.read(a, a + context + 1) for a in chunk]).astype(np.int64))
        x, y = rows[:, :-1], rows[:, 1:]
        sources = [stream.source_ids(a + 1, a + context + 1) for a in chunk]
        src = None if sources[0] is None else torch.from_numpy(np.stack(sources))
        yield x, y, None if eot_id is None else document_ids(x, eot_id), src


class PretrainData:
    """Random windows from a prepared data folder (see rain.data.loader for the order and its state)."""

    def __init__(self, cfg: RunConfig, rank: int = 0, world: int = 1, micro_batch: int | None = None):
        if not cfg.data.dir:
            raise RainError("no prepared data: pass --data DIR (a folder written by `rain prepare`)")
        self.data = PreparedData(cfg.data.dir)
        self.tokenizer_path = self.data.tokenizer_path
        self.tokenizer = Tokenizer.from_file(self.tokenizer_path)
        if self.tokenizer.vocab_size > cfg.model.vocab_size:
            raise RainError(f"{self.tokenizer_path} has {self.tokenizer.vocab_size} tokens; "
                            f"model.vocab_size ({cfg.model.vocab_size}) must be at least that")
        m, t = cfg.model, cfg.train
        self.context, self.doc_mask = m.context, t.doc_mask
        self.micro_batch = micro_batch or t.micro_batch
        # Counted in the configured micro-batches, so a fitted micro-batch scores the same windows.
        self.val_windows = t.eval_batches * t.micro_batch
        try:
            self.loader = WindowLoader(self.data.shards("train"), m.context, self.micro_batch,
                                       seed=t.seed, rank=rank, world=world)
        except ValueError as exc:
            raise RainError(f"{self.data.dir}: {exc}") from None
        self.val = self.data.stream("val", sources=True)
        if len(self.val) < m.context + 1:
            raise RainError(f"{self.data.dir}: the validation split has {len(self.val):,} tokens and one window of "
                            f"model.context {m.context} needs {m.context + 1:,}; prepare more data (or raise "
                            "data.val_fraction), or shorten the context")

    def _with_docs(self, x, y) -> Batch:
        return x, y, document_ids(x, self.tokenizer.eot_id) if self.doc_mask else None

    def next_batch(self) -> Batch:
        return self._with_docs(*self.loader.next_batch())

    def val_batches(self) -> Iterator[ValBatch]:
        eot = self.tokenizer.eot_id if self.doc_mask else None
        return validation_batches(self.val, self.context, self.val_windows, self.micro_batch, eot)

    def val_sources(self) -> list[str]:
        return self.data.source_names if self.val.doc_sources is not None else []

    def val_counts(self) -> dict[str | None, tuple[int, int]]:
        return {None: self.data.counts("val"), **{n: self.data.counts("val", n) for n in self.val_sources()}}

    def windows_per_epoch(self) -> int:
        return self.loader.windows_per_epoch()

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)

    def describe(self) -> dict:
        return {"data_dir": str(self.data.dir)}
