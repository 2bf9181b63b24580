"""What the trainer trains on: a source of (inputs, targets, doc_ids) micro-batches with a resumable state,
plus fixed validation batches. Pretraining reads `rain prepare` shards; SFT provides its own."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol

import torch

from rain.config import RunConfig
from rain.data.loader import WindowLoader, document_ids, sequential_batches
from rain.data.shards import load_manifest, open_split
from rain.data.tokenizer import Tokenizer
from rain.errors import RainError

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


class TrainData(Protocol):
    tokenizer_path: Path
    tokenizer: Tokenizer

    def next_batch(self) -> Batch: ...
    def val_batches(self) -> Iterator[Batch]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def describe(self) -> dict: ...  # recorded in state.json and run_summary.json
    def val_bytes_per_token(self) -> tuple[int, int] | None: ...  # (tokens, bytes) for bits per byte


class PretrainData:
    """Random windows from a prepared data folder (see rain.data.loader for the order and its state)."""

    def __init__(self, cfg: RunConfig, rank: int = 0, world: int = 1):
        if not cfg.data.dir:
            raise RainError("no prepared data: pass --data DIR (a folder written by `rain prepare`)")
        self.data_dir = Path(cfg.data.dir)
        manifest = load_manifest(self.data_dir)
        self.tokenizer_path = self.data_dir / manifest["tokenizer"]
        self.tokenizer = Tokenizer.from_file(self.tokenizer_path)
        if self.tokenizer.vocab_size > cfg.model.vocab_size:
            raise RainError(f"{self.tokenizer_path} has {self.tokenizer.vocab_size} tokens; "
                            f"model.vocab_size ({cfg.model.vocab_size}) must be at least that")
        m, t = cfg.model, cfg.train
        try:
            self.loader = WindowLoader(open_split(self.data_dir, "train", manifest), m.context, t.micro_batch,
                                       seed=t.seed, rank=rank, world=world)
        except ValueError as exc:
            raise RainError(f"{self.data_dir}: {exc}") from None
        self.val_shards = open_split(self.data_dir, "val", manifest)
        self.context, self.micro_batch, self.eval_batches = m.context, t.micro_batch, t.eval_batches
        self.doc_mask = t.doc_mask
        val = manifest.get("sources", {}).get("val", {})
        self._val_counts = (sum(s["tokens"] for s in val.values()), sum(s["bytes"] for s in val.values()))

    def _with_docs(self, x, y) -> Batch:
        return x, y, document_ids(x, self.tokenizer.eot_id) if self.doc_mask else None

    def next_batch(self) -> Batch:
        return self._with_docs(*self.loader.next_batch())

    def val_batches(self) -> Iterator[Batch]:
        for x, y in sequential_batches(self.val_shards, self.context, self.micro_batch, self.eval_batches):
            yield self._with_docs(x, y)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)

    def describe(self) -> dict:
        return {"data_dir": str(self.data_dir)}

    def val_bytes_per_token(self):
        return self._val_counts if all(self._val_counts) else None
