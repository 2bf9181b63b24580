"""`rain plan`: from a GPU and hours to a model and a run before anything is trained. Pure arithmetic (no data, no
GPU): the compute budget, the Chinchilla-optimal size for it, a concrete shape in rain's architecture with its exact
parameter count, the micro-batch that fits the GPU's memory, steps, checkpoint disk and the ETA.

The compute: C = peak bf16 FLOP/s x MFU x seconds. Chinchilla (Hoffmann et al. 2022): with C ~ 6 N D and about 20
training tokens per parameter at the optimum, N = sqrt(C / 120) and D = 20 N. Models meant for cheap inference are
trained far past that (more tokens per parameter, a smaller model for the same compute)."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from rain.config import ModelConfig, RunConfig, load_config, validate
from rain.errors import RainError
from rain.train.gpus import Gpu
from rain.train.metrics import flops_per_token

# No GPU MFU has been measured for rain yet (docs/performance.md: every GPU target unmeasured). The default sits
# between nanochat's measured 41-51% on H100 and the 42% the Rain-v2 reference run implies on an RTX 4090.
DEFAULT_MFU = 0.40
# (gpu key, preset) -> (MFU, where it was measured), filled from docs/performance.md as GPU figures arrive.
MEASURED_MFU: dict[tuple[str, str], tuple[float, str]] = {}
CHINCHILLA_TOKENS_PER_PARAM = 20
OVERTRAINED = (100, 500)  # tokens per parameter of the over-trained alternatives shown
MEMORY_BUDGET = 0.9  # of the GPU's memory, as fit_micro_batch allows
STATE_BYTES_PER_PARAM = 16  # fp32 weights, grads and AdamW's two moments
SHAPES = ("deep", "gpt2")


def block_params(m: ModelConfig) -> int:
    hd = m.dim_head
    attention = m.d_model * hd * (2 * m.n_head + 2 * m.n_kv_head) + (2 * hd if m.qk_norm else 0)
    return attention + 3 * m.d_model * m.d_ff + 2 * m.d_model


def param_count(m: ModelConfig) -> int:
    """Transformer(m).num_params() without building it (dense models): embedding, blocks, final norm, LM head."""
    if m.n_experts:
        raise RainError("rain plan sizes dense models; model.n_experts must be 0")
    head = 0 if m.tie_embeddings else m.vocab_size * m.d_model
    return m.vocab_size * m.d_model + m.n_layer * block_params(m) + m.d_model + head


def activation_bytes_per_sequence(m: ModelConfig) -> int:
    """Bytes autograd saves for backward per sequence of m.context tokens: eager, bf16 autocast, no activation
    checkpointing, rain's chunked loss. The coefficients are what benchmarks/activation_memory.py's saved-tensor
    count gives (tests/test_plan.py checks them against it exactly); they do not depend on the context (SDPA saves
    no T x T matrix) nor on the vocabulary (the chunked loss saves no logits)."""
    d, q, kv, h, g = m.d_model, m.n_head * m.dim_head, m.n_kv_head * m.dim_head, m.n_head, m.n_kv_head
    if m.qk_norm:
        block = 26 * d + 8 * m.d_ff + 12 * q + 12 * kv + 8 * h + 4 * g + 8
    else:
        block = 26 * d + 8 * m.d_ff + 4 * q + 4 * kv + 4 * h + 8
    return m.context * (m.n_layer * block + 12 * d + 12) + 8


def training_bytes(m: ModelConfig, micro_batch: int) -> int:
    """Estimated peak: model state (16 bytes a parameter) + saved activations; transients, allocator slack and
    torch.compile's savings are not in it (rain bench measures the real peak)."""
    return STATE_BYTES_PER_PARAM * param_count(m) + micro_batch * activation_bytes_per_sequence(m)


def shape(base: ModelConfig, d_model: int, family: str) -> ModelConfig:
    """A model of width d_model: `deep` as rain-v2 (32 x 512: 16 dims a layer, d_ff 4d, KV heads half the heads, all of an odd number),
    `gpt2` as GPT-2 (12 x 768: 64 dims a layer, SwiGLU d_ff 8d/3 rounded to 128, KV heads all the heads)."""
    heads = max(1, d_model // 64)
    if family == "deep":
        return replace(base, n_layer=max(1, round(d_model / 16)), d_model=d_model, n_head=heads, head_dim=64,
                       n_kv_head=heads // 2 if heads % 2 == 0 else heads, d_ff=4 * d_model)
    return replace(base, n_layer=max(1, round(d_model / 64)), d_model=d_model, n_head=heads, head_dim=64,
                   n_kv_head=heads, d_ff=max(128, round(8 * d_model / 3 / 128) * 128))


@dataclass
class Plan:
    gpu: Gpu
    hours: float
    mfu: float
    mfu_source: str
    budget: float  # FLOPs
    model: ModelConfig
    parameters: int
    flops_per_token: float
    tokens: int
    tokens_per_step: int
    steps: int
    micro_batch: int | None  # None: not even one sequence fits without activation checkpointing
    memory_bytes: int  # estimated peak at micro_batch (at 1 when none fits)
    checkpoint_bytes: int
    config: RunConfig

    @property
    def eta_hours(self) -> float:
        return self.steps * self.tokens_per_step * self.flops_per_token / (self.gpu.peak_flops * self.mfu) / 3600


def pick_mfu(gpu: Gpu, preset: str, mfu: float | None) -> tuple[float, str]:
    if mfu is not None:
        return mfu, "given with --mfu"
    if (gpu.key, preset) in MEASURED_MFU:
        value, where = MEASURED_MFU[gpu.key, preset]
        return value, f"rain's measured MFU for {preset} on {gpu.label} ({where})"
    return DEFAULT_MFU, "default: no rain MFU measured on this GPU yet (docs/performance.md)"


def fit_micro_batch(m: ModelConfig, batch_size: int, memory_bytes: float) -> int | None:
    """The largest divisor of batch_size whose estimated peak is within MEMORY_BUDGET of the memory."""
    return next((b for b in range(batch_size, 0, -1)
                 if batch_size % b == 0 and training_bytes(m, b) <= MEMORY_BUDGET * memory_bytes), None)


def make_plan(gpu: Gpu, hours: float, *, preset: str = "rain-v2", family: str = "deep", tokens: int | None = None,
              params: int | None = None, tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM,
              vocab: int | None = None, context: int | None = None, mfu: float | None = None) -> Plan:
    if not hours > 0:
        raise RainError(f"--hours {hours:g}: give a positive number of GPU hours")
    if family not in SHAPES:
        raise RainError(f"--shape {family!r}: one of {', '.join(SHAPES)}")
    if mfu is not None and not 0 < mfu <= 1:
        raise RainError(f"--mfu {mfu:g}: a fraction in (0, 1]")
    cfg = load_config(preset)
    base = replace(cfg.model, n_experts=0, vocab_size=vocab or cfg.model.vocab_size,
                   context=context or cfg.model.context)
    mfu, mfu_source = pick_mfu(gpu, preset, mfu)
    budget = gpu.peak_flops * mfu * hours * 3600
    tokens_per_step = cfg.train.batch_size * base.context

    def score(m: ModelConfig) -> float:
        n, d = param_count(m), budget / flops_per_token(m, param_count(m))
        if tokens:
            return abs(math.log(d / tokens))
        if params:
            return abs(math.log(n / params))
        return abs(math.log(d / n / tokens_per_param))

    candidates = [shape(base, w, family) for w in range(64, 16385, 64)]
    affordable = [m for m in candidates if budget / flops_per_token(m, param_count(m)) >= tokens_per_step]
    if not affordable:
        smallest = candidates[0]
        need = flops_per_token(smallest, param_count(smallest)) * tokens_per_step
        raise RainError(f"a budget of {budget:.3g} FLOPs ({hours:g} h on {gpu.label} at {mfu:.0%} MFU) is less than "
                        f"one step ({tokens_per_step:,} tokens) of the smallest model at vocab {base.vocab_size:,}, "
                        f"context {base.context:,} ({need:.3g} FLOPs): give more hours or a smaller vocab/context")
    model = min(affordable, key=score)
    n = param_count(model)
    fpt = flops_per_token(model, n)
    steps = max(1, int((tokens or budget / fpt) // tokens_per_step))
    micro = fit_micro_batch(model, cfg.train.batch_size, gpu.memory_gb * 1e9)
    run = copy.deepcopy(cfg)
    run.model = model
    run.train.total_tokens = steps * tokens_per_step
    run.train.max_steps = 0
    run.train.micro_batch = micro or 1
    validate(run)
    return Plan(gpu, hours, mfu, mfu_source, budget, model, n, fpt, steps * tokens_per_step, tokens_per_step, steps,
                micro, training_bytes(model, micro or 1), checkpoint_disk(run), run)


def checkpoint_disk(cfg: RunConfig) -> int:
    import torch

    from rain.train.trainer import checkpoint_disk_plan

    return checkpoint_disk_plan(cfg, torch.device("cuda")).total  # the run is planned for a GPU (bf16 step_N)


def chinchilla(budget: float, tokens_per_param: float) -> tuple[float, float]:
    """(N, D) with C = 6 N D and D = r N: N = sqrt(C / 6r)."""
    n = math.sqrt(budget / (6 * tokens_per_param))
    return n, tokens_per_param * n


def _si(x: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.3g}"


def format_plan(p: Plan) -> str:
    from rain.checkpoint import format_size

    m = p.model
    lines = [(f"rain plan: {p.hours:g} h on one {p.gpu.label} ({p.gpu.memory_gb:g} GB, {p.gpu.bf16_tflops:g} TFLOP/s "
             f"bf16 dense, {p.gpu.power_w:g} W; {p.gpu.source})"),
             (f"  compute      {p.gpu.bf16_tflops:g}e12 FLOP/s x {p.mfu:.0%} MFU x {p.hours * 3600:,.0f} s = "
             f"{p.budget:.3g} FLOPs (MFU: {p.mfu_source})"),
             "  optimal size C = 6 N D with D = r N, so N = sqrt(C / 6r):"]
    for r in (CHINCHILLA_TOKENS_PER_PARAM, *OVERTRAINED):
        n, d = chinchilla(p.budget, r)
        why = "Chinchilla compute-optimal" if r == CHINCHILLA_TOKENS_PER_PARAM else "over-trained: smaller, cheaper to serve"
        lines.append(f"    r = {r:>3} tokens/param: N = {_si(n):>6} parameters, D = {_si(d):>6} tokens ({why})")
    lines += [(f"  model        {m.n_layer} layers x {m.d_model}, {m.n_head} heads ({m.n_kv_head} KV) of {m.dim_head}, "
              f"d_ff {m.d_ff}, vocab {m.vocab_size:,}, context {m.context:,}: {p.parameters:,} parameters "
              f"({p.tokens / p.parameters:.0f} tokens/param)"),
              f"  FLOPs/token  {p.flops_per_token:,.0f} (6 x matmul params + 12 x layers x d_model x context)",
              (f"  tokens       {p.tokens:,} = {p.steps:,} steps x {p.tokens_per_step:,} tokens "
              f"({p.config.train.batch_size} x {m.context:,})")]
    if p.micro_batch:
        lines.append(f"  micro-batch  {p.micro_batch} (estimated peak {p.memory_bytes / 1e9:.1f} GB of "
                     f"{MEMORY_BUDGET:.0%} x {p.gpu.memory_gb:g} GB; {p.config.train.batch_size // p.micro_batch} "
                     "accumulation step(s))")
    else:
        lines.append(f"  micro-batch  not even 1 fits without checkpointing ({p.memory_bytes / 1e9:.1f} GB estimated): "
                     f"set train.checkpoint_layers = {m.n_layer}")
    lines += [f"  checkpoints  {format_size(p.checkpoint_bytes)} on disk when the run ends",
              (f"  ETA          {p.eta_hours:.1f} h at {p.mfu:.0%} MFU "
              f"({p.gpu.peak_flops * p.mfu / p.flops_per_token:,.0f} tokens/s)")]
    if p.eta_hours > p.hours * 1.01:  # --tokens asked for more than the budget buys even the smallest model
        lines.append(f"  note         {p.tokens:,} tokens take {p.eta_hours / p.hours:.1f}x the {p.hours:g} h given")
    return "\n".join(lines)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(f"no TOML for {v!r}")


def write_config(p: Plan, path: str | Path) -> Path:
    """The planned run as a preset: every section of the config, so `rain train --config PATH` runs exactly it."""
    lines = [(f"# rain plan: {p.hours:g} h on one {p.gpu.label} at {p.mfu:.0%} MFU; {p.parameters:,} parameters, "
             f"{p.tokens:,} tokens")]
    for section, values in p.config.to_dict().items():
        if not isinstance(values, dict):
            continue
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path
