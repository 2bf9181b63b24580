"""Document masking through FlexAttention, checked on CPU where flex runs forward only (tests/test_cuda.py checks
forward and backward on a GPU): it must give what each document alone gives, and what the SDPA dense-mask path gives."""

import pytest
import torch

from rain.model import transformer
from rain.model.transformer import Transformer, uses_flex
from tests.conftest import small_model_config, tiny_run_config

pytestmark = [pytest.mark.skipif(transformer.flex_attention is None, reason="needs torch 2.5+ (FlexAttention)"),
              pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")]  # eager flex on purpose: CPU

# Two rows split differently, documents crossing flex's 128-token tiles (at 128 and 256) and a one-token document.
SPLITS = [[100, 60, 140, 19, 1], [200, 120]]
CONTEXT = 320
real_flex = transformer.flex


def packed_documents(vocab: int, seed: int = 0):
    """-> tokens (2, CONTEXT), doc_ids (2, CONTEXT), each row's documents as a list of (1, n) token tensors."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (len(SPLITS), CONTEXT), generator=g)
    doc_ids = torch.stack([torch.repeat_interleave(torch.arange(len(s)), torch.tensor(s)) for s in SPLITS])
    docs = [list(row[None].split(s, dim=1)) for row, s in zip(tokens, SPLITS)]
    return tokens, doc_ids, docs


def gqa_model(n_kv_head: int) -> Transformer:
    torch.manual_seed(0)
    return Transformer(small_model_config(context=CONTEXT, n_head=4, n_kv_head=n_kv_head)).eval()


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])  # multi-query, grouped, one K/V head per query head
def test_flex_document_masking_equals_each_document_alone(monkeypatch, n_kv_head):
    model = gqa_model(n_kv_head)
    model.attention = "flex"
    calls = []
    monkeypatch.setattr(transformer, "flex", lambda *a, **k: calls.append(1) or real_flex(*a, **k))
    tokens, doc_ids, docs = packed_documents(model.cfg.vocab_size)
    with torch.no_grad():
        together = model(tokens, doc_ids=doc_ids)
        alone = torch.stack([torch.cat([model(d)[0] for d in row]) for row in docs])  # plain causal SDPA
    assert len(calls) == model.cfg.n_layer  # the flex path ran, once per layer
    torch.testing.assert_close(together, alone, atol=2e-5, rtol=1e-4)


def test_flex_and_sdpa_document_masking_give_the_same_logits_and_losses():
    model = gqa_model(n_kv_head=2)
    tokens, doc_ids, _ = packed_documents(model.cfg.vocab_size, seed=1)
    targets = tokens.roll(-1, dims=1)
    out = {}
    with torch.no_grad():
        for path in ("flex", "sdpa"):
            model.attention = path
            out[path] = model(tokens, doc_ids=doc_ids), model(tokens, targets, doc_ids=doc_ids, per_token=True)
    torch.testing.assert_close(out["flex"], out["sdpa"], atol=2e-5, rtol=1e-4)


def test_auto_takes_sdpa_on_cpu_and_flex_on_cuda_only_where_torch_has_it(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not uses_flex("auto", cpu) and uses_flex("auto", cuda)
    assert uses_flex("flex", cpu) and not uses_flex("sdpa", cuda)
    with pytest.raises(ValueError, match="must be one of auto, flex, sdpa"):
        uses_flex("flash", cpu)
    # A torch without FlexAttention falls back to SDPA; forcing flex there says what is missing.
    monkeypatch.setattr(transformer, "flex_attention", None)
    assert not uses_flex("auto", cuda)
    with pytest.raises(RuntimeError, match="torch 2.5"):
        uses_flex("flex", cuda)


def test_auto_document_masking_trains_on_cpu_through_sdpa(monkeypatch):
    # flex's backward raises on CPU, so training with doc_ids there must never reach it.
    monkeypatch.setattr(transformer, "flex", lambda *a, **k: pytest.fail("flex called on CPU under auto"))
    model = gqa_model(n_kv_head=2).train()
    tokens, doc_ids, _ = packed_documents(model.cfg.vocab_size)
    model(tokens, tokens.roll(-1, dims=1), doc_ids=doc_ids).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_train_attention_chooses_the_kernel_of_a_run_and_a_bad_one_is_one_line(tiny_data, tmp_path):
    from rain.config import validate
    from rain.errors import RainError
    from rain.train.trainer import Trainer

    trainer = Trainer(tiny_run_config(tiny_data, doc_mask=True, attention="sdpa"), tmp_path / "run", log=lambda *_: None)
    assert trainer.model.attention == "sdpa"  # a GPU user whose flex kernel fails falls back through the config
    with pytest.raises(RainError, match=r"train.attention 'flash' must be auto, flex or sdpa"):
        validate(tiny_run_config(tiny_data, attention="flash"))
