"""A Qwen3-MoE-style sparse MLP: a linear router picks each token's top-k of n_experts SwiGLU experts
(softmax over all experts, the k weights renormalised to sum to 1), plus the Switch Transformer's
load-balancing loss. Pure PyTorch; knows nothing of files.

Two dispatches give the same result whenever nothing overflows:
- capacity (training, capacity_factor > 0): every expert takes at most C = capacity_factor * tokens * k / n_experts
  tokens, gathered into one (n_experts, C, d) buffer and run as three batched matmuls. Shapes are static, so it
  compiles whole and never waits on the host; assignments past an expert's capacity are dropped (first choices
  are placed before second choices, so a token loses its weakest expert first) and counted.
- dropless (evaluation, generation, or capacity_factor = 0): tokens sorted by expert, one matmul per expert, as
  transformers' Qwen3MoeSparseMoeBlock computes it. Where torch._grouped_mm has a fast kernel (Hopper or newer, bf16)
  the sorted rows go through three grouped matmuls instead, with no host sync, and training takes this dropless path
  in place of the capacity one (nothing is dropped). That kernel is chosen by `grouped_mm_pays`; its CPU
  implementation computes the same thing and is what the tests compare.

DeepSeek-style options (ModelConfig): n_shared_experts dense SwiGLU experts every token uses, added to the routed
output; fine-grained experts are just many narrow ones (n_experts, expert_d_ff, experts_per_token); sigmoid routing
(each expert scored on its own, the chosen k scores renormalised); auxiliary-loss-free balancing (DeepSeek-V3,
torchtitan): a per-expert bias added to the scores for choosing experts only, never to their weights, and moved
after each optimizer step by router_bias_rate toward the experts that got fewer tokens than average
(`update_router_bias`; the bias is a buffer, saved in checkpoints, never seen by the optimizer); and the router
z-loss of ST-MoE, the mean squared logsumexp of the router logits, which keeps the logits small."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rain.config import ModelConfig


def grouped_mm_pays(x: torch.Tensor) -> bool:
    """Whether torch._grouped_mm has a fast kernel for x: CUDA, compute capability 9.0+ (Hopper), bf16. Unmeasured
    in rain so far (no such GPU in its test runs); elsewhere the per-expert loop or the capacity buffer runs."""
    return (hasattr(torch, "_grouped_mm") and x.is_cuda and x.dtype == torch.bfloat16
            and torch.cuda.get_device_capability(x.device) >= (9, 0))


class SharedExperts(nn.Module):
    """n_shared_experts SwiGLU experts of width d_expert that every token uses: one SwiGLU of their total width."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.n_shared_experts * cfg.d_expert
        self.gate = nn.Linear(cfg.d_model, h, bias=False)
        self.up = nn.Linear(cfg.d_model, h, bias=False)
        self.down = nn.Linear(h, cfg.d_model, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n, h = cfg.n_experts, cfg.d_expert
        self.n_experts, self.top_k, self.capacity_factor = n, cfg.experts_per_token, cfg.capacity_factor
        self.score, self.bias_rate, self.z_coef = cfg.router_score, cfg.router_bias_rate, cfg.router_z_coef
        self.router = nn.Linear(cfg.d_model, n, bias=False)
        self.shared = SharedExperts(cfg) if cfg.n_shared_experts else None
        if self.bias_rate:
            # Auxiliary-loss-free balancing: the bias (saved with the weights) and the assignments each expert got
            # since the last update (counted in training forwards, read by update_router_bias).
            self.register_buffer("expert_bias", torch.zeros(n))
            self.register_buffer("load", torch.zeros(n), persistent=False)
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
        probs, weights, experts, _ = self._route(x)
        return probs, weights, experts

    def _route(self, x):
        """route's three, and the router logits (N, E) in fp32 (for the z-loss)."""
        logits = self.router(x).float()
        if self.score == "softmax":
            scores = probs = torch.softmax(logits, dim=-1)
        else:  # sigmoid: each expert scored on its own; probs (each token's scores summing to 1) feed the balance loss
            scores = torch.sigmoid(logits)
            probs = scores / scores.sum(dim=-1, keepdim=True)
        if self.bias_rate:  # the bias picks the experts; the weights stay the unbiased scores
            experts = (scores + self.expert_bias).topk(self.top_k, dim=-1).indices
            weights = scores.gather(-1, experts)
        else:
            weights, experts = scores.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return probs, weights.to(x.dtype), experts, logits

    @staticmethod
    def z_loss(logits: torch.Tensor) -> torch.Tensor:
        """ST-MoE's router z-loss: the mean over tokens of logsumexp(logits)^2."""
        return torch.logsumexp(logits, dim=-1).square().mean()

    def balance_loss(self, probs: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """n_experts * sum_e (share of assignments to e) * (mean router probability of e): 1.0 when uniform."""
        share = F.one_hot(experts.reshape(-1), self.n_experts).float().mean(dim=0)
        return self.n_experts * (share * probs.mean(dim=0)).sum()

    def experts_mlp(self, x: torch.Tensor) -> torch.Tensor:
        """x (E, C, d) -> each expert's SwiGLU of its own rows, (E, C, d)."""
        return torch.bmm(F.silu(torch.bmm(x, self.gate.mT)) * torch.bmm(x, self.up.mT), self.down.mT)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor | None] | None]:
        """x (B, T, d) -> (output (B, T, d), when training (the load-balancing loss, the z-loss or None), else None)."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs, weights, experts, logits = self._route(x)
        shared = self.shared(x) if self.shared is not None else None
        if not self.training:
            out = self._dropless_dispatch(x, weights, experts)
            return (out if shared is None else out + shared).reshape(shape), None
        aux = self.balance_loss(probs, experts)
        if self.capacity_factor > 0 and not grouped_mm_pays(x):
            out, dropped = self._capacity_dispatch(x, weights, experts)
        else:
            out, dropped = self._dropless_dispatch(x, weights, experts), torch.zeros_like(aux)
        with torch.no_grad():
            self.balance.copy_(aux.detach())
            self.dropped.copy_(dropped)
            if self.bias_rate:
                self.load.index_add_(0, experts.reshape(-1), torch.ones_like(experts.reshape(-1), dtype=self.load.dtype))
        z = self.z_loss(logits) if self.z_coef else None
        return (out if shared is None else out + shared).reshape(shape), (aux, z)

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
        if grouped_mm_pays(x):
            return self._grouped_dispatch(x, weights, experts)
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

    def _grouped_dispatch(self, x, weights, experts):
        """The dropless dispatch as three torch._grouped_mm calls over the rows sorted by expert: no host sync and
        no per-expert launches. offs[e] is where expert e's rows end."""
        N, d = x.shape
        expert = experts.reshape(-1)
        order = expert.argsort(stable=True)
        token = order // self.top_k
        offs = torch.bincount(expert, minlength=self.n_experts).cumsum(0).to(torch.int32)
        rows = x[token]
        h = F.silu(torch._grouped_mm(rows, self.gate.mT, offs=offs)) * torch._grouped_mm(rows, self.up.mT, offs=offs)
        y = torch._grouped_mm(h, self.down.mT, offs=offs) * weights.reshape(-1)[order, None]
        return x.new_zeros(N, d).index_add(0, token, y)


@torch.no_grad()
def update_router_bias(model: nn.Module, all_reduce=None) -> None:
    """After an optimizer step: move each bias-balanced layer's expert bias by router_bias_rate toward the experts
    that got fewer assignments than average since the last update (DeepSeek-V3's sign rule), then restart the
    count. all_reduce sums the counts across data-parallel ranks first, so every rank keeps the same bias."""
    for m in model.modules():
        if isinstance(m, MoE) and m.bias_rate:
            if all_reduce is not None:
                all_reduce(m.load)
            m.expert_bias.add_(m.bias_rate * torch.sign(m.load.mean() - m.load))
            m.load.zero_()


def router_stats(model: nn.Module) -> dict[str, float]:
    """Mean balance and dropped share over the MoE layers of the last training forward ({} for a dense model)."""
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    if not layers:
        return {}
    return {"moe_balance": round(float(torch.stack([m.balance for m in layers]).mean()), 4),
            "moe_dropped": round(float(torch.stack([m.dropped for m in layers]).mean()), 5)}
