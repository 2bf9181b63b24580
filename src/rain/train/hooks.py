"""Work a later stage does on the live model at an interval of training: benchmark curves while a run goes.

rain.train may not import rain.eval (tests/test_layers.py), yet benchmarks during training need the live model
(here) and the benchmark tasks (there). The seam: a later stage registers a factory by name (rain.eval.commands
registers "benchmarks" when the `rain` command loads the stages), the Trainer builds every registered hook from
its config before anything else (a factory returns None when its settings leave it off and raises RainError on a
bad one, so a mistake stops the run before it starts), and after each step's validation it calls the hooks due.

In-process on purpose: the model is already on the GPU, so a few hundred items cost seconds, where a separate
`rain eval` would load a checkpoint and compete with training for the same GPU's memory.

What each call is promised, so that no hook can change the run (a run with hooks trains exactly as one without):
the model being trained (not compiled or DDP-wrapped) in eval mode with gradients off, put back in train mode
after; the CPU and device RNG states restored; every rank calls it alike (so collectives inside a forward, as
FSDP's, stay matched; under DDP each rank scores the same items, as fast as rank 0 alone while the others wait)
and only rank 0's record reaches metrics.jsonl."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from rain.config import RunConfig
from rain.errors import RainError


@dataclass(frozen=True)
class TrainingPoint:
    """Where the run is when a hook is asked whether it is due, and called."""

    step: int  # optimizer steps done (0: before the first)
    tokens: int  # tokens trained on so far
    tokens_per_step: int
    total_steps: int
    validated: bool  # this step ran the validation (train.eval_every, epoch ends, the last step, step 0)
    tokenizer_path: Path | None  # the run's tokenizer.json
    batch_rows: int  # sequences per forward that are known to fit (train.micro_batch as fitted)


class IntervalHook(Protocol):
    def due(self, at: TrainingPoint) -> bool: ...

    def __call__(self, model, at: TrainingPoint) -> tuple[dict, str]:
        """(the fields of a metrics.jsonl record, including its "kind"; one log line)."""


Factory = Callable[[RunConfig, Callable[[str], None]], "IntervalHook | None"]
FACTORIES: dict[str, Factory] = {}


def register(name: str, factory: Factory) -> None:
    """Make `factory(cfg, log)` build a hook for every run from now on (registering a name again replaces it)."""
    FACTORIES[name] = factory


class IntervalHooks:
    """The hooks of one run, built from its config."""

    def __init__(self, hooks: list[IntervalHook]):
        self.hooks = hooks

    @classmethod
    def build(cls, cfg: RunConfig, log: Callable[[str], None] = print) -> "IntervalHooks":
        if cfg.train.eval_tasks and "benchmarks" not in FACTORIES:
            raise RainError("train.eval_tasks: benchmarks during training are scored by rain.eval, which was not "
                            "loaded: run `rain train`, or call rain.eval.live.register_benchmarks() first")
        built = [factory(cfg, log) for factory in FACTORIES.values()]
        return cls([hook for hook in built if hook is not None])

    def run_due(self, trainer, step: int, metrics, validated: bool) -> None:
        """Call the hooks due at `step` of the Trainer's run; rank 0 logs their records and lines."""
        if not self.hooks:
            return
        at = TrainingPoint(step, step * trainer.tokens_per_step, trainer.tokens_per_step, trainer.total, validated,
                           trainer.data.tokenizer_path, trainer.micro_batch)
        for hook in [h for h in self.hooks if h.due(at)]:
            began = time.time()
            with untouched(trainer.model, trainer.device), trainer.autocast:
                record, line = hook(trainer.model, at)
            record = {"kind": record.pop("kind"), "step": step, "tokens": at.tokens, **record,
                      "seconds": round(time.time() - began, 2)}
            if metrics is not None:
                metrics.log(record)
                trainer.lines.log(line)


@contextmanager
def untouched(model, device):
    """The model in eval mode with gradients off and the RNG states saved; on leaving, its mode and those states as
    they were (a forward in eval mode draws no random numbers, but a hook must not be able to change the run)."""
    import torch

    was_training = model.training
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)
