"""`rain bench`: the speed of rain's training step against transformers' Qwen3/Llama of the same shape, on
synthetic tokens with the same optimizer and settings: tokens/s, MFU, the step time split, peak memory; JSON
for scripts. Both models are driven through the Trainer's own step() (rain.train.trainer), so what is timed is
what `rain train` runs. The micro-batch probe behind `--micro-batch auto` is rain.train.micro_batch."""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import gc
import platform
import statistics
import tempfile
import time
from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn.functional as F

from rain.config import PRECISIONS as CONFIG_PRECISIONS
from rain.config import RunConfig
from rain.errors import RainError
from rain.model.transformer import Attention, Transformer
from rain.runtime import enable_tf32, pick_device
from rain.train.micro_batch import GB, cuda_step_peak, fit_micro_batch, free_memory
from rain.train.trainer import Trainer, quiet_gc

# --precision: the Trainer's train.precision. bf16: autocast over fp32 weights; bf16-master: bf16 weights with fp32
# master copies in the optimizer (rain.train.precision).
PRECISIONS = tuple(p for p in CONFIG_PRECISIONS if p != "auto")
# Parts of rain's fast path that --disable switches off, to measure what each gives.
FAST_PATH = ("chunked-loss", "sdpa-gqa", "prefetch", "gc-pause")
# flex: the Triton kernels torch.compile makes of flex_attention (train.doc_mask on CUDA) are named after it.
ATTENTION_KERNELS = {"flash": ("flash",), "cudnn": ("cudnn",), "mem-efficient": ("fmha", "efficient", "cutlass"),
                     "flex": ("flex_attention",)}


class SyntheticTokens:
    """Uniformly random tokens behind the trainer's data interface (TrainData); no tokenizer, no validation.
    With doc_mask, doc ids too: documents of random length, half a window long on average (a boundary at each
    position with probability 2 / seq_len), so train.doc_mask's masked attention is what is timed."""

    tokenizer_path = None
    tokenizer = None

    def __init__(self, vocab: int, batch: int, seq_len: int, seed: int = 0, doc_mask: bool = False):
        self.vocab, self.micro_batch, self.seq_len, self.doc_mask = vocab, batch, seq_len, doc_mask
        self.gen = torch.Generator().manual_seed(seed)

    def next_batch(self):
        tokens = torch.randint(0, self.vocab, (self.micro_batch, self.seq_len + 1), generator=self.gen)
        x, y = tokens[:, :-1], tokens[:, 1:]
        if not self.doc_mask:
            return x, y, None
        starts = torch.rand(x.shape, generator=self.gen) < 2 / self.seq_len
        return x, y, starts.cumsum(dim=1)

    def val_batches(self):
        return iter(())

    def val_sources(self) -> list[str]:
        return []

    def val_counts(self) -> dict:
        return {None: (0, 0)}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def describe(self) -> dict:
        return {"data": "synthetic tokens"}


class PageableBatches:
    """Batches copied from pageable memory when the step asks for them: rain's loop before pinned-memory
    prefetch (`--disable prefetch`), in place of the Trainer's Prefetcher."""

    def __init__(self, data: SyntheticTokens, device: torch.device):
        self.data, self.device = data, device

    def next_batch(self):
        return tuple(None if b is None else b.to(self.device, non_blocking=True) for b in self.data.next_batch())

    def state_dict(self) -> dict:
        return self.data.state_dict()


def hf_model(cfg: RunConfig) -> torch.nn.Module:
    """transformers' Qwen3ForCausalLM (QK-norm), Qwen3MoeForCausalLM or LlamaForCausalLM of exactly rain's shape,
    SDPA attention."""
    try:
        import transformers
    except ImportError:
        raise RainError("the transformers comparison needs transformers: pip install 'rain[hf]' (or pass --no-hf)") from None
    from rain.model.hf_weights import hf_config

    spec = hf_config(cfg.model, eot_id=0, pad_id=0, dtype=torch.float32)
    for key in ("architectures", "torch_dtype"):
        spec.pop(key)
    spec["use_cache"] = False  # as for training: no KV cache built in forward
    spec["output_router_logits"] = bool(cfg.model.n_experts)  # an MoE trains with its balancing loss, as rain's does
    config = transformers.AutoConfig.for_model(spec.pop("model_type"), **spec)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


class TransformersLoss(torch.nn.Module):
    """A transformers causal LM behind the call the Trainer makes, model(x, y, doc_ids=) -> loss. transformers
    shifts the labels itself, so it is given x (its last position has no target), as its own training does."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm

    @property
    def lm_head(self) -> torch.nn.Module:  # where build_optimizer finds an untied output head (Muon leaves it to AdamW)
        return self.lm.lm_head

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x, y, doc_ids=None):
        return self.lm(input_ids=x, labels=x).loss


class FullLogitsTransformer(Transformer):
    """rain's model with its loss from before the chunked one (`--disable chunked-loss`): the full logits, upcast
    to fp32, into F.cross_entropy."""

    def forward(self, idx, targets=None, doc_ids=None, **kwargs):
        logits = super().forward(idx, doc_ids=doc_ids, **kwargs)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


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


class TimedTrainer(Trainer):
    """The Trainer, marking its clock as each phase of step() ends (data, forward+backward); bench marks the
    start and the end (the optimizer's phase: clipping, the update, zeroing the grads)."""

    def __init__(self, *args, clock: Clock, **kwargs):
        self.clock = clock
        super().__init__(*args, **kwargs)

    def phase_done(self, phase: str) -> None:
        self.clock.mark()

    def timed_step(self) -> None:
        self.clock.steps.append([])
        self.clock.mark()
        self.step()
        self.clock.mark()


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


def check_options(precision: str, disable) -> None:
    if precision not in PRECISIONS:
        raise RainError(f"--precision {precision!r} must be one of {', '.join(PRECISIONS)}")
    unknown = sorted(set(disable) - set(FAST_PATH))
    if unknown:
        raise RainError(f"--disable {unknown[0]!r} must be one of {', '.join(FAST_PATH)}")


def step_config(cfg: RunConfig, device: torch.device, precision: str, compile_model: bool, micro_batch: int,
                seed: int) -> RunConfig:
    """cfg as the Trainer that bench drives takes it: one micro-batch per step (no accumulation), the precision,
    and the peak learning rates throughout (a schedule's values change no step's cost)."""
    train = dataclasses.replace(cfg.train, device=str(device), precision=precision, compile=compile_model,
                                batch_size=micro_batch, micro_batch=micro_batch, auto_micro_batch=False, seed=seed,
                                warmup=0, schedule="constant", muon_warmup=0, muon_schedule="constant",
                                ignore_disk_check=True)  # bench saves no checkpoint
    return dataclasses.replace(cfg, train=train)


def bench_trainer(kind: str, cfg: RunConfig, run_dir: str, precision: str, disable: frozenset) -> TimedTrainer:
    """A Trainer on synthetic tokens for rain's model or transformers' (kind), with the fast-path parts in
    `disable` switched off on it; the Trainer itself sets up bf16-master (rain.train.precision.MasterWeights)."""
    torch.manual_seed(cfg.train.seed)
    model = None
    if kind == "transformers":
        model = TransformersLoss(hf_model(cfg))
        if cfg.train.checkpoint_layers:
            model.lm.gradient_checkpointing_enable({"use_reentrant": False})
    elif "chunked-loss" in disable:
        model = FullLogitsTransformer(cfg.model)
    data = SyntheticTokens(cfg.model.vocab_size, cfg.train.micro_batch, cfg.model.context, cfg.train.seed,
                           doc_mask=cfg.train.doc_mask)
    # The Trainer logs only schedule warnings here, about settings bench chose (step_config).
    trainer = TimedTrainer(cfg, run_dir, data=data, model=model, clock=Clock(pick_device(cfg.train.device)),
                           log=lambda *_: None)
    trainer.model.train()
    if "sdpa-gqa" in disable:  # K/V heads repeated for SDPA, on this model only
        for module in trainer.model.modules():
            if isinstance(module, Attention):
                module.sdpa_gqa = False
    if "prefetch" in disable:
        trainer.batches = PageableBatches(data, trainer.device)
    return trainer


def measure(kind: str, cfg: RunConfig, device: torch.device, precision: str, compile_model: bool,
            micro_batch: int, steps: int, warmup: int, seed: int = 0, disable: frozenset = frozenset()) -> dict:
    """Time `steps` Trainer steps of one micro-batch each after `warmup` untimed ones."""
    check_options(precision, disable)
    disable = frozenset(disable) if kind == "rain" else frozenset()
    cfg = step_config(cfg, device, precision, compile_model, micro_batch, seed)
    with tempfile.TemporaryDirectory(prefix="rain-bench-") as run_dir:  # the Trainer's run folder; nothing is saved
        trainer = bench_trainer(kind, cfg, run_dir, precision, disable)
        result = time_steps(trainer, steps, warmup, gc_pause="gc-pause" not in disable)
    del trainer
    free_memory(device)
    return result


def time_steps(trainer: TimedTrainer, steps: int, warmup: int, gc_pause: bool) -> dict:
    device = trainer.device
    gc.collect()
    with quiet_gc() if gc_pause else nullcontext():  # as Trainer.fit keeps the GC out of its steps
        for _ in range(warmup):
            trainer.timed_step()
        kernels = attention_kernels(trainer.timed_step) if device.type == "cuda" else None
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rss = device.type == "cpu" and reset_peak_rss()
        trainer.clock.steps.clear()
        start = time.perf_counter()
        for i in range(steps):
            if i == steps - 1:  # the loss the report gives is the last step's
                trainer.loss_sum.zero_()
            trainer.timed_step()
        synchronize(device)
        wall = time.perf_counter() - start
    data_ms, fwd_bwd_ms, opt_ms = trainer.clock.phases_ms()
    model = trainer.model
    tok_s = steps * trainer.tokens_per_step / wall
    fpt, peak = trainer.flops_per_token, trainer.peak_flops
    result = {
        "model": type(model.lm).__name__ if isinstance(model, TransformersLoss) else Transformer.__name__,
        "parameters": trainer.n_params, "flops_per_token": fpt,
        "tokens_per_s": round(tok_s, 1), "flops_per_s": round(tok_s * fpt, 1),
        "mfu": round(tok_s * fpt / peak, 4) if peak else None,
        "step_ms": round(wall / steps * 1e3, 2),
        "split_ms": {"forward_backward": round(fwd_bwd_ms, 2), "optimizer": round(opt_ms, 2), "data": round(data_ms, 2)},
        "final_loss": round(float(trainer.loss_sum), 4),
    }
    if device.type == "cuda":
        result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / GB, 3)
        result["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved(device) / GB, 3)
        result["attention_kernels"] = kernels
    elif rss and peak_rss_bytes():
        result["peak_rss_gb"] = round(peak_rss_bytes() / GB, 3)  # the whole process, libraries included
    return result


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
    check_options(precision, disable)
    device = pick_device(cfg.train.device)
    enable_tf32(device)
    probe = None
    if micro_batch == "auto":
        probe_cfg = copy.deepcopy(cfg)
        probe_cfg.train.precision = precision
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
        "optimizer": cfg.train.optimizer, "checkpoint_layers": cfg.train.checkpoint_layers, "doc_mask": cfg.train.doc_mask,
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
