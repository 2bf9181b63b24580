"""What the trainer trains on: a source of (inputs, targets, doc_ids) micro-batches with a resumable state,
plus fixed validation batches. Pretraining reads `rain prepare` shards; SFT provides its own."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch

from rain.config import RunConfig
from rain.data.loader import MixtureLoader, WindowLoader, document_ids
from rain.data.prepared import PreparedData, validation_windows
from rain.data.reweight import Reweighting
from rain.data.schedule import MixtureSchedule
from rain.data.tokenizer import Tokenizer
from rain.errors import RainError
from rain.train.long_run import run_steps

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
    """Random windows from a prepared data folder (see rain.data.loader for the order and its state): uniform over
    its tokens, or by source as data.weights and [[data.stage]] say (rain.data.schedule), or as [data.reweight]
    moves them by validation loss (rain.data.reweight: the trainer hands each validation to `reweighting`)."""

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
        self.schedule, self.samples_per_step = None, t.batch_size  # samples of every rank in one optimizer step
        self.reweighting: Reweighting | None = None
        try:
            if cfg.data.weights or cfg.data.stage or cfg.data.reweight.reference:
                self.loader = self._mixture_loader(cfg, rank, world)
            else:
                self.loader = WindowLoader(self.data.shards("train"), m.context, self.micro_batch,
                                           seed=t.seed, rank=rank, world=world)
        except ValueError as exc:
            raise RainError(f"{self.data.dir}: {exc}") from None
        self.val = self.data.stream("val", sources=True)
        if len(self.val) < m.context + 1:
            raise RainError(f"{self.data.dir}: the validation split has {len(self.val):,} tokens and one window of "
                            f"model.context {m.context} needs {m.context + 1:,}; prepare more data (or raise "
                            "data.val_fraction), or shorten the context")
        if self.reweighting is not None and not self.val_sources():
            raise RainError(f"{self.data.dir}: data.reweight needs the validation loss of each source, and this folder's "
                            "validation split does not say which source each token is from; prepare it again")
        if self.reweighting is not None:
            unseen = [n for n, used in zip(self.data.source_names, self.reweighting.used)
                      if used and not self.data.counts("val", n)[0]]
            if unseen:
                raise RainError(f"{self.data.dir}: source {unseen[0]} has no validation tokens, so data.reweight cannot "
                                "measure it; prepare with a larger data.val_fraction, or give it weight 0 (and no floor)")

    def _mixture_loader(self, cfg: RunConfig, rank: int, world: int) -> MixtureLoader:
        names = self.data.source_names
        loader = MixtureLoader(self.data.sources("train"), names, cfg.model.context, self.micro_batch,
                               self._weights_at, self.samples_per_step, seed=cfg.train.seed, rank=rank, world=world)
        shares = {n: self.data.counts("train", n)[0] for n in names}
        self.schedule = MixtureSchedule.from_config(cfg, names, shares, run_steps(cfg, loader))
        used = self.schedule.used()
        if cfg.data.reweight.reference:
            self.reweighting = Reweighting(cfg, self.schedule)
            used = used | self.reweighting.used
        short = [n for n, used, w in zip(names, used, loader.windows) if used and not w]
        if short:
            raise RainError(f"{self.data.dir}: source {short[0]} has a weight but fewer than {2 * cfg.model.context:,} "
                            f"training tokens, too few for one window of model.context {cfg.model.context}; give it "
                            "weight 0, prepare more of it, or shorten the context")
        return loader

    def _weights_at(self, step: int) -> np.ndarray:
        return self.schedule.weights_at(step)

    def mixture_in_force(self, state: dict) -> dict:
        """{"mixture": weights by source} of the last batch a loader state (as checkpointed) has handed out, or {}
        when windows are drawn uniformly."""
        if self.schedule is None:
            return {}
        step = max(0, int(state["consumed"]) * int(state["world"]) - 1) // self.samples_per_step
        return {"mixture": self.schedule.as_dict(self.schedule.weights_at(step))}

    def stage_starts(self) -> list[dict]:
        """Each data.stage as it falls in this run ({"stage": 1, "step": first step, "weights", "blend"})."""
        stages = self.schedule.describe()[1:] if self.schedule is not None else []
        return [{"stage": i, **s} for i, s in enumerate(stages, 1)]

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
        extra = {"reweight": self.reweighting.state_dict()} if self.reweighting is not None else {}
        return {**self.loader.state_dict(), **extra}

    def load_state_dict(self, state: dict) -> None:
        if ("reweight" in state) != (self.reweighting is not None):
            did = "reweighted" if "reweight" in state else "did not reweight"
            raise RainError(f"cannot resume the data loader: the run {did} its mixture by validation loss and this "
                            "config's data.reweight says otherwise; resume with the run's own data settings")
        self.loader.load_state_dict(state)
        if self.reweighting is not None:
            self.reweighting.load_state_dict(state["reweight"])

    def describe(self) -> dict:
        extra = {"mixture_stages": self.schedule.describe()} if self.schedule is not None else {}
        return {"data_dir": str(self.data.dir), **extra}
