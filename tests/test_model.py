import math

import pytest
import torch

from rain.model.generate import generate
from rain.model.transformer import Attention, Transformer, apply_rope, rope_tables
from tests.conftest import small_model_config


def test_changing_a_future_token_never_changes_earlier_logits():
    model = Transformer(small_model_config()).eval()
    x = torch.randint(0, 512, (2, 32))
    y = x.clone()
    y[:, 20] = (y[:, 20] + 1) % 512
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.equal(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])



def test_positions_and_attn_mask_give_the_document_and_causal_forwards():
    torch.manual_seed(0)
    model = Transformer(small_model_config()).eval()
    x, y = torch.randint(0, 512, (2, 2, 12)).unbind(0)
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    with torch.no_grad():
        # Spelled out, the default (position t, causal attention); SDPA's masked kernel, so to float rounding.
        torch.testing.assert_close(model(x, positions=torch.arange(12).expand(2, 12), attn_mask=causal), model(x))
        # Two documents of 5 and 7 tokens: positions restart, no attention across them; logits and per-token losses.
        doc = torch.tensor([[0] * 5 + [1] * 7] * 2)
        pos = torch.cat([torch.arange(5), torch.arange(7)]).expand(2, 12)
        mask = (causal & (doc[:, :, None] == doc[:, None, :]))[:, None]
        assert torch.equal(model(x, positions=pos, attn_mask=mask), model(x, doc_ids=doc))
        assert torch.equal(model(x, y, positions=pos, attn_mask=mask, per_token=True),
                          model(x, y, doc_ids=doc, per_token=True))
        torch.testing.assert_close(model(x, positions=pos, attn_mask=mask)[:, 5:], model(x[:, 5:]))
        # What the evaluator packs: a context of 4 then two continuations that each see it but not each other.
        seg = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
        shared = causal & ((seg[None, :] == 0) | (seg[None, :] == seg[:, None]))
        packed = model(x, positions=torch.tensor([list(range(8)) + list(range(4, 8))] * 2), attn_mask=shared)
        second = model(torch.cat([x[:, :4], x[:, 8:]], dim=1))
        torch.testing.assert_close(packed[:, :8], model(x[:, :8]))
        torch.testing.assert_close(packed[:, 8:], second[:, 4:])
    with pytest.raises(ValueError, match="not both"):
        model(x, doc_ids=doc, attn_mask=mask)


def reference_attention(attn: Attention, x, cos, sin):
    """Plain multi-head attention with an explicit softmax; K/V heads repeated for each query group."""
    B, T, _ = x.shape
    H, KV, D = attn.n_head, attn.n_kv_head, attn.head_dim
    q = attn.q(x).view(B, T, H, D)
    k = attn.k(x).view(B, T, KV, D)
    v = attn.v(x).view(B, T, KV, D).transpose(1, 2)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rope(q.transpose(1, 2), cos, sin), apply_rope(k.transpose(1, 2), cos, sin)
    k, v = k[:, [h * KV // H for h in range(H)]], v[:, [h * KV // H for h in range(H)]]
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    y = scores.softmax(-1) @ v
    return attn.o(y.transpose(1, 2).reshape(B, T, H * D))


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_grouped_query_attention_equals_multi_head_with_shared_kv(n_kv_head):
    cfg = small_model_config(n_kv_head=n_kv_head)
    attn = Attention(cfg)
    cos, sin = rope_tables(cfg.dim_head, 16, cfg.rope_theta)
    x = torch.randn(2, 16, cfg.d_model)
    assert torch.allclose(attn(x, cos, sin), reference_attention(attn, x, cos, sin), atol=1e-5)


def test_gqa_with_all_kv_heads_is_standard_multi_head_attention():
    """With n_kv_head == n_head, rain's attention equals torch's own nn.MultiheadAttention (no RoPE/QK-norm)."""
    cfg = small_model_config(n_kv_head=4, qk_norm=False)
    attn = Attention(cfg)
    mha = torch.nn.MultiheadAttention(cfg.d_model, cfg.n_head, bias=False, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]))
        mha.out_proj.weight.copy_(attn.o.weight)
    x = torch.randn(2, 10, cfg.d_model)
    ones, zeros = torch.ones(10, cfg.dim_head), torch.zeros(10, cfg.dim_head)  # RoPE switched off
    mask = torch.ones(10, 10, dtype=torch.bool).triu(1)
    expected, _ = mha(x, x, x, attn_mask=mask, need_weights=False)
    assert torch.allclose(attn(x, ones, zeros), expected, atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    D = 16
    cos, sin = rope_tables(D, 64, 10000.0)
    q, k = torch.randn(D), torch.randn(D)

    def score(m, n):
        qm = apply_rope(q.view(1, 1, 1, D), cos[m : m + 1], sin[m : m + 1])
        kn = apply_rope(k.view(1, 1, 1, D), cos[n : n + 1], sin[n : n + 1])
        return float((qm * kn).sum())

    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-4)
    assert score(10, 10) == pytest.approx(score(0, 0), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


@pytest.mark.parametrize("experts", [0, 4])  # dense, and a mixture of experts (dropless when generating)
def test_kv_cache_generation_equals_full_recomputation(experts):
    model = Transformer(small_model_config(n_experts=experts)).eval()
    prompt = [3, 17, 99, 4]
    cached = generate(model, prompt, max_new_tokens=20, temperature=0)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(20):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert cached == seq[len(prompt):]


def test_sampling_is_seeded_and_respects_limits():
    model = Transformer(small_model_config()).eval()
    a = generate(model, [1, 2, 3], max_new_tokens=15, temperature=1.0, top_k=20, top_p=0.9, seed=7)
    b = generate(model, [1, 2, 3], max_new_tokens=15, temperature=1.0, top_k=20, top_p=0.9, seed=7)
    assert a == b and len(a) == 15
    stop = a[3]
    c = generate(model, [1, 2, 3], max_new_tokens=15, temperature=1.0, top_k=20, top_p=0.9, seed=7, stop_ids=(stop,))
    assert c == a[: a.index(stop)]


def test_padded_vocabulary_ids_are_never_sampled():
    # A vocabulary padded past the tokenizer's (gpt2-124m: 50,304 rows for 50,257 tokens) must not emit ids the
    # tokenizer cannot decode, greedy or sampled, even when the padded rows score highest.
    model = Transformer(small_model_config()).eval()
    model.lm_head.register_forward_hook(lambda _m, _i, logits: logits.index_fill(-1, torch.arange(300, 512), 100.0))
    for temperature in (0.0, 1.0):
        free = generate(model, [1, 2, 3], max_new_tokens=10, temperature=temperature, top_k=0, seed=0)
        limited = generate(model, [1, 2, 3], max_new_tokens=10, temperature=temperature, top_k=0, seed=0,
                           vocab_limit=300)
        assert max(free) >= 300 and max(limited) < 300


def test_prompt_longer_than_context_is_refused():
    model = Transformer(small_model_config(context=16)).eval()
    with pytest.raises(ValueError, match="context"):
        generate(model, list(range(16)), max_new_tokens=4)


def test_residual_stream_stays_stable_at_depth():
    """With the depth-scaled init, a 32-layer model's output scale stays close to a 4-layer model's."""
    x = torch.randint(0, 512, (2, 32))
    norms = {}
    for depth in (4, 32):
        model = Transformer(small_model_config(n_layer=depth))
        h = model.embed(x)
        cos, sin = model.rope_cos[:32], model.rope_sin[:32]
        with torch.no_grad():
            h, _ = model.blocks(h, cos, sin)
        norms[depth] = float(h.std())
    assert norms[32] / norms[4] < 1.5


def test_tiny_model_overfits_one_batch():
    model = Transformer(small_model_config())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, 512, (4, 32))
    first = None
    for _ in range(150):
        loss = model(x[:, :-1], x[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 5.5 and loss.item() < 0.2


def test_compiled_model_has_no_graph_break_and_matches_eager():
    # What the GPU trainer runs (torch.compile of the whole model, loss included), checked on CPU: fullgraph
    # fails on any graph break, which would split the step into slower pieces.
    cfg = small_model_config(context=64, n_layer=1)  # every block is the same code: one compiles in half the time
    model = Transformer(cfg)
    model.loss_chunk = 48  # the chunked loss over several chunks, its logit gradient built out of place
    compiled = torch.compile(model, fullgraph=True)
    x, y = torch.randint(0, cfg.vocab_size, (2, 2, 64)).unbind(0)
    y[0, [3, 10, 11]] = -100  # ignored targets (SFT's masked prompt) stay exact under compile too
    # The last case, a second length, makes Dynamo recompile with a symbolic length (seen to break SDPA's is_causal).
    for doc, length in ((None, 64), (torch.tensor([[0] * 20 + [1] * 44, [0] * 64]), 64), (None, 40)):
        results = []
        for m in (model, compiled):
            model.zero_grad(set_to_none=True)
            loss = m(x[:, :length], y[:, :length], doc_ids=doc)
            loss.backward()
            results.append((loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
        (eager_loss, eager_grad), (comp_loss, comp_grad) = results
        assert torch.allclose(eager_loss, comp_loss, atol=1e-5)
        assert torch.allclose(eager_grad, comp_grad, atol=1e-5)
