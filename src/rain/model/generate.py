"""Sampling with a KV cache: temperature, top-k, top-p, a token limit, stop tokens, a seed."""

from __future__ import annotations

from typing import Iterator

import torch

from rain.model.transformer import KVCache, Transformer


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, gen: torch.Generator | None):
    """logits (B, V) -> next token ids (B,). temperature 0 means greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)


@torch.no_grad()
def stream(
    model: Transformer,
    prompt: list[int],
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int = 50,
    top_p: float = 1.0,
    stop_ids: tuple[int, ...] = (),
    seed: int | None = None,
    vocab_limit: int | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time; stops at a stop id (not yielded), the limit or the context.
    vocab_limit: ids at or past it are never produced (a vocabulary padded past the tokenizer's, for speed)."""
    ctx = model.cfg.context
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token")
    if len(prompt) >= ctx:
        raise ValueError(f"the prompt has {len(prompt)} tokens; the model's context is {ctx}: shorten it")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    max_new_tokens = min(max_new_tokens, ctx - len(prompt))
    cache = KVCache(model.cfg, 1, len(prompt) + max_new_tokens, device, next(model.parameters()).dtype)
    logits = model(torch.tensor([prompt], device=device), cache=cache)[:, -1]
    for _ in range(max_new_tokens):
        if vocab_limit is not None:
            logits[:, vocab_limit:] = float("-inf")
        token = int(sample_next(logits, temperature, top_k, top_p, gen)[0])
        if token in stop_ids:
            return
        yield token
        if cache.length >= cache.max_len:
            return
        logits = model(torch.tensor([[token]], device=device), cache=cache)[:, -1]


def generate(model: Transformer, prompt: list[int], **kwargs) -> list[int]:
    """All of `stream`'s tokens as a list."""
    return list(stream(model, prompt, **kwargs))
