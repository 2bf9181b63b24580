"""AdamW with weight decay on 2-D weight matrices only (or Muon for the hidden ones), and the learning-rate
schedules."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from rain.config import TrainConfig
from rain.train.muon import Muon


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay the matrices of linear layers; never embeddings, norms or biases (shared tensors once)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def muon_param_groups(model: nn.Module, t: TrainConfig) -> list[dict]:
    """Muon for the hidden matrices; AdamW for embeddings, norms and an untied output head."""
    decay, no_decay = param_groups(model, t.weight_decay)
    head = getattr(getattr(model, "lm_head", None), "weight", None)
    hidden = [p for p in decay["params"] if p is not head]
    groups = [{"params": hidden, "muon": True, "lr": t.muon_lr, "momentum": t.muon_momentum,
               "weight_decay": t.muon_weight_decay},
              {**decay, "params": [p for p in decay["params"] if p is head]}, no_decay]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, t: TrainConfig, device_type: str) -> torch.optim.Optimizer:
    fused = device_type == "cuda"
    if t.optimizer == "muon":
        return Muon(muon_param_groups(model, t), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, fused=fused)
    return torch.optim.AdamW(
        param_groups(model, t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, fused=fused,
    )


def muon_schedule(t: TrainConfig) -> TrainConfig:
    """The settings lr_at reads, for Muon's own schedule."""
    return dataclasses.replace(t, lr=t.muon_lr, min_lr=t.muon_lr * t.min_lr / t.lr, warmup=t.muon_warmup,
                               schedule=t.muon_schedule)


def set_lr(optimizer: torch.optim.Optimizer, step: int, total: int, t: TrainConfig) -> float:
    """Set every group's learning rate for optimizer step `step`; returns AdamW's (the one logged)."""
    lr = lr_at(step, total, t)
    muon_lr = lr_at(step, total, muon_schedule(t)) if t.optimizer == "muon" else lr
    for group in optimizer.param_groups:
        group["lr"] = muon_lr if group.get("muon") else lr
    return lr


def warmup_steps(t: TrainConfig, total: int) -> int:
    return int(round(t.warmup * total)) if t.warmup < 1 else int(t.warmup)


def lr_at(step: int, total: int, t: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total`: linear warm-up to t.lr, then
    cosine to t.min_lr, warmup-stable-decay (linear to min_lr over the last decay_frac), or constant."""
    warm = warmup_steps(t, total)
    if step < warm:
        return t.lr * (step + 1) / warm
    if t.schedule == "constant":
        return t.lr
    if t.schedule == "wsd":
        decay_start = total - int(round(t.decay_frac * total))
        if step < decay_start:
            return t.lr
        frac = (step - decay_start + 1) / max(1, total - decay_start)
        return t.lr + (t.min_lr - t.lr) * frac
    frac = (step - warm + 1) / max(1, total - warm)
    return t.min_lr + (t.lr - t.min_lr) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
