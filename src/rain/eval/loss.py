"""Validation loss, perplexity and bits per byte (tokenizer-independent) on held-out batches."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Iterable

import torch


@torch.no_grad()
def validation_loss(model, batches: Iterable[tuple], device: torch.device, autocast=None) -> float:
    """Token-weighted mean loss over batches of (inputs, targets[, doc_ids]); targets of -100 are ignored."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for x, y, *doc in batches:
        with autocast or nullcontext():
            loss = model(x.to(device), y.to(device), doc_ids=doc[0].to(device) if doc and doc[0] is not None else None)
        count = int((y != -100).sum())
        total += float(loss) * count
        n += count
    model.train(was_training)
    return total / max(n, 1)


def bits_per_byte(loss_nats: float, tokens: int, n_bytes: int) -> float:
    """Nats per token -> bits per byte of the underlying UTF-8 text."""
    return loss_nats / math.log(2) * tokens / max(n_bytes, 1)


def loss_report(loss: float, tokens: int | None = None, n_bytes: int | None = None) -> dict:
    out = {"val_loss": round(loss, 5), "val_ppl": round(math.exp(min(loss, 50)), 3)}
    if tokens and n_bytes:
        out["val_bpb"] = round(bits_per_byte(loss, tokens, n_bytes), 5)
    return out
