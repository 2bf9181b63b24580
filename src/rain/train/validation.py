"""Validation loss, perplexity and bits per byte (tokenizer-independent) on held-out batches, overall and per
source: the one function that training, `rain eval` and SFT use, so their numbers agree."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Iterable

import torch


@torch.no_grad()
def source_losses(model, batches: Iterable[tuple], device: torch.device, autocast=None) -> dict[int, tuple[float, int]]:
    """{source id: (summed loss, tokens)} over batches of (inputs, targets, doc_ids or None, source ids or None);
    targets of -100 are left out, and every token counts once whatever window it is in. Without source ids
    everything is source -1."""
    was_training = model.training
    model.eval()
    sums: dict[int, list] = {}
    for x, y, doc, src in batches:
        y = y.to(device)
        with autocast or nullcontext():
            losses = model(x.to(device), y, doc_ids=None if doc is None else doc.to(device), per_token=True).float()
        valid = y != -100
        src = torch.full_like(y, -1) if src is None else src.to(device)
        for s in torch.unique(src[valid]).tolist():
            sel = valid & (src == s)
            acc = sums.setdefault(s, [0.0, 0])
            acc[0] += float(losses[sel].double().sum())
            acc[1] += int(sel.sum())
    model.train(was_training)
    return {s: (total, n) for s, (total, n) in sums.items()}


def bits_per_byte(loss_nats: float, tokens: int, n_bytes: int) -> float:
    """Nats per token -> bits per byte of the underlying UTF-8 text."""
    return loss_nats / math.log(2) * tokens / max(n_bytes, 1)


def loss_report(loss: float, tokens: int | None = None, n_bytes: int | None = None) -> dict:
    out = {"val_loss": round(loss, 5), "val_ppl": round(math.exp(min(loss, 50)), 3)}
    if tokens and n_bytes:
        out["val_bpb"] = round(bits_per_byte(loss, tokens, n_bytes), 5)
    return out


def validation_report(sums: dict[int, tuple[float, int]], source_names: list[str],
                      counts: dict[str | None, tuple[int, int]]) -> dict:
    """val_loss / val_ppl / val_bpb over every token, and `val_loss/NAME`, `val_bpb/NAME` per source when there
    are several. counts: (tokens, bytes) of the split (key None) and of each source, for bits per byte."""
    total = sum(t for t, _ in sums.values())
    n = sum(c for _, c in sums.values())
    report = {**loss_report(total / max(n, 1), *counts.get(None, (None, None))), "val_tokens": n}
    if len(source_names) > 1:
        for s, (t, c) in sorted(sums.items()):
            if 0 <= s < len(source_names):
                name = source_names[s]
                per = loss_report(t / c, *counts.get(name, (None, None)))
                report[f"val_loss/{name}"] = per["val_loss"]
                report[f"val_tokens/{name}"] = c
                if "val_bpb" in per:
                    report[f"val_bpb/{name}"] = per["val_bpb"]
    return report


def format_validation(step: int, report: dict) -> str:
    """One line: the overall loss (and bits per byte), then each source's."""
    bpb = f", {report['val_bpb']:.4f} bits/byte" if "val_bpb" in report else ""
    per = [f"{k.split('/', 1)[1]} {v:.4f}" for k, v in report.items() if k.startswith("val_loss/")]
    return f"step {step}: validation loss {report['val_loss']:.4f}{bpb}" + (f" ({', '.join(per)})" if per else "")
