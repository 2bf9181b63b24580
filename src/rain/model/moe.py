"""A Qwen3-MoE-style sparse MLP: a linear router picks each token's top-k of n_experts SwiGLU experts
(softmax over all experts, the k weights renormalised to sum to 1), plus the Switch Transformer's
load-balancing loss. Pure PyTorch; knows nothing of files.

Two dispatches give the same result whenever nothing overflows:
- capacity (training, capacity_factor > 0): every expert takes at most C = capacity_factor * tokens * k / n_experts
  tokens, gathered into one (n_experts, C, d) buffer and run as three batched matmuls. Shapes are static, so it
  compiles whole and never waits on the host; assignments past an expert's capacity are dropped (first choices
  are placed before second choices, so a token loses its weakest expert first) and counted.
- dropless (evaluation, generation, or capacity_factor = 0): tokens sorted by expert, one matmul per expert, as
  transformers' Qwen3MoeSparseMoeBlock computes it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rain.config import ModelConfig


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n, h = cfg.n_experts, cfg.d_expert
        self.n_experts, self.top_k, self.capacity_factor = n, cfg.experts_per_token, cfg.capacity_factor
        self.router = nn.Linear(cfg.d_model, n, bias=False)
        # Expert weights in nn.Linear's (out, in) layout, one slice per expert.
        self.gate = nn.Parameter(torch.empty(n, h, cfg.d_model))
        self.up = nn.Parameter(torch.empty(n, h, cfg.d_model))
        self.down = nn.Parameter(torch.empty(n, cfg.d_model, h))
        for w in (self.gate, self.up, self.down):  # Transformer.reset_parameters re-draws them with depth scaling
            nn.init.normal_(w, std=cfg.init_std)
        # Router statistics of the last training forward, read at log intervals (no host sync in the step):
        # balance = the load-balancing loss (1.0 when perfectly balanced), dropped = share of assignments dropped.
        self.register_buffer("balance", torch.ones(()), persistent=False)
        self.register_buffer("dropped", torch.zeros(()), persistent=False)

    def capacity(self, tokens: int) -> int:
        return min(tokens, math.ceil(self.capacity_factor * tokens * self.top_k / self.n_experts))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, d) -> router probabilities (N, E) in fp32, top-k weights (N, k) in x's dtype, expert ids (N, k)."""
        probs = torch.softmax(self.router(x).float(), dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return probs, weights.to(x.dtype), experts

    def balance_loss(self, probs: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """n_experts * sum_e (share of assignments to e) * (mean router probability of e): 1.0 when uniform."""
        share = F.one_hot(experts.reshape(-1), self.n_experts).float().mean(dim=0)
        return self.n_experts * (share * probs.mean(dim=0)).sum()

    def experts_mlp(self, x: torch.Tensor) -> torch.Tensor:
        """x (E, C, d) -> each expert's SwiGLU of its own rows, (E, C, d)."""
        return torch.bmm(F.silu(torch.bmm(x, self.gate.mT)) * torch.bmm(x, self.up.mT), self.down.mT)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, d) -> (output (B, T, d), the load-balancing loss when training, else None)."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs, weights, experts = self.route(x)
        if not self.training:
            return self._dropless_dispatch(x, weights, experts).reshape(shape), None
        aux = self.balance_loss(probs, experts)
        if self.capacity_factor > 0:
            out, dropped = self._capacity_dispatch(x, weights, experts)
        else:
            out, dropped = self._dropless_dispatch(x, weights, experts), torch.zeros_like(aux)
        with torch.no_grad():
            self.balance.copy_(aux.detach())
            self.dropped.copy_(dropped)
        return out.reshape(shape), aux

    def _capacity_dispatch(self, x, weights, experts):
        N, d = x.shape
        E, k, C = self.n_experts, self.top_k, self.capacity(N)
        expert = experts.t().reshape(-1)  # (k * N,) all first choices, then all second choices, ...
        token = torch.arange(N, device=x.device).repeat(k)
        onehot = F.one_hot(expert, E)
        position = (onehot.cumsum(dim=0) * onehot).sum(dim=1) - 1  # place in its expert's queue
        keep = position < C
        slot = torch.where(keep, expert * C + position, E * C)  # overflow goes to a spare row that is never read
        buffer = x.new_zeros(E * C + 1, d).index_add(0, slot, x[token])
        y = self.experts_mlp(buffer[: E * C].view(E, C, d)).reshape(E * C, d)
        y = torch.cat([y, y.new_zeros(1, d)])[slot] * (weights.t().reshape(-1) * keep)[:, None]
        return y.view(k, N, d).sum(dim=0), 1 - keep.float().mean()

    def _dropless_dispatch(self, x, weights, experts):
        N, d = x.shape
        expert = experts.reshape(-1)
        order = expert.argsort(stable=True)
        token = order // self.top_k
        counts = torch.bincount(expert, minlength=self.n_experts).tolist()
        rows = x[token].split(counts)
        # Every expert runs, even on no rows, so each expert weight always gets a gradient (DDP needs that).
        y = torch.cat([(F.silu(r @ self.gate[e].T) * (r @ self.up[e].T)) @ self.down[e].T for e, r in enumerate(rows)])
        y = y * weights.reshape(-1)[order, None]
        return x.new_zeros(N, d).index_add(0, token, y)


def router_stats(model: nn.Module) -> dict[str, float]:
    """Mean balance and dropped share over the MoE layers of the last training forward ({} for a dense model)."""
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    if not layers:
        return {}
    return {"moe_balance": round(float(torch.stack([m.balance for m in layers]).mean()), 4),
            "moe_dropped": round(float(torch.stack([m.dropped for m in layers]).mean()), 5)}
