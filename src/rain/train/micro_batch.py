"""The largest micro-batch that fits the GPU, behind `train.auto_micro_batch` and `rain bench --micro-batch auto`:
micro-batches are tried from the largest down, each with one eager training step whose peak memory is measured."""

from __future__ import annotations

import gc
from typing import Callable

import torch

from rain.config import RunConfig
from rain.errors import RainError
from rain.model.transformer import Transformer
from rain.runtime import autocast_for
from rain.train.precision import build_training_optimizer

GB = 1e9


def free_memory(device: torch.device) -> None:
    """Collect Python's garbage and hand the CUDA caching allocator's free blocks back, so what a trial (or a
    measured model) held does not count against the next one."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def largest_fitting(candidates: list[int], peak_bytes: Callable[[int], float | None], budget: float,
                    log=print) -> tuple[int, dict[int, float | None]]:
    """Try micro-batches from the largest down; the first whose trial step peaks within budget wins.
    peak_bytes(b) returns None when the trial runs out of memory. Returns (choice, {b: peak tried})."""
    tried: dict[int, float | None] = {}
    for b in sorted(set(candidates), reverse=True):
        tried[b] = peak = peak_bytes(b)
        log(f"  micro-batch {b}: " + ("out of memory" if peak is None else f"peak {peak / GB:.2f} GB"))
        if peak is not None and peak <= budget:
            return b, tried
    raise RainError(f"not even a micro-batch of {min(candidates)} fits in {budget / GB:.1f} GB: shorten the "
                    f"context, use a smaller model or set train.checkpoint_layers")


def cuda_step_peak(cfg: RunConfig, device: torch.device) -> Callable[[int], float | None]:
    """peak_bytes(b) for largest_fitting: one eager training step (model, grads, optimizer state, activations)
    at micro-batch b; reserved memory, so the caching allocator's slack counts too."""
    model = Transformer(cfg.model).to(device)
    model.checkpoint_layers = cfg.train.checkpoint_layers
    optimizer = build_training_optimizer(model, cfg.train, device.type)  # bf16-master: bf16 weights, fp32 masters
    autocast = autocast_for(device, cfg.train.precision)

    def peak(b: int) -> float | None:
        free_memory(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            x = torch.randint(0, cfg.model.vocab_size, (b, cfg.model.context), device=device)
            with autocast:
                loss = model(x, x)
            loss.backward()
            optimizer.step()
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_reserved(device)
        except torch.OutOfMemoryError:
            return None
        finally:
            optimizer.zero_grad(set_to_none=True)

    return peak


def fit_micro_batch(cfg: RunConfig, device: torch.device, world: int = 1, log=print,
                    peak_bytes: Callable[[int], float | None] | None = None, budget: float | None = None) -> int:
    """The largest micro-batch <= train.micro_batch that divides the per-process batch and fits the device
    (budget: 90% of its memory). Without CUDA (and no peak_bytes given) nothing can be measured: micro_batch."""
    t = cfg.train
    per_rank = t.batch_size // world
    candidates = [b for b in range(min(t.micro_batch, per_rank), 0, -1) if per_rank % b == 0]
    if peak_bytes is None and device.type != "cuda":
        log(f"auto micro-batch: no memory to measure on {device.type}; keeping micro_batch {t.micro_batch}")
        return t.micro_batch
    peak_bytes = peak_bytes or cuda_step_peak(cfg, device)
    if budget is None:
        if device.type != "cuda":
            raise RainError("auto micro-batch: give a memory budget to fit on a device without CUDA")
        budget = 0.9 * torch.cuda.get_device_properties(device).total_memory
    log(f"auto micro-batch: largest of {candidates} within {budget / GB:.1f} GB")
    choice, _ = largest_fitting(candidates, peak_bytes, budget, log)
    peak_bytes = None  # drop the probe's model before training builds its own
    free_memory(device)
    if world > 1 and torch.distributed.is_initialized():  # every rank must accumulate the same number of steps
        agreed = torch.tensor([choice], device=device)
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
        choice = int(agreed)
    log(f"auto micro-batch: {choice} x {cfg.model.context} tokens, {per_rank // choice} accumulation step(s)")
    return choice
