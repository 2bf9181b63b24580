"""A Qwen3/Llama-style decoder: pre-RMSNorm, grouped-query attention with RoPE and optional QK-norm,
SwiGLU MLP (or a mixture of SwiGLU experts, rain.model.moe), no biases, LM head tied to the embedding.
Pure PyTorch; knows nothing of files."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rain.config import ModelConfig
from rain.model.moe import MoE

# SDPA shares K/V heads across query groups itself (no repeated copies) from torch 2.5 on.
SDPA_GQA = torch.__version__ >= "2.5"

try:  # FlexAttention (torch 2.5+): document masking on CUDA without a dense (T, T) mask
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # older torch: document masking takes SDPA with a dense mask
    create_block_mask = flex_attention = None
ATTENTION = ("auto", "flex", "sdpa")
_compiled_flex = None  # torch.compile(flex_attention), made once on first use (compiling per call would recompile)


def flex(q, k, v, block_mask, enable_gqa: bool) -> torch.Tensor:
    """flex_attention, compiled on CUDA: uncompiled it is a reference that materialises every score. Eager elsewhere
    (on CPU it runs forward only, which is what the tests use it for); inside a compiled model Dynamo compiles it."""
    global _compiled_flex
    fn = flex_attention
    if q.device.type == "cuda" and not torch.compiler.is_compiling():
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention)
        fn = _compiled_flex
    return fn(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)


def uses_flex(attention: str, device: torch.device) -> bool:
    """Whether document masking runs on FlexAttention: `auto` takes it on CUDA when torch has it (its backward does
    not run on CPU), `flex` always, `sdpa` never (the dense-mask path, also the fallback)."""
    if attention not in ATTENTION:
        raise ValueError(f"attention {attention!r} must be one of {', '.join(ATTENTION)}")
    if attention == "flex" and flex_attention is None:
        raise RuntimeError(f"FlexAttention needs torch 2.5 or later (this is {torch.__version__})")
    return attention == "flex" or (attention == "auto" and device.type == "cuda" and flex_attention is not None)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 (as HF Llama/Qwen3 do) so bf16 autocast does not cost precision here.
        return (F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps) * self.weight.float()).type_as(x)


def rope_tables(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # the rotate-half layout, as in HF Llama/Qwen3
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (T, D) or (B, 1, T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).type_as(x)


class KVCache:
    """Pre-allocated keys/values for every layer; `length` tokens are filled."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype):
        shape = (batch, cfg.n_kv_head, max_len, cfg.dim_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.max_len = max_len
        self.length = 0


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hd = cfg.dim_head
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, hd
        self.q = nn.Linear(cfg.d_model, cfg.n_head * hd, bias=False)
        self.k = nn.Linear(cfg.d_model, cfg.n_kv_head * hd, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.n_kv_head * hd, bias=False)
        self.o = nn.Linear(cfg.n_head * hd, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None
        self.sdpa_gqa = SDPA_GQA  # False: K/V heads repeated before SDPA (what `rain bench --disable sdpa-gqa` times)

    def forward(self, x, cos, sin, mask=None, cache: KVCache | None = None, layer: int = 0):
        """mask: None (causal), a boolean tensor for SDPA, or a FlexAttention BlockMask (documents, no cache)."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim)
        k = self.k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.v(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin)
        k = apply_rope(k.transpose(1, 2), cos, sin)
        if mask is not None and not isinstance(mask, torch.Tensor):  # a BlockMask: flex shares K/V heads itself
            y = flex(q, k, v, mask, enable_gqa=self.n_kv_head != self.n_head)
            return self.o(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
        is_causal = mask is None
        if cache is not None:
            start = cache.length
            cache.k[layer][:, :, start : start + T] = k
            cache.v[layer][:, :, start : start + T] = v
            k, v = cache.k[layer][:, :, : start + T], cache.v[layer][:, :, : start + T]
            if start > 0 and mask is None:
                is_causal = False
                if T > 1:  # a chunk after a prefix: token i sees the prefix and chunk tokens <= i
                    mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(start)
        gqa = self.n_kv_head != self.n_head
        if gqa and (mask is not None or not self.sdpa_gqa):  # the masked (memory-efficient) kernel takes no GQA
            rep = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            gqa = False
        extra = {"enable_gqa": True} if gqa else {}
        # is_causal implies no cached prefix (queries and keys align). It must not depend on T: a compiled model
        # recompiled for a second length treats T as symbolic, and SDPA takes only a real bool.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, **extra)
        return self.o(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MoE(cfg) if cfg.n_experts else MLP(cfg)

    def forward(self, x, cos, sin, mask=None, cache=None, layer=0):
        """-> (x, the MoE load-balancing loss when training, else None)."""
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache, layer)
        if isinstance(self.mlp, MoE):
            y, aux = self.mlp(self.mlp_norm(x))
            return x + y, aux
        return x + self.mlp(self.mlp_norm(x)), None


def document_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """doc_ids (B, T), equal within a document -> position ids restarting at 0 per document."""
    B, T = doc_ids.shape
    idx = torch.arange(T, device=doc_ids.device).expand(B, T)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    start_idx = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - start_idx


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """doc_ids (B, T) -> a (B, 1, T, T) boolean mask for SDPA, causal and block-diagonal (no attention across
    documents). It costs B x T x T bytes, and a masked SDPA cannot run the flash kernel (CUDA's fallback: flex)."""
    T = doc_ids.shape[1]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return (same_doc & causal)[:, None]


def document_block_mask(doc_ids: torch.Tensor):
    """doc_ids (B, T) -> the same rule as a FlexAttention BlockMask, built once per batch and shared by every layer:
    flex skips the 128 x 128 tiles that are fully masked and masks inside the rest, so no (T, T) tensor is kept."""
    B, T = doc_ids.shape

    def same_document_causal(b, h, q, kv):
        return (q >= kv) & (doc_ids[b, q] == doc_ids[b, kv])

    return create_block_mask(same_document_causal, B, None, T, T, device=doc_ids.device)


def _chunk_loss(x, w, targets):
    """Summed cross-entropy of one chunk, with its fp32 log-probabilities (for the gradient)."""
    logp = torch.log_softmax(x @ w.T, dim=-1, dtype=torch.float32)
    valid = targets != -100
    safe = targets.clamp(min=0)
    return -(logp.gather(1, safe[:, None]).squeeze(1) * valid).sum(), logp, safe, valid


def _logit_grad(logp, safe, valid):
    """d(summed loss)/d(logits) = softmax - onehot(target), zero on ignored rows."""
    if torch.compiler.is_compiling():  # pointwise, so Inductor makes it one pass
        cols = torch.arange(logp.shape[1], device=logp.device)
        p = logp.exp()
        return torch.where(cols == safe[:, None], p - 1, p) * valid[:, None]
    g = logp.exp_()  # eagerly: in place, no more (N, V) buffers
    g[torch.arange(g.shape[0], device=g.device), safe] -= 1
    return g.mul_(valid[:, None])


def chunked_linear_grads(x, weight, chunk: int, dtype: torch.dtype, loss_and_grad):
    """The loop a fused linear loss runs in its forward pass: the logits x @ weight.T `chunk` rows at a time, with
    loss_and_grad(first_row, x_chunk, w) -> (the chunk's summed loss, d loss / d its logits). Returns the summed loss
    and the gradients for x and weight, so no (N, V) tensor outlives its chunk. Matmuls in `dtype`."""
    w = weight.to(dtype)
    grad_x = torch.empty_like(x)
    grad_w = torch.zeros_like(weight, dtype=torch.float32)
    total = x.new_zeros((), dtype=torch.float32)
    for s in range(0, x.shape[0], chunk):
        xc = x[s : s + chunk].to(dtype)
        loss, g = loss_and_grad(s, xc, w)
        total = total + loss
        g = g.to(dtype)
        grad_x[s : s + chunk] = g @ w
        grad_w += (g.T @ xc).float()
    return total, grad_x, grad_w.to(weight.dtype)


class LinearCrossEntropy(torch.autograd.Function):
    """mean cross-entropy(x @ weight.T, targets), ignoring targets of -100, computed `chunk` rows at a time with the
    gradients worked out in the forward pass (as Liger-Kernel's fused linear cross-entropy does): neither the full
    (N, V) logits nor their fp32 softmax are ever held. Matmuls run in `dtype` (the autocast dtype), softmax in fp32."""

    @staticmethod
    def forward(ctx, x, weight, targets, chunk: int, dtype: torch.dtype):
        def loss_and_grad(s, xc, w):
            loss, logp, safe, valid = _chunk_loss(xc, w, targets[s : s + chunk])
            return loss, _logit_grad(logp, safe, valid)

        total, grad_x, grad_w = chunked_linear_grads(x, weight, chunk, dtype, loss_and_grad)
        count = (targets != -100).sum()
        ctx.save_for_backward(grad_x / count, grad_w / count)
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_out, grad_w * grad_out, None, None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                         per_token: bool = False) -> torch.Tensor:
    """x (N, d), weight (V, d), targets (N,) -> mean loss (or, without gradients, each row's loss with 0 where the
    target is -100: `per_token`); the autocast dtype (if on) for the matmuls."""
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    with torch.autocast(dev, enabled=False):
        if per_token:
            return torch.cat([_token_losses(x[s : s + chunk].to(dtype), weight.to(dtype), targets[s : s + chunk])
                              for s in range(0, x.shape[0], chunk)])
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
            return LinearCrossEntropy.apply(x, weight, targets, chunk, dtype)
        w = weight.to(dtype)
        total = sum(_chunk_loss(x[s : s + chunk].to(dtype), w, targets[s : s + chunk])[0]
                    for s in range(0, x.shape[0], chunk))
        return total / (targets != -100).sum()


@torch.no_grad()
def _token_losses(x, w, targets):
    logp = torch.log_softmax(x @ w.T, dim=-1, dtype=torch.float32)
    return -logp.gather(1, targets.clamp(min=0)[:, None]).squeeze(1) * (targets != -100)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(cfg.dim_head, cfg.context, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.checkpoint_layers = 0  # the first N blocks recompute their activations in backward (training only)
        self.loss_chunk = max(1, 2**26 // cfg.vocab_size)  # tokens per loss chunk: 256 MB of fp32 logits
        self.attention = "auto"  # document masking: auto (flex on CUDA, else SDPA), flex or sdpa (see uses_flex)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) everywhere; the two projections that write into the residual stream are
        scaled by 1/sqrt(2 * n_layer) so its variance stays flat with depth (GPT-2's rule)."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            residual = name.endswith(("attn.o.weight", "mlp.down.weight", "mlp.down", "mlp.shared.down.weight"))
            scale = 1 / math.sqrt(2 * self.cfg.n_layer) if residual else 1
            nn.init.normal_(p, mean=0.0, std=std * scale)
        for m in self.modules():
            if isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once
        if non_embedding:
            n -= self.embed.weight.numel()
        return n

    def blocks(self, x, cos, sin, mask=None, cache: KVCache | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (B, T, d) through every block -> (hidden states, each MoE layer's (load-balancing loss, z-loss or None))."""
        aux = []
        for i, layer in enumerate(self.layers):
            if i < self.checkpoint_layers and self.training and cache is None and torch.is_grad_enabled():
                x, a = checkpoint(layer, x, cos, sin, mask, use_reentrant=False)
            else:
                x, a = layer(x, cos, sin, mask, cache, i)
            if a is not None:
                aux.append(a)
        return x, aux

    def _rope(self, positions: torch.Tensor | None, start: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos/sin for position ids (B, T) -> (B, 1, T, D), or for positions start..start+T-1 -> (T, D)."""
        if positions is None:
            return self.rope_cos[start : start + T], self.rope_sin[start : start + T]
        return self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        per_token: bool = False,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V) when targets is None, else the mean cross-entropy over targets != -100 (or, with
        `per_token` and no gradient, each position's loss (B, T), 0 where the target is -100). Training an MoE
        model, the returned loss also carries the load-balancing loss's gradient, but not its value.

        By default token t sits at position t (after the cache's tokens) and attends causally. positions (B, T)
        and a boolean attn_mask broadcastable to (B, 1, T, keys) (True: may attend; keys are the cache's tokens,
        then these) replace that, e.g. to score several sequences packed in one row; every query needs a key.
        doc_ids (B, T) is the usual case of it: positions restart and attention stays within each document
        (through FlexAttention on CUDA without a cache, `self.attention`; else SDPA with a dense mask).
        `hidden` (with targets): (loss, the final normed hidden states (B, T, d)), which a second loss on the same
        logits (distillation, rain.train.distill) multiplies by lm_head itself, chunk by chunk."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.context:
            raise ValueError(f"sequence of {start + T} tokens is longer than the context ({self.cfg.context})")
        if doc_ids is not None:
            if positions is not None or attn_mask is not None:
                raise ValueError("give doc_ids or positions/attn_mask, not both: doc_ids sets both")
            positions = document_positions(doc_ids)
            flex_mask = cache is None and uses_flex(self.attention, doc_ids.device)  # a cache's keys are not in doc_ids
            attn_mask = document_block_mask(doc_ids) if flex_mask else document_mask(doc_ids)
        cos, sin = self._rope(positions, start, T)
        x, aux = self.blocks(self.embed(idx), cos, sin, attn_mask, cache)
        if cache is not None:
            cache.length += T
        x = self.norm(x)
        if targets is None:
            return self.lm_head(x)
        loss = linear_cross_entropy(x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(-1), self.loss_chunk,
                                    per_token)
        if per_token:
            return loss.view(B, T)
        if aux and self.training and self.cfg.router_aux_coef:
            balance = torch.stack([balance for balance, _ in aux]).mean()
            # Adds zero: the logged loss stays the cross-entropy, the gradient gets coef * d(balance).
            loss = loss + self.cfg.router_aux_coef * (balance - balance.detach())
        if aux and self.training and self.cfg.router_z_coef:
            z = torch.stack([z for _, z in aux]).mean()  # the router z-loss, added the same way
            loss = loss + self.cfg.router_z_coef * (z - z.detach())
        return (loss, x) if hidden else loss
