"""Muon (Jordan et al., 2024: momentum orthogonalised by Newton-Schulz) for the hidden matrices, with
torch's AdamW for every other parameter, in one optimizer object: the trainer, the LR schedule and checkpoints
treat it like AdamW. Groups marked `muon=True` take Muon steps; the rest are handed to an inner AdamW that
shares the group dicts and the state. Same-shaped matrices are orthogonalised together in one batched matmul
(torch.optim.Muon takes them one by one: ~200 small launches per step for rain-v2); a 3-D parameter (an MoE
layer's experts) is a stack of matrices, each orthogonalised on its own."""

from __future__ import annotations

import torch

from rain.train.parallel import local, shard_like

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic, as in torch.optim.Muon


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately U V^T for g = U S V^T (singular values pushed into ~[0.7, 1.2]), batched over dim 0."""
    a, b, c = NS_COEFFICIENTS
    tall = g.size(-2) > g.size(-1)
    x = g.mT if tall else g
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def lr_scale(shape: torch.Size) -> float:
    """Keller's shape factor (torch.optim.Muon's 'original'): sqrt(max(1, rows / cols)) of each matrix."""
    return max(1.0, shape[-2] / shape[-1]) ** 0.5


class Muon(torch.optim.Optimizer):
    """groups: dicts with `params` and `muon` (True: Muon, else AdamW) plus any per-group settings.
    ns_dtype: the Newton-Schulz matmul dtype (default bf16 on CUDA, fp32 elsewhere)."""

    def __init__(self, groups: list[dict], lr: float, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, weight_decay: float = 0.0, betas=(0.9, 0.95), eps: float = 1e-8,
                 fused: bool | None = None, ns_dtype: torch.dtype | None = None):
        defaults = dict(lr=lr, muon=False, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        weight_decay=weight_decay)
        super().__init__(groups, defaults)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            if group["muon"] and any(p.dim() not in (2, 3) for p in group["params"]):
                raise ValueError("Muon groups take matrices (2-D) or stacks of them (3-D) only")
        adam_groups = [g for g in self.param_groups if not g["muon"]]
        self._adam = torch.optim.AdamW(adam_groups, lr=lr, betas=betas, eps=eps, fused=fused) if adam_groups else None
        self._link()

    def _link(self) -> None:
        """Point the inner AdamW at this optimizer's (possibly reloaded) group dicts and state."""
        if self._adam is not None:
            self._adam.param_groups = [g for g in self.param_groups if not g["muon"]]
            self._adam.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["muon"]:
                self._muon_group(group)
        if self._adam is not None:
            self._adam.step()
        return loss

    def _muon_group(self, group: dict) -> None:
        by_shape: dict[tuple, list[torch.Tensor]] = {}
        for p in group["params"]:
            if p.grad is not None:
                by_shape.setdefault((tuple(p.shape), p.device, p.dtype), []).append(p)
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        for (shape, device, _), params in by_shape.items():
            grads = [p.grad for p in params]
            bufs = []
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(self.state[p]["momentum_buffer"])
            torch._foreach_lerp_(bufs, grads, 1 - mu)
            updates = torch._foreach_lerp(grads, bufs, mu) if group["nesterov"] else bufs
            ns_dtype = self.ns_dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
            # Under FSDP2 (rain.train.parallel) each rank holds a slice of every matrix: it gathers the whole ones,
            # orthogonalises all of them (as one process would: the Newton-Schulz work is not split over the ranks)
            # and keeps its slice of the result. The cost per step is one all-gather of the Muon matrices.
            stacked = torch.stack([local(u) for u in updates]).to(ns_dtype)
            ortho = orthogonalize(stacked.flatten(0, -3), group["ns_steps"]).view_as(stacked).to(params[0].dtype)
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            torch._foreach_add_(params, [shard_like(o, p) for o, p in zip(ortho.unbind(0), params)],
                                alpha=-lr * lr_scale(shape))
