"""The CUDA fast path; skipped without a GPU."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from rain.config import TrainConfig, load_config
from rain.model import Transformer, transformer
from rain.model.transformer import linear_cross_entropy
from rain.train import benchmark, micro_batch
from rain.train.optim import build_optimizer
from tests.conftest import small_model_config

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True)
def _exact_fp32():
    """Reference computations in true fp32 (no TF32), restored afterwards."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


MOE = {"n_experts": 4, "experts_per_token": 2, "expert_d_ff": 64}


def batch(cfg, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (b, cfg.context + 1), generator=g)
    return tokens[:, :-1].cuda(), tokens[:, 1:].cuda()


@pytest.mark.parametrize("moe", [False, True])
def test_bf16_autocast_loss_is_within_tolerance_of_fp32(moe):
    cfg = small_model_config(context=128, **(MOE if moe else {}))
    model = Transformer(cfg).cuda()
    x, y = batch(cfg)
    fp32 = model(x, y)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = model(x, y)
    assert abs(float(bf16) - float(fp32)) < 0.02
    fp32.backward()
    g32 = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model(x, y).backward()
    for n, p in model.named_parameters():
        assert F.cosine_similarity(p.grad.flatten(), g32[n].flatten(), dim=0) > 0.99, n


@pytest.mark.parametrize("moe", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
def test_compiled_and_eager_models_give_the_same_loss_and_grads(autocast, moe):
    cfg = small_model_config(context=128, **(MOE if moe else {}))
    model = Transformer(cfg).cuda()
    compiled = torch.compile(model)
    x, y = batch(cfg)
    results = []
    for m in (model, compiled):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = m(x, y)
        loss.backward()
        results.append((float(loss), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (eager_loss, eager_grad), (comp_loss, comp_grad) = results
    tol = 1e-2 if autocast else 1e-4
    assert abs(eager_loss - comp_loss) < tol
    assert F.cosine_similarity(eager_grad, comp_grad, dim=0) > (0.999 if autocast else 0.99999)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_document_masked_attention_equals_attention_per_document(dtype):
    cfg = small_model_config(context=96)
    model = Transformer(cfg).cuda().eval()
    lengths = [30, 50, 16]
    docs = [torch.randint(0, cfg.vocab_size, (n,), device="cuda") for n in lengths]
    packed = torch.cat(docs)[None]
    doc_ids = torch.cat([torch.full((n,), i, device="cuda") for i, n in enumerate(lengths)])[None]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        together = model(packed, doc_ids=doc_ids)[0].float()
        alone = torch.cat([model(d[None])[0].float() for d in docs])
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    assert (together - alone).abs().max() < tol * alone.abs().max()


FLEX = pytest.mark.skipif(transformer.flex_attention is None, reason="needs torch 2.5+ (FlexAttention)")
# Head dim 32, grouped K/V; two rows split differently, documents crossing flex's 128-token tiles.
FLEX_SHAPE = {"context": 256, "d_model": 128, "n_head": 4, "n_kv_head": 2}
SPLITS = [[100, 60, 90, 6], [200, 56]]


def packed_documents(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (len(SPLITS), cfg.context + 1), generator=g)
    doc_ids = torch.stack([torch.repeat_interleave(torch.arange(len(s)), torch.tensor(s)) for s in SPLITS])
    return tokens[:, :-1].cuda(), tokens[:, 1:].cuda(), doc_ids.cuda()


def loss_and_grads(model, run):
    model.zero_grad(set_to_none=True)
    loss = run()
    loss.backward()
    return float(loss), torch.cat([p.grad.flatten() for p in model.parameters()])


@FLEX
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flex_document_masking_trains_as_each_document_alone(monkeypatch, dtype):
    torch.manual_seed(0)
    model = Transformer(small_model_config(**FLEX_SHAPE)).cuda()
    x, y, doc_ids = packed_documents(model.cfg)
    calls, real_flex = [], transformer.flex
    monkeypatch.setattr(transformer, "flex", lambda *a, **k: calls.append(1) or real_flex(*a, **k))

    def per_document():  # each document alone through plain causal SDPA, weighted back to the mean over all tokens
        total = sum(model(x[r : r + 1, a : a + n], y[r : r + 1, a : a + n]) * n
                    for r, split in enumerate(SPLITS) for a, n in zip(torch.tensor([0] + split).cumsum(0).tolist(), split))
        return total / y.numel()

    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        flex_loss, flex_grad = loss_and_grads(model, lambda: model(x, y, doc_ids=doc_ids))
        assert len(calls) == model.cfg.n_layer  # auto took flex on CUDA
        ref_loss, ref_grad = loss_and_grads(model, per_document)
    # loss, gradient cosine, largest gradient difference (relative to the largest gradient)
    loss_tol, cos, grad_tol = (1e-4, 0.99999, 1e-3) if dtype == torch.float32 else (2e-2, 0.999, 5e-2)
    assert abs(flex_loss - ref_loss) < loss_tol
    assert F.cosine_similarity(flex_grad, ref_grad, dim=0) > cos
    assert (flex_grad - ref_grad).abs().max() < grad_tol * ref_grad.abs().max()


@FLEX
def test_compiled_model_with_flex_document_masking_matches_eager():
    torch.manual_seed(0)
    model = Transformer(small_model_config(**FLEX_SHAPE)).cuda()
    compiled = torch.compile(model, fullgraph=True)  # the block mask is built inside the graph, without a break
    x, y, doc_ids = packed_documents(model.cfg)
    for length in (256, 192):  # a second length recompiles with a symbolic length
        args = x[:, :length], y[:, :length]
        results = []
        for m in (model, compiled):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                results.append(loss_and_grads(model, partial(m, *args, doc_ids=doc_ids[:, :length])))
        (eager_loss, eager_grad), (comp_loss, comp_grad) = results
        assert abs(eager_loss - comp_loss) < 1e-2
        assert F.cosine_similarity(eager_grad, comp_grad, dim=0) > 0.999


def test_training_attention_runs_on_the_flash_kernel():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = small_model_config(context=256, d_model=256, n_head=4, n_kv_head=2)  # head dim 64, grouped K/V
    model = Transformer(cfg).cuda()
    x, y = batch(cfg)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cuda", dtype=torch.bfloat16):
        model(x, y).backward()  # raises if flash cannot take rain's attention

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(x, y).backward()

    assert "flash" in benchmark.attention_kernels(step)


def test_chunked_loss_matches_full_logits_in_bf16():
    torch.manual_seed(0)
    x = torch.randn(4096, 256, device="cuda", requires_grad=True)
    w = (torch.randn(8192, 256, device="cuda") * 0.05).requires_grad_()
    t = torch.randint(0, 8192, (4096,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = F.cross_entropy((x @ w.T).float(), t)
        loss = linear_cross_entropy(x, w, t, chunk=1000)
    gx_ref, gw_ref = torch.autograd.grad(ref, (x, w))
    gx, gw = torch.autograd.grad(loss, (x, w))
    assert abs(float(loss) - float(ref)) < 1e-2
    assert F.cosine_similarity(gx.flatten(), gx_ref.flatten(), dim=0) > 0.999
    assert F.cosine_similarity(gw.flatten(), gw_ref.flatten(), dim=0) > 0.999


def test_fused_adamw_and_muon_build_and_step_on_cuda():
    model = Transformer(small_model_config()).cuda()
    x, y = batch(model.cfg)
    for name in ("adamw", "muon"):
        opt = build_optimizer(model, TrainConfig(max_steps=1, optimizer=name), "cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(x, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("optimizer, moe", [("adamw", False), ("muon", False), ("adamw", True)])
def test_a_training_step_never_waits_for_the_gpu(optimizer, moe):
    from rain.train.benchmark import SyntheticTokens
    from rain.train.trainer import Prefetcher

    cfg = small_model_config(**(MOE if moe else {}))
    model = Transformer(cfg).cuda()
    opt = build_optimizer(model, TrainConfig(max_steps=1, optimizer=optimizer), "cuda")
    batches = Prefetcher(SyntheticTokens(cfg.vocab_size, 4, cfg.context), torch.device("cuda"))
    loss_acc = torch.zeros((), device="cuda")

    def step():
        x, y, _ = batches.next_batch()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, y)
        loss.backward()
        loss_acc.add_(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # the first step allocates optimizer state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_bench_on_cuda_reports_memory_kernels_and_mfu_fields():
    cfg = load_config("tiny", ["model.n_layer=2", "train.device='cuda'"])
    r = benchmark.bench(cfg, micro_batch=4, precision="bf16", compile_model=False, steps=3, warmup=1, log=lambda *_: None)
    for kind in ("rain", "transformers"):
        assert r[kind]["peak_memory_gb"] > 0 and r[kind]["attention_kernels"]
    assert r["speedup_vs_transformers"] > 0


def test_auto_micro_batch_probe_on_cuda_respects_the_budget():
    cfg = load_config("tiny", ["train.device='cuda'", "train.batch_size=32", "train.micro_batch=32"])
    device = torch.device("cuda")
    peak = micro_batch.cuda_step_peak(cfg, device)
    small, large = peak(2), peak(8)
    assert small is not None and large is not None and large > small
    choice = micro_batch.fit_micro_batch(cfg, device, peak_bytes=peak, budget=(small + large) / 2, log=lambda *_: None)
    assert 2 <= choice < 8
