"""`rain bench`: the speed of rain's training step against transformers' Qwen3/Llama of the same shape, on
synthetic tokens with the same optimizer and settings: tokens/s, MFU, the step time split, peak memory; JSON
for scripts. Also the micro-batch probe behind `--micro-batch auto` and `train.auto_micro_batch`."""

from __future__ import annotations

import copy
import ctypes
import gc
import math
import platform
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from rain.config import RunConfig
from rain.errors import RainError
from rain.model import transformer
from rain.model.transformer import Transformer
from rain.runtime import autocast_for, enable_tf32, pick_device
from rain.train.commands import PRECISIONS
from rain.train.metrics import flops_per_token, peak_flops
from rain.train.optim import build_optimizer
from rain.train.trainer import Prefetcher

ATTENTION_KERNELS = {"flash": ("flash",), "cudnn": ("cudnn",), "mem-efficient": ("fmha", "efficient", "cutlass")}
GB = 1e9


class SyntheticTokens:
    """Uniformly random tokens behind the trainer's data interface."""

    def __init__(self, vocab: int, batch: int, seq_len: int, seed: int = 0):
        self.vocab, self.batch, self.seq_len = vocab, batch, seq_len
        self.gen = torch.Generator().manual_seed(seed)

    def next_batch(self):
        tokens = torch.randint(0, self.vocab, (self.batch, self.seq_len + 1), generator=self.gen)
        return tokens[:, :-1], tokens[:, 1:], None

    def state_dict(self) -> dict:
        return {}


class MasterWeights:
    """bf16 weights in the model, fp32 master copies in the optimizer: step() moves the grads onto the
    masters, clips, steps and writes the result back in bf16."""

    def __init__(self, model: torch.nn.Module, make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]):
        self.master = copy.deepcopy(model)
        for p in model.parameters():  # parameters only: RoPE tables stay fp32
            p.data = p.data.to(torch.bfloat16)
        self.params, self.masters = list(model.parameters()), list(self.master.parameters())
        self.optimizer = make_optimizer(self.master)
        self.param_groups = self.optimizer.param_groups

    @torch.no_grad()
    def step(self, grad_clip: float) -> None:
        for p, m in zip(self.params, self.masters):
            m.grad = None if p.grad is None else p.grad.float()
            p.grad = None
        torch.nn.utils.clip_grad_norm_(self.masters, grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        torch._foreach_copy_(self.params, self.masters)


def hf_model(cfg: RunConfig) -> torch.nn.Module:
    """transformers' Qwen3ForCausalLM (QK-norm), Qwen3MoeForCausalLM or LlamaForCausalLM of exactly rain's shape,
    SDPA attention."""
    try:
        import transformers
    except ImportError:
        raise RainError("the transformers comparison needs transformers: pip install 'rain[hf]' (or pass --no-hf)") from None
    from rain.export.hf import hf_config

    spec = hf_config(cfg.model, eot_id=0, pad_id=0, dtype=torch.float32)
    for key in ("architectures", "torch_dtype"):
        spec.pop(key)
    spec["use_cache"] = False  # as for training: no KV cache built in forward
    spec["output_router_logits"] = bool(cfg.model.n_experts)  # an MoE trains with its balancing loss, as rain's does
    config = transformers.AutoConfig.for_model(spec.pop("model_type"), **spec)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def build(kind: str, cfg: RunConfig, device: torch.device, precision: str, compile_model: bool,
          disable: frozenset = frozenset()):
    """(model, the optimizer or MasterWeights, the loss of (x, y))."""
    t = cfg.train
    if kind == "rain":
        model = Transformer(cfg.model)
        model.checkpoint_layers = t.checkpoint_layers
    else:
        model = hf_model(cfg)
        if t.checkpoint_layers:
            model.gradient_checkpointing_enable({"use_reentrant": False})
    model.to(device).train()
    if precision == "bf16-master":
        optimizer = MasterWeights(model, lambda m: build_optimizer(m, t, device.type))
    else:
        optimizer = build_optimizer(model, t, device.type)
    if kind == "rain" and "chunked-loss" in disable:
        def loss_of(x, y):  # full logits upcast to fp32: rain's loss before the chunked one
            return F.cross_entropy(model(x).float().flatten(0, 1), y.flatten())
    elif kind == "rain":
        def loss_of(x, y):
            return model(x, y)
    else:
        def loss_of(x, y):  # transformers shifts the labels itself (the last position has no target)
            return model(input_ids=x, labels=x).loss
    return model, optimizer, torch.compile(loss_of) if compile_model else loss_of


class Clock:
    """Marks the phases of each step: CUDA events on the GPU's timeline, else host time."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.steps: list[list] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.steps[-1].append(event)
        else:
            self.steps[-1].append(time.perf_counter())

    def phases_ms(self) -> list[float]:
        """Mean ms between consecutive marks over the steps (call after a synchronize)."""
        def gap(a, b):
            return a.elapsed_time(b) if self.cuda else (b - a) * 1e3
        per_step = [[gap(a, b) for a, b in zip(marks, marks[1:])] for marks in self.steps]
        return [statistics.fmean(col) for col in zip(*per_step)]


def reset_peak_rss() -> bool:
    """Return freed heap to the OS and restart the kernel's peak-RSS count (Linux); False where unsupported."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except (OSError, AttributeError):
        return False


def peak_rss_bytes() -> float | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def attention_kernels(run: Callable[[], None]) -> list[str]:
    """The fused SDPA kernels seen on the GPU while `run` runs (none: the unfused math path)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    names = [e.name.lower() for e in prof.events()]
    return [k for k, pats in ATTENTION_KERNELS.items() if any(p in n for n in names for p in pats)] or ["math"]


def measure(kind: str, cfg: RunConfig, device: torch.device, precision: str, compile_model: bool,
            micro_batch: int, steps: int, warmup: int, seed: int = 0, disable: frozenset = frozenset()) -> dict:
    """Time `steps` training steps of one micro-batch each after `warmup` untimed ones."""
    disable = disable if kind == "rain" else frozenset()
    torch.manual_seed(seed)
    gqa_before = transformer.SDPA_GQA
    transformer.SDPA_GQA = gqa_before and "sdpa-gqa" not in disable
    try:
        return _measure(kind, cfg, device, precision, compile_model, micro_batch, steps, warmup, seed, disable)
    finally:
        transformer.SDPA_GQA = gqa_before


def _measure(kind, cfg, device, precision, compile_model, micro_batch, steps, warmup, seed, disable) -> dict:
    t, m = cfg.train, cfg.model
    model, optimizer, loss_of = build(kind, cfg, device, precision, compile_model, disable)
    autocast = autocast_for(device, "bf16" if precision == "bf16" else "fp32")
    batches = Prefetcher(SyntheticTokens(m.vocab_size, micro_batch, m.context, seed), device)
    if "prefetch" in disable:  # pageable memory, copied when needed (rain's loop before)
        source = batches.data
        batches.next_batch = lambda: tuple(None if b is None else b.to(device, non_blocking=True)
                                           for b in source.next_batch())
    clip = t.grad_clip if t.grad_clip > 0 else math.inf
    params = [p for p in model.parameters()]
    clock = Clock(device)

    def step() -> torch.Tensor:
        clock.steps.append([])
        clock.mark()
        x, y, _ = batches.next_batch()
        clock.mark()
        with autocast:
            loss = loss_of(x, y)
        loss.backward()
        clock.mark()
        if isinstance(optimizer, MasterWeights):
            optimizer.step(clip)
        else:
            torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        clock.mark()
        return loss.detach()

    gc.collect()
    if "gc-pause" not in disable:
        gc.disable()
    try:
        for _ in range(warmup):
            step()
        kernels = attention_kernels(step) if device.type == "cuda" else None
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rss = device.type == "cpu" and reset_peak_rss()
        clock.steps.clear()
        start = time.perf_counter()
        losses = [step() for _ in range(steps)]
        synchronize(device)
        wall = time.perf_counter() - start
    finally:
        gc.enable()
    data_ms, fwd_bwd_ms, opt_ms = clock.phases_ms()
    n_params = sum(p.numel() for p in model.parameters())
    fpt = flops_per_token(m, n_params)
    tok_s = steps * micro_batch * m.context / wall
    peak = peak_flops(device)
    result = {
        "model": type(model).__name__, "parameters": n_params, "flops_per_token": fpt,
        "tokens_per_s": round(tok_s, 1), "flops_per_s": round(tok_s * fpt, 1),
        "mfu": round(tok_s * fpt / peak, 4) if peak else None,
        "step_ms": round(wall / steps * 1e3, 2),
        "split_ms": {"forward_backward": round(fwd_bwd_ms, 2), "optimizer": round(opt_ms, 2), "data": round(data_ms, 2)},
        "final_loss": round(float(losses[-1]), 4),
    }
    if device.type == "cuda":
        result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / GB, 3)
        result["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved(device) / GB, 3)
        result["attention_kernels"] = kernels
    elif rss and peak_rss_bytes():
        result["peak_rss_gb"] = round(peak_rss_bytes() / GB, 3)  # the whole process, libraries included
    del model, optimizer, loss_of, batches
    free_memory(device)
    return result


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- micro-batch that fits ----------------------------------------------------------------------------

def largest_fitting(candidates: list[int], peak_bytes: Callable[[int], float | None], budget: float,
                    log=print) -> tuple[int, dict[int, float | None]]:
    """Try micro-batches from the largest down; the first whose trial step peaks within budget wins.
    peak_bytes(b) returns None when the trial runs out of memory. Returns (choice, {b: peak tried})."""
    tried: dict[int, float | None] = {}
    for b in sorted(set(candidates), reverse=True):
        tried[b] = peak = peak_bytes(b)
        log(f"  micro-batch {b}: " + ("out of memory" if peak is None else f"peak {peak / GB:.2f} GB"))
        if peak is not None and peak <= budget:
            return b, tried
    raise RainError(f"not even a micro-batch of {min(candidates)} fits in {budget / GB:.1f} GB: shorten the "
                    f"context, use a smaller model or set train.checkpoint_layers")


def cuda_step_peak(cfg: RunConfig, device: torch.device) -> Callable[[int], float | None]:
    """peak_bytes(b) for largest_fitting: one eager training step (model, grads, optimizer state, activations)
    at micro-batch b; reserved memory, so the caching allocator's slack counts too."""
    model = Transformer(cfg.model).to(device)
    model.checkpoint_layers = cfg.train.checkpoint_layers
    optimizer = build_optimizer(model, cfg.train, device.type)
    autocast = autocast_for(device, cfg.train.dtype)

    def peak(b: int) -> float | None:
        free_memory(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            x = torch.randint(0, cfg.model.vocab_size, (b, cfg.model.context), device=device)
            with autocast:
                loss = model(x, x)
            loss.backward()
            optimizer.step()
            synchronize(device)
            return torch.cuda.max_memory_reserved(device)
        except torch.OutOfMemoryError:
            return None
        finally:
            optimizer.zero_grad(set_to_none=True)

    return peak


def fit_micro_batch(cfg: RunConfig, device: torch.device, world: int = 1, log=print,
                    peak_bytes: Callable[[int], float | None] | None = None, budget: float | None = None) -> int:
    """The largest micro-batch <= train.micro_batch that divides the per-process batch and fits the device
    (budget: 90% of its memory). Without CUDA (and no peak_bytes given) nothing can be measured: micro_batch."""
    t = cfg.train
    per_rank = t.batch_size // world
    candidates = [b for b in range(min(t.micro_batch, per_rank), 0, -1) if per_rank % b == 0]
    if peak_bytes is None and device.type != "cuda":
        log(f"auto micro-batch: no memory to measure on {device.type}; keeping micro_batch {t.micro_batch}")
        return t.micro_batch
    peak_bytes = peak_bytes or cuda_step_peak(cfg, device)
    if budget is None:
        if device.type != "cuda":
            raise RainError("auto micro-batch: give a memory budget to fit on a device without CUDA")
        budget = 0.9 * torch.cuda.get_device_properties(device).total_memory
    log(f"auto micro-batch: largest of {candidates} within {budget / GB:.1f} GB")
    choice, _ = largest_fitting(candidates, peak_bytes, budget, log)
    peak_bytes = None  # drop the probe's model before training builds its own
    free_memory(device)
    if world > 1 and torch.distributed.is_initialized():  # every rank must accumulate the same number of steps
        agreed = torch.tensor([choice], device=device)
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
        choice = int(agreed)
    log(f"auto micro-batch: {choice} x {cfg.model.context} tokens, {per_rank // choice} accumulation step(s)")
    return choice


# ---- the command --------------------------------------------------------------------------------------

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu} CPU, {torch.get_num_threads()} threads"


def bench(cfg: RunConfig, *, micro_batch: int | str, precision: str, compile_model: bool, steps: int, warmup: int,
          repeats: int = 1, compare_hf: bool = True, memory_gb: float | None = None, disable=(), log=print) -> dict:
    if steps < 1 or warmup < 0 or repeats < 1:
        raise RainError("--steps and --repeats must be at least 1, --warmup at least 0")
    if precision not in PRECISIONS:
        raise RainError(f"--precision {precision!r} must be one of {', '.join(PRECISIONS)}")
    device = pick_device(cfg.train.device)
    enable_tf32(device)
    probe = None
    if micro_batch == "auto":
        probe_cfg = copy.deepcopy(cfg)
        probe_cfg.train.dtype = "fp32" if precision == "fp32" else "bf16"
        tried: dict[int, float | None] = {}
        peak_fn = None
        if device.type == "cuda":
            step_peak = cuda_step_peak(probe_cfg, device)

            def peak_fn(b: int) -> float | None:
                tried[b] = step_peak(b)
                return tried[b]

        micro_batch = fit_micro_batch(probe_cfg, device, log=log, peak_bytes=peak_fn,
                                      budget=memory_gb * GB if memory_gb else None)
        peak_fn = step_peak = None
        free_memory(device)
        probe = {"budget_gb": memory_gb, "peak_reserved_gb": {b: None if v is None else round(v / GB, 3)
                                                             for b, v in tried.items()}}
    micro_batch = int(micro_batch)
    if micro_batch < 1:
        raise RainError("--micro-batch must be a positive number or auto")
    kinds = ["rain", "transformers"] if compare_hf else ["rain"]
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for r in range(repeats):  # alternate, so a busy machine slows both alike
        for kind in kinds:
            result = measure(kind, cfg, device, precision, compile_model, micro_batch, steps, warmup, seed=r,
                             disable=frozenset(disable))
            log(f"  {kind} run {r + 1}/{repeats}: {result['tokens_per_s']:,.0f} tokens/s")
            runs[kind].append(result)
    report = {
        "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
        "micro_batch": micro_batch, "seq_len": cfg.model.context, "precision": precision, "compile": compile_model,
        "optimizer": cfg.train.optimizer, "checkpoint_layers": cfg.train.checkpoint_layers,
        "steps": steps, "warmup": warmup, "repeats": repeats, "disabled": sorted(disable),
    }
    for kind, results in runs.items():
        median = sorted(results, key=lambda r: r["tokens_per_s"])[len(results) // 2]
        report[kind] = {**median, "tokens_per_s_runs": [r["tokens_per_s"] for r in results]}
    if compare_hf:  # the median of each repeat's ratio: robust to load that changes between repeats
        ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs["rain"], runs["transformers"])]
        report["speedup_vs_transformers"] = round(statistics.median(ratios), 3)
        report["speedup_runs"] = [round(x, 3) for x in ratios]
    if probe:
        report["micro_batch_probe"] = probe
    return report
